// Package testmain is the TestMain body of the module's test packages:
// run the tests, stop the shared PostgreSQL, check for leaked goroutines.
// It is a package of its own so that goleak stays out of the packages
// that test helpers import (internal/pgtest, and through it entratest).
package testmain

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pgentra/entraauth/internal/pgtest"
)

// Run runs the tests, stops the shared server if one started, and then
// fails the run if a goroutine was left behind. It returns the exit code
// for os.Exit.
func Run(m *testing.M, shared *pgtest.Shared) int {
	code := m.Run()
	if err := shared.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping PostgreSQL:", err)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}
