package pgtest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// RequireEnv is the environment variable that turns a missing PostgreSQL
// from a skip into a failure when set to "1" (CI sets it).
const RequireEnv = "ENTRAAUTH_REQUIRE_PG"

// Required reports whether tests must have PostgreSQL: ENTRAAUTH_REQUIRE_PG=1.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// SkipOrFail handles an error from Start: with ErrNoBinaries it skips the
// test, or fails it when Required; any other non-nil error fails it.
func SkipOrFail(tb testing.TB, err error) {
	tb.Helper()
	switch {
	case err == nil:
	case errors.Is(err, ErrNoBinaries) && !Required():
		tb.Skipf("skipping: %v", err)
	case errors.Is(err, ErrNoBinaries):
		tb.Fatalf("%v (PostgreSQL is required because %s=1)", err, RequireEnv)
	default:
		tb.Fatal(err)
	}
}

// StartForTest starts a server for tb, skips or fails through SkipOrFail,
// and stops it in tb's cleanup, logging the tail of the server log if the
// test failed.
func StartForTest(tb testing.TB) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Logf: tb.Logf})
	SkipOrFail(tb, err)
	if err != nil {
		return nil // only reached with a fake testing.TB
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("pgtest: server log (tail):\n%s", tail(s.Log(), 40))
		}
		if err := s.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// SkipWithoutBinaries skips tb (or fails it when Required) when no
// PostgreSQL server binaries are installed, before a test that starts a
// server some other way (entratest.NewServer) and would fail without them.
func SkipWithoutBinaries(tb testing.TB) {
	tb.Helper()
	_, err := findBinDir()
	SkipOrFail(tb, err)
}
