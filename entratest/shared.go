package entratest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// sharedStartTimeout bounds starting a [Shared] server, PostgreSQL
// included.
const sharedStartTimeout = 2 * time.Minute

// Shared is one [Server] (and its throwaway PostgreSQL) for all the tests
// of a package, so each test does not pay for starting PostgreSQL (one to
// three seconds). Declare it at package level, get the server in each test
// with [Shared.Get], and stop it after the tests with [RunTests] in
// TestMain:
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
// The server starts on the first Get, Issuer or Start. Tests sharing it
// share its roles and counters: [Server.AddRole] may be called again for
// the same role, and [Server.Stats] counts every test's logins, so compare
// a snapshot from before and after rather than absolute numbers.
//
// A Shared is safe for concurrent use (t.Parallel tests may Get it
// together). Its zero value is ready to use; set Config before the first
// Get.
type Shared struct {
	// Config configures the server. A nil Verifier means a new [Issuer],
	// which [Shared.Issuer] returns.
	Config ServerConfig
	// SkipWithoutPostgreSQL makes Get skip the test, rather than fail it,
	// when the server cannot start because no PostgreSQL server binaries
	// are installed ([ErrNoPostgreSQL]). Leave it false in CI, so a
	// missing PostgreSQL cannot pass as a green run.
	SkipWithoutPostgreSQL bool

	mu      sync.Mutex
	started bool
	closed  bool
	server  *Server
	issuer  *Issuer
	err     error
}

// errSharedClosed is Start's error after Close.
var errSharedClosed = errors.New("entratest: Shared server used after Close")

// Start starts the shared server on first use and returns it, or the error
// of that first start (every later call returns the same). Tests use
// [Shared.Get]; Start is for code with no testing.TB.
func (s *Shared) Start() (*Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errSharedClosed
	}
	if !s.started {
		s.started = true
		s.server, s.issuer, s.err = s.start()
	}
	return s.server, s.err
}

// start makes the issuer, if needed, and the server. s.mu is held.
func (s *Shared) start() (*Server, *Issuer, error) {
	cfg := s.Config
	iss, _ := cfg.Verifier.(*Issuer)
	if cfg.Verifier == nil {
		var err error
		if iss, err = NewIssuer(); err != nil {
			return nil, nil, err
		}
		cfg.Verifier = iss
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
	defer cancel()
	srv, err := NewServer(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return srv, iss, nil
}

// Get returns the shared server, starting it on first use. If it cannot
// start, Get fails tb (or skips it; see SkipWithoutPostgreSQL) and does
// not return.
func (s *Shared) Get(tb testing.TB) *Server {
	tb.Helper()
	srv, err := s.Start()
	switch {
	case err == nil:
		return srv
	case errors.Is(err, ErrNoPostgreSQL) && s.SkipWithoutPostgreSQL:
		tb.Skipf("skipping: %v", err)
	default:
		tb.Fatalf("entratest: shared server: %v", err)
	}
	return nil // only reached with a testing.TB whose Fatalf returns
}

// Issuer returns the issuer whose tokens the shared server accepts,
// starting the server like Get. It fails tb if Config.Verifier is a
// TokenVerifier other than an *Issuer.
func (s *Shared) Issuer(tb testing.TB) *Issuer {
	tb.Helper()
	if s.Get(tb) == nil {
		return nil
	}
	s.mu.Lock()
	iss := s.issuer
	s.mu.Unlock()
	if iss == nil {
		tb.Fatalf("entratest: Shared.Issuer: Config.Verifier is a %T, not an *entratest.Issuer", s.Config.Verifier)
	}
	return iss
}

// Close stops the shared server, if it started, and its PostgreSQL. Call
// it once the tests have run ([RunTests] does); later Gets fail. It is
// idempotent.
func (s *Shared) Close() error {
	s.mu.Lock()
	srv := s.server
	s.closed = true
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// RunTests is a TestMain body for a package whose tests use shared: it
// runs the tests, then closes shared, and returns the exit code for
// os.Exit. A failure to close turns a passing run into a failing one.
//
//	func TestMain(m *testing.M) { os.Exit(entratest.RunTests(m, &emulator)) }
func RunTests(m *testing.M, shared *Shared) int {
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "entratest: closing the shared server:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
