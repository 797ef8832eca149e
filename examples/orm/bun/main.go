// Command bun connects bun to Azure Database for PostgreSQL with Microsoft
// Entra ID tokens and prints the current user.
//
// The lines to add: where bun's documentation opens a database/sql handle
// with pgdriver.NewConnector, open it on entraauth's connector instead
// (it uses pgx underneath); bun's PostgreSQL dialect works on it as is.
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	sqlDB := sql.OpenDB(entraauth.Connector("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
//	db := bun.NewDB(sqlDB, pgdialect.New())
//
// Run it from examples/orm:
//
//	go run ./bun                                        # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./bun   # against Azure
//
// See package target for the variables that pick Azure.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

func main() { target.Main(run) }

// run connects through bun and prints "current_user: <name>" to out.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out) // Azure if configured, else the emulator
	if err != nil {
		return err
	}
	defer tg.Close()

	// The lines to add.
	sqlDB := sql.OpenDB(entraauth.Connector(tg.ConnString, tg.Credential))
	db := bun.NewDB(sqlDB, pgdialect.New())
	defer db.Close()

	var user string
	if err := db.NewSelect().ColumnExpr("current_user").Scan(ctx, &user); err != nil {
		return err
	}
	fmt.Fprintln(out, "current_user:", user)
	return nil
}
