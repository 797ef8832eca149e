package entraauth_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgentra/entraauth"
)

// A pgx pool whose every new connection authenticates with a cached,
// refreshed-ahead Entra token. No user name and no password: the user name
// comes from the token.
func ExampleHook() {
	ctx := context.Background()
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	cfg.BeforeConnect = entraauth.Hook(cred, entraauth.WithRequireVerifiedTLS())
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
}

// database/sql, and so GORM, sqlx, bun and ent, through a driver.Connector.
func ExampleConnector() {
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ID: azidentity.ClientID("00000000-0000-0000-0000-000000000000"),
	})
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(entraauth.Connector("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
	defer db.Close()
	// A bad connection string or a credential failure surfaces here.
	if err := db.PingContext(context.Background()); err != nil {
		log.Print(err)
	}
}

// One token cache shared by a pgx pool, a database/sql pool and a single
// pgx connection.
func ExampleNewTokenSource() {
	ctx := context.Background()
	cred, err := azidentity.NewAzureCLICredential(nil)
	if err != nil {
		log.Fatal(err)
	}
	ts := entraauth.NewTokenSource(cred)

	cfg, err := pgxpool.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	cfg.BeforeConnect = ts.BeforeConnect

	db := sql.OpenDB(ts.Connector("host=mysrv.postgres.database.azure.com dbname=reports sslmode=verify-full"))
	defer db.Close()

	connCfg, err := pgx.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	if err := ts.BeforeConnect(ctx, connCfg); err != nil {
		log.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, connCfg)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)

	s := ts.Stats()
	fmt.Println(s.Fetches, s.ExpiresOn)
}

// The user name a token maps to: upn, preferred_username or unique_name.
func ExampleUsernameFromToken() {
	// A database token's payload: {"aud":"https://ossrdbms-aad.database.windows.net","upn":"alice@contoso.com",...}
	const token = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." +
		"eyJhdWQiOiJodHRwczovL29zc3JkYm1zLWFhZC5kYXRhYmFzZS53aW5kb3dzLm5ldCIsInVwbiI6ImFsaWNlQGNvbnRvc28uY29tIiwiZXhwIjoxNzk1MzQ4ODAwfQ." +
		"c2lnbmF0dXJl"
	user, err := entraauth.UsernameFromToken(token)
	fmt.Println(user, err)

	_, err = entraauth.UsernameFromToken("not a token")
	fmt.Println(errors.Is(err, entraauth.ErrMalformedToken))
	// Output:
	// alice@contoso.com <nil>
	// true
}

// Which scope a server's tokens need, by cloud.
func ExampleScopeForHost() {
	fmt.Println(entraauth.ScopeForHost("mysrv.postgres.database.azure.com"))
	fmt.Println(entraauth.ScopeForHost("mysrv.postgres.database.chinacloudapi.cn"))
	// Output:
	// https://ossrdbms-aad.database.windows.net/.default
	// https://ossrdbms-aad.database.chinacloudapi.cn/.default
}
