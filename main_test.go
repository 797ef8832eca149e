package entraauth

import (
	"os"
	"testing"

	"github.com/pgentra/entraauth/internal/pgtest"
	"github.com/pgentra/entraauth/internal/testmain"
)

// TestMain checks for leaked goroutines after the tests, once the shared
// PostgreSQL server has stopped.
func TestMain(m *testing.M) {
	os.Exit(testmain.Run(m, &sharedPG))
}

// sharedPG is one real PostgreSQL server for the package's tests, started
// on first use.
var sharedPG pgtest.Shared

// testServer returns the shared server, skipping the test when PostgreSQL
// is not installed (failing instead under ENTRAAUTH_REQUIRE_PG=1).
func testServer(t *testing.T) *pgtest.Server {
	t.Helper()
	return sharedPG.Get(t)
}
