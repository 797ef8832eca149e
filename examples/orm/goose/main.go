// Command goose runs goose migrations up and down on Azure Database for
// PostgreSQL with Microsoft Entra ID tokens, through a database/sql driver
// name that entraauth registers.
//
// The lines to add: register a driver name on the credential once, at
// start-up, then open the database by that name and a connection string,
// as goose and other migration tools expect, and hand the handle to goose.
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	err = entraauth.RegisterDriver("azure-postgres", cred)
//	db, err := sql.Open("azure-postgres", "host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
//	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations)
//
// Every handle opened through the driver, whatever its connection string,
// shares one cached token, refreshed before it expires.
//
// Run it from examples/orm:
//
//	go run ./goose                                       # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./goose  # against Azure
//
// It applies the migrations in migrations/, prints the greeting they
// insert and the current user, and rolls them all back. See package target
// for the variables that pick Azure.
package main

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"sync/atomic"

	"github.com/pressly/goose/v3"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

//go:embed migrations/*.sql
var embedded embed.FS

func main() { target.Main(run) }

// run migrates the target up and down, printing "current_user: <name>" to
// out on the way.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out) // Azure if configured, else the emulator
	if err != nil {
		return err
	}
	defer tg.Close()

	// The lines to add: once per program. (A driver name is registered for
	// the life of the process, and the tests run this function against
	// several targets, so each run takes a name of its own.)
	driverName := fmt.Sprintf("azure-postgres-%d", runs.Add(1))
	if err := entraauth.RegisterDriver(driverName, tg.Credential); err != nil {
		return err
	}
	return upAndDown(ctx, out, driverName, tg.ConnString)
}

// runs counts the calls of run.
var runs atomic.Int64

// upAndDown opens the database as a tool taking a driver name and a
// connection string does, applies every migration, prints the greeting and
// the current user, and rolls every migration back.
func upAndDown(ctx context.Context, out io.Writer, driverName, connString string) error {
	db, err := sql.Open(driverName, connString)
	if err != nil {
		return err
	}
	migrations, err := fs.Sub(embedded, "migrations")
	if err != nil {
		_ = db.Close()
		return err
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations)
	if err != nil {
		_ = db.Close()
		return err
	}
	defer provider.Close() // closes db

	applied, err := provider.Up(ctx)
	if err != nil {
		return err
	}
	version, err := provider.GetDBVersion(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "up: %d migrations applied, version %d\n", len(applied), version)

	var user, greeting string
	err = db.QueryRowContext(ctx, "select current_user, message from goose_greetings").Scan(&user, &greeting)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "greeting:", greeting)
	fmt.Fprintln(out, "current_user:", user)

	rolledBack, err := provider.DownTo(ctx, 0)
	if err != nil {
		return err
	}
	if version, err = provider.GetDBVersion(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "down: %d migrations rolled back, version %d\n", len(rolledBack), version)
	return nil
}
