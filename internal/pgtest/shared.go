package pgtest

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Shared is one server for all the tests of a package: Get starts it on
// first use, and Stop (called by testmain.Run) stops it once the tests
// have run.
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

// Stop stops the shared server if one started. Call it once the tests
// have run, with no Get running.
func (s *Shared) Stop() error {
	if s.server == nil {
		return nil
	}
	return s.server.Stop()
}
