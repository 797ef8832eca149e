// Command gorm connects GORM to Azure Database for PostgreSQL with
// Microsoft Entra ID tokens and prints the current user.
//
// The lines to add: a database/sql handle on entraauth's connector, and
// GORM's postgres driver on that handle instead of a DSN.
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	sqlDB := sql.OpenDB(entraauth.Connector("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
//	db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{})
//
// Run it from examples/orm:
//
//	go run ./gorm                                       # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./gorm  # against Azure
//
// See package target for the variables that pick Azure.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

func main() { target.Main(run) }

// run connects through GORM and prints "current_user: <name>" to out.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out) // Azure if configured, else the emulator
	if err != nil {
		return err
	}
	defer tg.Close()

	// The lines to add.
	sqlDB := sql.OpenDB(entraauth.Connector(tg.ConnString, tg.Credential))
	defer sqlDB.Close()
	db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{})
	if err != nil {
		return err
	}

	var user string
	if err := db.WithContext(ctx).Raw("select current_user").Scan(&user).Error; err != nil {
		return err
	}
	fmt.Fprintln(out, "current_user:", user)
	return nil
}
