package entraauth_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
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

// What the hook does to each new connection's configuration, shown
// offline with the entratest kit's issuer and credential in place of
// Entra ID: it sets the user from the token (here a managed identity's
// name, which its database token lacks, so entraauth reads it from one
// Azure Resource Manager token) and the token as the password, and it
// refuses a connection that would send the token without TLS.
func ExampleHook_offline() {
	ctx := context.Background()
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.ManagedIdentity("orders-api"))
	hook := entraauth.Hook(cred)

	os.Unsetenv("PGUSER") // a user named by PGUSER would be kept
	cfg, err := pgx.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	if err := hook(ctx, cfg); err != nil {
		log.Fatal(err)
	}
	fmt.Println("user:", cfg.User)
	_, err = iss.Verify(cfg.Password, entratest.ScopePublic)
	fmt.Println("password is a database token:", err == nil)
	fmt.Println("credential asked for:", cred.Scopes())

	cfg, err = pgx.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	err = hook(ctx, cfg)
	fmt.Println("sslmode=disable refused:", errors.Is(err, entraauth.ErrInsecureTransport), cfg.Password == "")
	// Output:
	// user: orders-api
	// password is a database token: true
	// credential asked for: [https://ossrdbms-aad.database.windows.net/.default https://management.azure.com/.default]
	// sslmode=disable refused: true true
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

// Connector's errors come from db.PingContext (or the first query), before
// any token is sent: here a connection string that would carry the token
// without TLS, checked offline with the entratest kit's credential.
func ExampleConnector_insecure() {
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))
	db := sql.OpenDB(entraauth.Connector("host=mysrv.postgres.database.azure.com dbname=app sslmode=disable", cred))
	defer db.Close()

	err = db.PingContext(context.Background())
	fmt.Println(errors.Is(err, entraauth.ErrInsecureTransport))
	fmt.Println("tokens fetched:", cred.Calls())
	// Output:
	// true
	// tokens fetched: 0
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

// One TokenSource, one token: every caller shares the cached token until
// it is due for refresh. Offline, with the entratest kit's issuer and
// credential in place of Entra ID.
func ExampleTokenSource_Token() {
	ctx := context.Background()
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))
	ts := entraauth.NewTokenSource(cred)

	first, err := ts.Token(ctx)
	if err != nil {
		log.Fatal(err)
	}
	second, err := ts.Token(ctx)
	if err != nil {
		log.Fatal(err)
	}
	user, err := entraauth.UsernameFromToken(first.Value)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same token:", first.Value == second.Value)
	fmt.Println("credential calls:", cred.Calls(), "fetches:", ts.Stats().Fetches)
	fmt.Println("user:", user)
	fmt.Println("fmt shows the token:", strings.Contains(fmt.Sprintf("%v %+v %#v", first, first, first), first.Value))
	// Output:
	// same token: true
	// credential calls: 1 fetches: 1
	// user: alice@contoso.com
	// fmt shows the token: false
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

// Explain turns a refused login into an error that says which user was
// sent, where the name came from, who the token was for, and what to do.
func ExampleExplain() {
	ctx := context.Background()
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig("host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	cfg.BeforeConnect = entraauth.Hook(cred)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		// For example: ... password authentication failed for user "bob@contoso.com" (SQLSTATE 28P01)
		// entraauth: sent user "bob@contoso.com" (from PGUSER) with a token for user alice@contoso.com (...):
		// The user name came from PGUSER, but the token is for alice@contoso.com: ... Fix: Remove the user name from PGUSER, ...
		err = entraauth.Explain(err)
		var le *entraauth.LoginError
		if errors.As(err, &le) && le.CreateRoleSQL != "" {
			log.Printf("an Entra administrator of the server can create the role with: %s", le.CreateRoleSQL)
		}
		log.Fatal(err)
	}
}
