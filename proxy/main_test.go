package proxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
	"github.com/pgentra/entraauth/internal/testmain"
)

// TestMain checks for leaked goroutines after the tests, once the shared
// PostgreSQL server has stopped.
func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, &sharedPG))
}

// sharedPG is one real PostgreSQL for the package's tests, started on first
// use: the backend of every entratest server.
var sharedPG pgtest.Shared

func testPG(t *testing.T) *pgtest.Server {
	t.Helper()
	return sharedPG.Get(t)
}

// Principals with roles on every fixture's server.
var (
	alice = entratest.User("proxy-alice@contoso.com")
	bob   = entratest.User("proxy-bob@contoso.com")
)

// fixture is an Entra emulator, a server checking its tokens like Azure,
// and a proxy in front of it.
type fixture struct {
	pg    *pgtest.Server
	iss   *entratest.Issuer
	srv   *entratest.Server
	cred  *entratest.Credential
	ts    *entraauth.TokenSource
	proxy *Server
	addr  string // the proxy's address
	logs  *logBuffer
}

// newFixture starts the servers and a proxy configured by cfg, whose
// Upstream (when empty), TokenSource and Logger it fills in.
func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	t.Setenv("PGUSER", "")
	f := &fixture{pg: testPG(t), logs: &logBuffer{}}
	var err error
	if f.iss, err = entratest.NewIssuer(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f.srv, err = entratest.NewServer(ctx, entratest.ServerConfig{Verifier: f.iss, BackendDSN: f.pg.AdminConnString(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.srv.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, p := range []entratest.Principal{alice, bob} {
		if err := f.srv.AddRole(ctx, p.UPN, p.ObjectID); err != nil {
			t.Fatal(err)
		}
	}
	f.cred = entratest.NewCredential(f.iss, alice)
	f.ts = entraauth.NewTokenSource(f.cred, entraauth.WithRequireVerifiedTLS())
	if cfg.Upstream == "" {
		cfg.Upstream = f.srv.ConnString()
	}
	cfg.TokenSource = f.ts
	cfg.Logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.proxy, f.addr = startProxy(t, cfg)
	return f
}

// startProxy serves cfg on a loopback port until the test ends.
func startProxy(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(l) }()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return p, l.Addr().String()
}

// connString is a libpq connection string for the proxy, in plaintext (on
// loopback), with extra "key=value" items appended.
func (f *fixture) connString(extra ...string) string {
	host, port, _ := net.SplitHostPort(f.addr)
	return strings.Join(append([]string{"host=" + host, "port=" + port, "dbname=postgres", "sslmode=disable", "connect_timeout=20"}, extra...), " ")
}

// token returns the token the proxy's TokenSource holds, for checking it
// appears nowhere.
func (f *fixture) token(t *testing.T) string {
	t.Helper()
	tok, err := f.ts.Token(context.Background())
	var backoff *entraauth.BackoffError
	if errors.As(err, &backoff) { // a test made the credential fail just before
		time.Sleep(time.Until(backoff.RetryAt))
		tok, err = f.ts.Token(context.Background())
	}
	if err != nil {
		t.Fatal(err)
	}
	return tok.Value
}

// noToken fails the test if s holds the token or anything like a JWT.
func (f *fixture) noToken(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, f.token(t)) || strings.Contains(s, "eyJ") {
		t.Errorf("%s holds the token: %s", what, s)
	}
}

// logBuffer collects log output from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
