package entraauth

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/pgentra/entraauth/internal/pgtest"
	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines after the tests, once the shared
// PostgreSQL server has stopped.
func TestMain(m *testing.M) {
	code := m.Run()
	if sharedPG.server != nil {
		if err := sharedPG.server.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping PostgreSQL:", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedPG is one real PostgreSQL server for the package's tests, started
// on first use.
var sharedPG struct {
	once   sync.Once
	server *pgtest.Server
	err    error
}

// testServer returns the shared server, skipping the test when PostgreSQL
// is not installed (failing instead under ENTRAAUTH_REQUIRE_PG=1).
func testServer(t *testing.T) *pgtest.Server {
	t.Helper()
	sharedPG.once.Do(func() {
		sharedPG.server, sharedPG.err = pgtest.Start(context.Background(), pgtest.Options{})
	})
	pgtest.SkipOrFail(t, sharedPG.err)
	return sharedPG.server
}
