insert into migrate_greetings (message) values ('hello from golang-migrate');
