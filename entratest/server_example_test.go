package entratest_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgentra/entraauth"
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
	// Output: alice@contoso.com 1 1
}

// One server for a package's tests: declare a Shared at package level,
// close it in TestMain, and Get it in each test:
//
//	var emulator entratest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(entratest.RunTests(m, &emulator)) }
//
//	func TestOrders(t *testing.T) {
//		srv, iss := emulator.Get(t), emulator.Issuer(t)
//		…
//	}
//
// Here, with no testing.TB, Start does what Get does, and the issuer is
// one of our own.
func ExampleShared() {
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	emulator := &entratest.Shared{Config: entratest.ServerConfig{Verifier: iss}}
	defer emulator.Close()
	ctx := context.Background()

	var first *entratest.Server
	for _, name := range []string{"alice@contoso.com", "bob@contoso.com"} {
		srv, err := emulator.Start() // the first call starts the server
		if err != nil {
			log.Fatal(err)
		}
		if first == nil {
			first = srv
		}
		p := entratest.User(name)
		if err := srv.AddRole(ctx, p.UPN, p.ObjectID); err != nil {
			log.Fatal(err)
		}
		db := sql.OpenDB(entraauth.Connector(srv.ConnString(), entratest.NewCredential(iss, p)))
		var user string
		err = db.QueryRowContext(ctx, "SELECT current_user").Scan(&user)
		db.Close()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(user, "on the first server:", srv == first)
	}
	fmt.Println("logins:", first.Stats().Accepted)
	// Output:
	// alice@contoso.com on the first server: true
	// bob@contoso.com on the first server: true
	// logins: 2
}
