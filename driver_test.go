package entraauth_test

// Tests of RegisterDriver: registration, and sql.Open through the
// registered driver against the entratest server in front of a real
// PostgreSQL (skipped without PostgreSQL server binaries, failed under
// ENTRAAUTH_REQUIRE_PG=1).

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// driverSeq makes driver names unique within the process: database/sql's
// registry outlives a test, and -count runs each test again.
var driverSeq atomic.Int64

// registerTestDriver registers a driver for cred under a fresh name and
// returns the name.
func registerTestDriver(t *testing.T, cred *entratest.Credential, opts ...entraauth.Option) string {
	t.Helper()
	name := fmt.Sprintf("entraauth-test-%s-%d", t.Name(), driverSeq.Add(1))
	if err := entraauth.RegisterDriver(name, cred, opts...); err != nil {
		t.Fatalf("RegisterDriver(%q): %v", name, err)
	}
	return name
}

// openDB is sql.Open, closed with the test.
func openDB(t *testing.T, driverName, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		t.Fatalf("sql.Open(%q): %v", driverName, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	return db
}

func currentUser(t *testing.T, db *sql.DB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var user string
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}
	return user
}

// TestRegisterDriverTakenName: a name registered before, by RegisterDriver
// or by another package (pgx's stdlib registers "pgx"), gets
// ErrDriverNameTaken rather than sql.Register's panic, and the first
// registration keeps working.
func TestRegisterDriverTakenName(t *testing.T) {
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("taken@contoso.com"))
	name := registerTestDriver(t, cred)
	for _, taken := range []string{name, "pgx", "pgx/v5"} {
		err := entraauth.RegisterDriver(taken, cred)
		if !errors.Is(err, entraauth.ErrDriverNameTaken) {
			t.Errorf("RegisterDriver(%q) again: %v, want ErrDriverNameTaken", taken, err)
		}
	}
	// The first registration is the entraauth driver still.
	db := openDB(t, name, "host=127.0.0.1 port=1 sslmode=disable")
	err = db.Ping()
	if !errors.Is(err, entraauth.ErrInsecureTransport) {
		t.Errorf("Ping through %q with sslmode=disable: %v, want ErrInsecureTransport (the entraauth driver)", name, err)
	}
}

// TestRegisterDriverConcurrentSameName: of many goroutines registering one
// name at once, exactly one succeeds and none panics.
func TestRegisterDriverConcurrentSameName(t *testing.T) {
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("race@contoso.com"))
	for trial := range 200 {
		name := fmt.Sprintf("entraauth-test-race-%d-%d", trial, driverSeq.Add(1))
		var ok, taken atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				switch err := entraauth.RegisterDriver(name, cred); {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, entraauth.ErrDriverNameTaken):
					taken.Add(1)
				default:
					t.Errorf("RegisterDriver: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 1 || taken.Load() != 7 {
			t.Fatalf("trial %d: %d registrations succeeded and %d were refused, want 1 and 7", trial, ok.Load(), taken.Load())
		}
	}
}

// TestRegisterDriverInvalid: an empty name, a nil credential or a bad
// option is refused at registration, and nothing is registered.
func TestRegisterDriverInvalid(t *testing.T) {
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("invalid@contoso.com"))
	cases := []struct {
		name string
		cred *entratest.Credential
		opts []entraauth.Option
	}{
		{"", cred, nil},
		{fmt.Sprintf("entraauth-test-nilcred-%d", driverSeq.Add(1)), nil, nil},
		{fmt.Sprintf("entraauth-test-badopt-%d", driverSeq.Add(1)), cred, []entraauth.Option{entraauth.WithUser("")}},
	}
	for _, c := range cases {
		var err error
		if c.cred == nil {
			err = entraauth.RegisterDriver(c.name, nil, c.opts...)
		} else {
			err = entraauth.RegisterDriver(c.name, c.cred, c.opts...)
		}
		if !errors.Is(err, entraauth.ErrInvalidOption) {
			t.Errorf("RegisterDriver(%q, …): %v, want ErrInvalidOption", c.name, err)
		}
		for _, d := range sql.Drivers() {
			if d == c.name {
				t.Errorf("driver %q registered despite the error", c.name)
			}
		}
	}
}

// TestDriverBadDSN: sql.Open accepts a connection string pgx cannot parse
// (it does not connect); Ping reports ErrInvalidConnString without the
// string's password, and without calling the credential.
func TestDriverBadDSN(t *testing.T) {
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("bad@contoso.com"))
	name := registerTestDriver(t, cred)
	for _, dsn := range []string{
		"host=srv.postgres.database.azure.com port=notaport password=Sup3rSecretPw",
		"postgres://u:Sup3rSecretPw@srv.postgres.database.azure.com:notaport/app",
		"host=srv password='Sup3rSecretPw",
	} {
		db := openDB(t, name, dsn)
		err := db.Ping()
		if !errors.Is(err, entraauth.ErrInvalidConnString) {
			t.Errorf("Ping: %v, want ErrInvalidConnString", err)
		}
		if err != nil && strings.Contains(err.Error(), "Sup3rSecretPw") {
			t.Errorf("Ping's error holds the password: %v", err)
		}
	}
	if n := cred.Calls(); n != 0 {
		t.Errorf("credential called %d times for unparsable connection strings, want 0", n)
	}
}

// TestDriverOpenConnects: sql.Open(name, dsn) logs in as the token's
// principal over verified TLS, db.Driver() is the registered driver, and
// its Open (the driver.Driver interface itself) connects as well.
func TestDriverOpenConnects(t *testing.T) {
	unsetenv(t, "PGUSER")
	iss, srv, _ := newEntraServer(t)
	alice := entratest.User("driver@contoso.com")
	addRole(t, srv, alice.UPN, alice.ObjectID)
	cred := entratest.NewCredential(iss, alice)
	name := registerTestDriver(t, cred, entraauth.WithRequireVerifiedTLS())

	db := openDB(t, name, srv.ConnString())
	if user := currentUser(t, db); user != alice.UPN {
		t.Errorf("current_user = %q, want %q", user, alice.UPN)
	}

	// The driver a handle reports is the one registered under name.
	other := openDB(t, name, srv.ConnString())
	if db.Driver() != other.Driver() {
		t.Error("two handles of one registered driver report different drivers")
	}
	conn, err := db.Driver().Open(srv.ConnString())
	if err != nil {
		t.Fatalf("driver.Open: %v", err)
	}
	if err := conn.(driver.Pinger).Ping(context.Background()); err != nil {
		t.Errorf("Ping on driver.Open's connection: %v", err)
	}
	if err := conn.Close(); err != nil {
		t.Error(err)
	}
	if st := srv.Stats(); st.Accepted < 2 || st.TotalRejected() != 0 || st.PlaintextPasswords != 0 {
		t.Errorf("server: %d logins, rejected %v, %d plaintext; want at least 2, none, none", st.Accepted, st.Rejected, st.PlaintextPasswords)
	}
}

// TestDriverSharesTokenSource: handles opened through one driver with
// different connection strings (key/value and URL) share one token: the
// credential is called once. A second driver has its own TokenSource.
func TestDriverSharesTokenSource(t *testing.T) {
	unsetenv(t, "PGUSER")
	iss, srv, _ := newEntraServer(t)
	alice := entratest.User("shared@contoso.com")
	addRole(t, srv, alice.UPN, alice.ObjectID)
	cred := entratest.NewCredential(iss, alice)
	name := registerTestDriver(t, cred)

	dsns := []string{
		srv.ConnString(),
		srv.ConnString("application_name=second"),
		fmt.Sprintf("postgres://%s/postgres?sslmode=verify-full&sslrootcert=%s&application_name=third", srv.Addr(), srv.CAFile()),
	}
	for _, dsn := range dsns {
		db := openDB(t, name, dsn)
		db.SetMaxIdleConns(0) // every query logs in anew
		for range 3 {
			if user := currentUser(t, db); user != alice.UPN {
				t.Errorf("current_user = %q, want %q", user, alice.UPN)
			}
		}
	}
	st := srv.Stats()
	if n := cred.Calls(); n != 1 {
		t.Errorf("credential called %d times for %d handles of one driver, want 1", n, len(dsns))
	}
	if st.Accepted < int64(3*len(dsns)) || st.DistinctTokens != 1 {
		t.Errorf("server: %d logins with %d distinct tokens, want at least %d with 1", st.Accepted, st.DistinctTokens, 3*len(dsns))
	}

	// Another driver on the same credential: its own TokenSource, so one
	// more call.
	second := openDB(t, registerTestDriver(t, cred), srv.ConnString())
	currentUser(t, second)
	if n := cred.Calls(); n != 2 {
		t.Errorf("credential called %d times after a second driver connected, want 2", n)
	}
}

// TestDriverTokensRotate: two handles of one driver, with connections
// living half a second, query from 4 goroutines for 10 seconds while
// tokens live 4: no query fails, no login is rejected, tokens rotate, and
// the credential is asked at most once per 0.4 token lives (one
// TokenSource for both handles).
func TestDriverTokensRotate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 10 seconds; skipped with -short")
	}
	const (
		tokenLife = 4 * time.Second
		connLife  = 500 * time.Millisecond
		runFor    = 10 * time.Second
		workers   = 4
	)
	unsetenv(t, "PGUSER")
	iss, srv, _ := newEntraServer(t)
	alice := entratest.User("rotate@contoso.com")
	addRole(t, srv, alice.UPN, alice.ObjectID)
	cred := entratest.NewCredential(iss, alice)
	cred.SetLifetime(tokenLife)
	name := registerTestDriver(t, cred, entraauth.WithRequireVerifiedTLS())

	dbs := []*sql.DB{
		openDB(t, name, srv.ConnString()),
		openDB(t, name, srv.ConnString("application_name=rotate")),
	}
	for _, db := range dbs {
		db.SetMaxOpenConns(2)
		db.SetConnMaxLifetime(connLife)
	}

	start := time.Now()
	end := start.Add(runFor)
	var queries atomic.Int64
	failures := queryLoad(t, workers, end, alice.UPN, func(ctx context.Context, w, i int) (user string, err error) {
		queries.Add(1)
		err = dbs[(w+i)%len(dbs)].QueryRowContext(ctx, "select current_user").Scan(&user)
		return user, err
	})
	elapsed := time.Since(start)

	st := srv.Stats()
	t.Logf("%d queries in %v; server: %d logins, %d distinct tokens, rejected %v; credential calls %d",
		queries.Load(), elapsed.Round(time.Millisecond), st.Accepted, st.DistinctTokens, st.Rejected, cred.Calls())
	if n := failures; n != 0 {
		t.Errorf("%d queries failed, want 0", n)
	}
	if n := st.TotalRejected(); n != 0 {
		t.Errorf("server rejected %d logins (%v), want 0", n, st.Rejected)
	}
	if st.PlaintextPasswords != 0 {
		t.Errorf("%d tokens arrived without TLS", st.PlaintextPasswords)
	}
	if st.DistinctTokens < 3 {
		t.Errorf("server saw %d distinct tokens, want at least 3 (tokens refresh about every %v)", st.DistinctTokens, tokenLife/2)
	}
	if st.Accepted < 10 {
		t.Errorf("server accepted %d logins, want at least 10 (connections live %v)", st.Accepted, connLife)
	}
	if maxCalls := int64(elapsed/(tokenLife*4/10)) + 1; cred.Calls() > maxCalls {
		t.Errorf("credential called %d times in %v, want at most %d (one TokenSource for both handles)", cred.Calls(), elapsed, maxCalls)
	}
}

// A driver name for tools that take only a name and a connection string:
// register it once at start-up, then sql.Open it with any number of
// connection strings, which share one cached token. sql.Open does not
// connect, so a connection string pgx cannot parse shows at the first Ping,
// with the password nowhere in the error. (The credential here is the
// entratest kit's, to run offline; use one from azidentity.)
func ExampleRegisterDriver() {
	iss, err := entratest.NewIssuer()
	if err != nil {
		log.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))

	if err := entraauth.RegisterDriver("azure-postgres", cred, entraauth.WithRequireVerifiedTLS()); err != nil {
		log.Fatal(err)
	}
	// Once is enough: a second registration is refused, not a panic.
	err = entraauth.RegisterDriver("azure-postgres", cred)
	fmt.Println("registered twice:", errors.Is(err, entraauth.ErrDriverNameTaken))

	db, err := sql.Open("azure-postgres", "host=mysrv.postgres.database.azure.com port=5432x user=alice password=hunter2 sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	err = db.Ping()
	fmt.Println(err)
	fmt.Println("invalid connection string:", errors.Is(err, entraauth.ErrInvalidConnString))
	fmt.Println("password in the error:", strings.Contains(err.Error(), "hunter2"))
	// Output:
	// registered twice: true
	// entraauth: invalid connection string: invalid port
	// invalid connection string: true
	// password in the error: false
}
