package entratest_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgentra/entraauth/entratest"
)

// A local stand-in for Azure Database for PostgreSQL: it takes Entra
// tokens as passwords, checks them, and relays the session to a throwaway
// PostgreSQL (it needs the PostgreSQL server binaries installed).
func ExampleNewServer() {
	ctx := context.Background()
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss})
	if err != nil {
		log.Fatal(err) // errors.Is(err, entratest.ErrNoPostgreSQL) without binaries
	}
	defer srv.Close()

	// Like pgaadauth_create_principal on Azure: a role for a principal.
	alice := entratest.User("alice@contoso.com")
	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		log.Fatal(err)
	}

	// Code under test would get its token from a credential; here, mint one.
	tok, err := iss.Mint(alice, entratest.ScopePublic, time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(srv.ConnString("user=" + alice.UPN))
	if err != nil {
		log.Fatal(err)
	}
	cfg.Password = tok.Token
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)

	var user string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil {
		log.Fatal(err)
	}
	st := srv.Stats()
	fmt.Println(user, st.Accepted, st.DistinctTokens)
}
