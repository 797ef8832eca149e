package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Shared is one server for all the tests of a package: Get starts it on
// first use, and RunTests stops it once the tests have run.
type Shared struct {
	once   sync.Once
	server *Server
	err    error
}

// Get returns the shared server, starting it on first use. When it cannot
// start, tb is skipped or failed through SkipOrFail.
func (s *Shared) Get(tb testing.TB) *Server {
	tb.Helper()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		s.server, s.err = Start(ctx, Options{})
	})
	SkipOrFail(tb, s.err)
	return s.server
}

// RunTests is a package's TestMain body: it runs the tests, stops the
// shared server if one started, and then fails the run if a goroutine was
// left behind. It returns the exit code for os.Exit.
func RunTests(m *testing.M, shared *Shared) int {
	code := m.Run()
	if shared.server != nil {
		if err := shared.server.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping PostgreSQL:", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}
