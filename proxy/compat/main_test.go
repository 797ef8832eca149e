package compat

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

// sharedPG is the one real PostgreSQL of the package's tests.
var sharedPG pgtest.Shared
