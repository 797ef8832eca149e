package entraauth_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgentra/entraauth"
)

// On Azure App Service, Container Apps or Functions with a Service
// Connector connection to Azure Database for PostgreSQL, the environment
// holds AZURE_POSTGRESQL_CONNECTIONSTRING (and, for a user-assigned
// managed identity, AZURE_POSTGRESQL_CLIENTID): one call gives a pool.
func ExampleNewPoolFromEnv() {
	ctx := context.Background()
	pool, err := entraauth.NewPoolFromEnv(ctx, "")
	if err != nil {
		log.Fatal(err) // names the missing or contradictory variable
	}
	defer pool.Close()

	var user string
	if err := pool.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		log.Fatal(err)
	}
	fmt.Println("connected as", user)
}

// The same for database/sql, and so for GORM, sqlx, bun and ent.
func ExampleOpenDBFromEnv() {
	db, err := entraauth.OpenDBFromEnv("", entraauth.WithRequireVerifiedTLS())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := db.PingContext(context.Background()); err != nil {
		log.Fatal(err)
	}
}

// LoadEnv gives the configuration to build a pool of one's own. Printed, it
// never shows the password.
func ExampleLoadEnv() {
	// Service Connector sets this for Neon (secret mode); the example sets
	// it itself.
	os.Setenv("NEON_POSTGRESQL_CONNECTIONSTRING",
		"postgresql://neondb_owner:npg_s3cret@ep-still-mud-a12aa123.eastus2.azure.neon.tech/neondb?sslmode=require")
	defer os.Unsetenv("NEON_POSTGRESQL_CONNECTIONSTRING")

	ec, err := entraauth.LoadEnv("NEON_POSTGRESQL")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ec)

	cfg, err := pgxpool.ParseConfig(ec.ConnString)
	if err != nil {
		log.Fatal(err)
	}
	if !ec.PasswordAuth {
		cfg.BeforeConnect = entraauth.Hook(ec.Credential)
	}
	cfg.MaxConns = 20
	// pool, err := pgxpool.NewWithConfig(ctx, cfg)

	// Output:
	// entraauth.EnvConfig{Prefix:NEON_POSTGRESQL ConnString:"host=ep-still-mud-a12aa123.eastus2.azure.neon.tech dbname=neondb user=neondb_owner password=[REDACTED] sslmode=require" Credential:password}
}
