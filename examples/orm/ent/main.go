// Command ent connects an ent client to Azure Database for PostgreSQL with
// Microsoft Entra ID tokens and prints the current user.
//
// The lines to add: ent.Open takes a driver name and a DSN, so open the
// database/sql handle on entraauth's connector yourself, wrap it in ent's
// SQL driver, and hand that to the generated client.
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	sqlDB := sql.OpenDB(entraauth.Connector("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
//	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.Postgres, sqlDB)))
//
// Package ent here is the client ent generates from ./ent/schema (one
// entity, Greeting); yours is generated from your schema, and the lines
// are the same. The example runs no migration and touches no table: it asks
// for current_user through the client's QueryContext (the sql/execquery
// feature), so it changes nothing in the database it is pointed at.
//
// Run it from examples/orm:
//
//	go run ./ent                                        # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./ent   # against Azure
//
// See package target for the variables that pick Azure.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/ent/ent"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

func main() { target.Main(run) }

// run connects through an ent client and prints "current_user: <name>" to
// out.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out) // Azure if configured, else the emulator
	if err != nil {
		return err
	}
	defer tg.Close()

	// The lines to add.
	sqlDB := sql.OpenDB(entraauth.Connector(tg.ConnString, tg.Credential))
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.Postgres, sqlDB)))
	defer client.Close()

	rows, err := client.QueryContext(ctx, "select current_user")
	if err != nil {
		return err
	}
	defer rows.Close()
	var user string
	for rows.Next() {
		if err := rows.Scan(&user); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	fmt.Fprintln(out, "current_user:", user)
	return nil
}
