package entratest

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pgentra/entraauth/internal/pgtest"
)

// recordingTB is a testing.TB whose Fatalf and Skipf record instead of
// ending the test, to see what Shared.Get does on failure.
type recordingTB struct {
	testing.TB
	fatal, skip string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fatal = format
}
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skip = format
}

// TestSharedOneServer: concurrent first uses start one server; Get,
// Issuer and Start agree; its issuer's tokens log in; Close stops it and
// later uses fail.
func TestSharedOneServer(t *testing.T) {
	pgtest.SkipWithoutBinaries(t)
	var sh Shared
	t.Cleanup(func() { sh.Close() })

	const n = 8
	servers := make([]*Server, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], _ = sh.Start()
		}()
	}
	wg.Wait()
	srv := sh.Get(t)
	for i, s := range servers {
		if s != srv {
			t.Fatalf("Start %d returned %p, Get %p: want one server", i, s, srv)
		}
	}
	iss := sh.Issuer(t)
	if iss == nil {
		t.Fatal("Issuer returned nil")
	}
	k := &srvKit{t: t, srv: srv, iss: iss}
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	k.addRole(alice.UPN, alice) // a second test registering her again
	conn := k.mustConnect(alice.UPN, k.mint(alice, time.Hour))
	if got := queryString(t, conn, "SELECT current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	conn.Close(srvContext(t))

	if err := sh.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sh.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if c, err := net.Dial("tcp", srv.Addr()); err == nil {
		c.Close()
		t.Error("the server still accepts connections after Shared.Close")
	}
	if _, err := sh.Start(); !errors.Is(err, errSharedClosed) {
		t.Errorf("Start after Close: %v, want errSharedClosed", err)
	}
	var rec recordingTB
	if sh.Get(&rec) != nil || rec.fatal == "" {
		t.Errorf("Get after Close: want a fatal error, got fatal %q", rec.fatal)
	}
}

// TestSharedWithoutPostgreSQL: with no server binaries, Get fails the test
// unless SkipWithoutPostgreSQL, and then it skips it.
func TestSharedWithoutPostgreSQL(t *testing.T) {
	t.Setenv("PG_BIN", t.TempDir()) // a PG_BIN without binaries: ErrNoBinaries
	t.Setenv("PATH", t.TempDir())   // and no pg_config

	var failing Shared
	var rec recordingTB
	if failing.Get(&rec) != nil || rec.fatal == "" || rec.skip != "" {
		t.Errorf("Get without PostgreSQL: fatal %q, skip %q; want a fatal error", rec.fatal, rec.skip)
	}
	if _, err := failing.Start(); !errors.Is(err, ErrNoPostgreSQL) {
		t.Errorf("Start: %v, want ErrNoPostgreSQL", err)
	}

	skipping := Shared{SkipWithoutPostgreSQL: true}
	rec = recordingTB{}
	if skipping.Get(&rec) != nil || rec.skip == "" || rec.fatal != "" {
		t.Errorf("Get with SkipWithoutPostgreSQL: fatal %q, skip %q; want a skip", rec.fatal, rec.skip)
	}
	if err := skipping.Close(); err != nil {
		t.Errorf("Close of a Shared that never started: %v", err)
	}
}

// TestSharedIssuerOfOtherVerifier: Issuer fails the test when the server
// checks tokens with a verifier that is not an *Issuer.
func TestSharedIssuerOfOtherVerifier(t *testing.T) {
	pgtest.SkipWithoutBinaries(t)
	iss, err := NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	sh := Shared{Config: ServerConfig{Verifier: otherVerifier{iss}}}
	t.Cleanup(func() { sh.Close() })
	var rec recordingTB
	if sh.Issuer(&rec) != nil || rec.fatal == "" {
		t.Errorf("Issuer: fatal %q; want a fatal error", rec.fatal)
	}
}

// otherVerifier is a TokenVerifier that is not an *Issuer.
type otherVerifier struct{ *Issuer }
