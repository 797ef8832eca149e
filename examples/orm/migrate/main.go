// Command migrate runs golang-migrate migrations up and down on Azure
// Database for PostgreSQL with Microsoft Entra ID tokens, through a
// database/sql driver name that entraauth registers.
//
// The lines to add: register a driver name on the credential once, at
// start-up, open the database by that name and a connection string, and
// hand the handle to golang-migrate's pgx v5 driver with WithInstance
// (golang-migrate's own URLs, pgx5://…, would open it through pgx's
// driver, which has no token):
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	err = entraauth.RegisterDriver("azure-postgres", cred)
//	db, err := sql.Open("azure-postgres", "host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
//	driver, err := pgx.WithInstance(db, &pgx.Config{}) // github.com/golang-migrate/migrate/v4/database/pgx/v5
//	m, err := migrate.NewWithInstance("iofs", source, "pgx5", driver)
//
// Every handle opened through the driver, whatever its connection string,
// shares one cached token, refreshed before it expires.
//
// Run it from examples/orm:
//
//	go run ./migrate                                       # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./migrate  # against Azure
//
// It applies the migrations in migrations/, prints the greeting they
// insert and the current user, and rolls them all back. See package target
// for the variables that pick Azure.
package main

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"

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
func upAndDown(ctx context.Context, out io.Writer, driverName, connString string) (err error) {
	m, db, err := open(driverName, connString)
	if err != nil {
		return err
	}
	defer func() {
		srcErr, dbErr := m.Close() // closes db
		err = errors.Join(err, srcErr, dbErr)
	}()
	// golang-migrate takes no context: stop between migrations when ctx ends.
	stop := context.AfterFunc(ctx, func() { m.GracefulStop <- true })
	defer stop()

	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return err
	}
	version, _, err := m.Version()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "up: version %d\n", version)

	var user, greeting string
	err = db.QueryRowContext(ctx, "select current_user, message from migrate_greetings").Scan(&user, &greeting)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "greeting:", greeting)
	fmt.Fprintln(out, "current_user:", user)

	if err := m.Down(); err != nil {
		return err
	}
	if _, _, err := m.Version(); !errors.Is(err, migrate.ErrNilVersion) {
		return fmt.Errorf("after down: version error %v, want none applied", err)
	}
	fmt.Fprintln(out, "down: no migration applied")
	return nil
}

// open returns a golang-migrate instance on the embedded migrations and the
// database opened by driverName and connString, which the instance closes.
func open(driverName, connString string) (*migrate.Migrate, *sql.DB, error) {
	source, err := iofs.New(embedded, "migrations")
	if err != nil {
		return nil, nil, err
	}
	db, err := sql.Open(driverName, connString)
	if err != nil {
		return nil, nil, errors.Join(err, source.Close())
	}
	driver, err := pgx.WithInstance(db, &pgx.Config{})
	if err != nil {
		return nil, nil, errors.Join(err, source.Close(), db.Close())
	}
	m, err := migrate.NewWithInstance("iofs", source, "pgx5", driver)
	if err != nil {
		return nil, nil, errors.Join(err, source.Close(), driver.Close())
	}
	return m, db, nil
}
