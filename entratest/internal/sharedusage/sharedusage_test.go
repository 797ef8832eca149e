// Package sharedusage_test is a user's test package as the entratest
// package doc shows it: one shared emulator for the package's tests, closed
// by TestMain. doc_test.go checks that the doc's snippet is this code.
package sharedusage_test

import (
	"context"
	"database/sql"
	"os"
	"testing"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
)

var emulator entratest.Shared

func TestMain(m *testing.M) { os.Exit(entratest.RunTests(m, &emulator)) }

func TestOrders(t *testing.T) {
	pgtest.SkipWithoutBinaries(t) // test-only: skips without PostgreSQL (fails under ENTRAAUTH_REQUIRE_PG=1)
	ctx := context.Background()
	srv, iss := emulator.Get(t), emulator.Issuer(t)
	alice := entratest.User("alice@contoso.com")
	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(entraauth.Connector(srv.ConnString(), entratest.NewCredential(iss, alice)))
	t.Cleanup(func() { db.Close() })
	// … the code under test, with db; for example:
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestInvoices runs after TestOrders on the same server: alice's role is
// still there, and a second AddRole for her is fine.
func TestInvoices(t *testing.T) {
	pgtest.SkipWithoutBinaries(t) // test-only: skips without PostgreSQL (fails under ENTRAAUTH_REQUIRE_PG=1)
	ctx := context.Background()
	srv, iss := emulator.Get(t), emulator.Issuer(t)
	before := srv.Stats().Accepted
	alice := entratest.User("alice@contoso.com")
	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(entraauth.Connector(srv.ConnString(), entratest.NewCredential(iss, alice)))
	t.Cleanup(func() { db.Close() })
	var user string
	if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}
	if user != alice.UPN {
		t.Errorf("current_user = %q, want %q", user, alice.UPN)
	}
	if got := srv.Stats().Accepted - before; got != 1 {
		t.Errorf("logins during this test = %d, want 1", got)
	}
}
