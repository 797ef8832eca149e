package entraauth_test

import (
	"context"
	"database/sql"
	"errors"
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

// With a user-assigned managed identity, Service Connector adds its client
// ID; LoadEnv picks azidentity.ManagedIdentityCredential for it. Nothing
// is fetched until a connection needs a token, so this runs offline.
func ExampleLoadEnv_managedIdentity() {
	// Service Connector sets these for a Go app on App Service; the
	// example sets them itself.
	os.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING",
		"host=mysrv.postgres.database.azure.com port=5432 dbname=app sslmode=require user=orders-api")
	os.Setenv("AZURE_POSTGRESQL_CLIENTID", "11111111-2222-3333-4444-555555555555")
	defer os.Unsetenv("AZURE_POSTGRESQL_CONNECTIONSTRING")
	defer os.Unsetenv("AZURE_POSTGRESQL_CLIENTID")

	ec, err := entraauth.LoadEnv("")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ec.Host, ec.Database, ec.User)
	fmt.Println(ec.CredentialKind)
	// ec.ConnString and ec.Credential are what Hook, Connector,
	// NewPoolFromEnv and OpenDBFromEnv use:
	db := sql.OpenDB(entraauth.Connector(ec.ConnString, ec.Credential))
	defer db.Close()
	// Output:
	// mysrv.postgres.database.azure.com app orders-api
	// managed-identity (client id 11111111-2222-3333-4444-555555555555)
}

// A JDBC URL, as Service Connector writes it for Java, works too. pgjdbc's
// ssl=true verifies the server, so it means sslmode=verify-full here; the
// properties only pgjdbc knows (here the Azure authentication plugin) are
// dropped, and logged at Debug, rather than sent to the server as settings
// it would refuse.
func ExampleLoadEnv_jdbc() {
	os.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING",
		"jdbc:postgresql://mysrv.postgres.database.azure.com:5432/app?ssl=true&user=orders-api"+
			"&authenticationPluginClassName=com.azure.identity.extensions.jdbc.postgresql.AzurePostgresqlAuthenticationPlugin")
	defer os.Unsetenv("AZURE_POSTGRESQL_CONNECTIONSTRING")

	ec, err := entraauth.LoadEnv("")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ec.ConnString)
	// Output:
	// host=mysrv.postgres.database.azure.com port=5432 dbname=app user=orders-api sslmode=verify-full
}

// A missing or contradictory variable is an *EnvError naming it, from
// LoadEnv, NewPoolFromEnv and OpenDBFromEnv alike.
func ExampleOpenDBFromEnv_missing() {
	os.Unsetenv("AZURE_POSTGRESQL_CONNECTIONSTRING")
	os.Unsetenv("AZURE_POSTGRESQL_HOST")

	_, err := entraauth.OpenDBFromEnv("")
	if errors.Is(err, entraauth.ErrEnv) {
		var envErr *entraauth.EnvError
		errors.As(err, &envErr)
		fmt.Println("variable at fault:", envErr.Var)
	}
	// Output:
	// variable at fault: AZURE_POSTGRESQL_CONNECTIONSTRING
}
