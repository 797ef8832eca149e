// Command sqlx connects sqlx to Azure Database for PostgreSQL with
// Microsoft Entra ID tokens and prints the current user.
//
// The lines to add: a database/sql handle on entraauth's connector,
// wrapped by sqlx.NewDb instead of opened by sqlx.Connect. The driver name
// "pgx" tells sqlx to bind $1, $2, ….
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	sqlDB := sql.OpenDB(entraauth.Connector("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
//	db := sqlx.NewDb(sqlDB, "pgx")
//
// Run it from examples/orm:
//
//	go run ./sqlx                                       # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./sqlx  # against Azure
//
// See package target for the variables that pick Azure.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"

	"github.com/jmoiron/sqlx"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

func main() { target.Main(run) }

// run connects through sqlx and prints "current_user: <name>" to out.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out) // Azure if configured, else the emulator
	if err != nil {
		return err
	}
	defer tg.Close()

	// The lines to add.
	sqlDB := sql.OpenDB(entraauth.Connector(tg.ConnString, tg.Credential))
	db := sqlx.NewDb(sqlDB, "pgx")
	defer db.Close()

	var user string
	if err := db.GetContext(ctx, &user, "select current_user"); err != nil {
		return err
	}
	fmt.Fprintln(out, "current_user:", user)
	return nil
}
