// One node-postgres session for clients_test.go: argv[2] is the connection
// as JSON (host, port, user, password, database, cafile, application_name,
// options). Each line of stdin is run as a query; a result prints
// "ROW <first column>", an error prints "ERROR <code> <message>" and exits
// 3, and an error on the idle client prints "ASYNC <code> <message>".
'use strict';
const fs = require('fs');
const readline = require('readline');
const { Client } = require('pg');

const oneLine = (s) => String(s).split(/\s+/).join(' ').trim();

async function main() {
  const c = JSON.parse(process.argv[2]);
  const client = new Client({
    host: c.host,
    port: c.port,
    user: c.user,
    password: c.password,
    database: c.database,
    application_name: c.application_name,
    options: c.options,
    ssl: c.cafile ? { ca: fs.readFileSync(c.cafile), rejectUnauthorized: true } : false,
  });
  client.on('error', (e) => console.log('ASYNC', e.code || '-', oneLine(e.message)));
  await client.connect();
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    try {
      const r = await client.query(line);
      console.log('ROW', Object.values(r.rows[0])[0]);
    } catch (e) {
      console.log('ERROR', e.code || '-', oneLine(e.message));
      process.exit(3);
    }
  }
  await client.end();
}

main().catch((e) => {
  console.log('ERROR', e.code || '-', oneLine(e.message));
  process.exit(3);
});
