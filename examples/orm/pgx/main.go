// Command pgx opens a single pgx connection (no pool) to Azure Database
// for PostgreSQL with a Microsoft Entra ID token and prints the current
// user.
//
// The lines to add: pgx.Connect takes no hook, so parse the configuration,
// let entraauth fill in the user and the token, and connect with it. (For
// a pool, set pgxpool.Config.BeforeConnect to entraauth.Hook(cred)
// instead: it then runs for every new connection.)
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	cfg, err := pgx.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
//	err = entraauth.Hook(cred)(ctx, cfg)
//	conn, err := pgx.ConnectConfig(ctx, cfg)
//
// An open connection outlives its token, but each new connection needs a
// current one: open later connections through one entraauth.TokenSource
// and its BeforeConnect, which keeps the token cached and refreshed, or
// use a pool.
//
// Run it from examples/orm:
//
//	go run ./pgx                                        # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./pgx   # against Azure
//
// See package target for the variables that pick Azure.
package main

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

func main() { target.Main(run) }

// run connects with pgx and prints "current_user: <name>" to out.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out) // Azure if configured, else the emulator
	if err != nil {
		return err
	}
	defer tg.Close()

	// The lines to add.
	cfg, err := pgx.ParseConfig(tg.ConnString)
	if err != nil {
		return err
	}
	if err := entraauth.Hook(tg.Credential)(ctx, cfg); err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var user string
	if err := conn.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		return err
	}
	fmt.Fprintln(out, "current_user:", user)
	return nil
}
