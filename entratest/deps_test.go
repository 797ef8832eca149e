package entratest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoTestOnlyDependencies fails if importing entratest pulls a
// test-only library (goleak) into the importer's non-test build: the kit
// is imported from users' test helpers, and must not drag our test
// machinery along.
func TestNoTestOnlyDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/pgentra/entraauth/entratest").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %d packages: %q", len(deps), deps)
	}
	for _, dep := range deps {
		if strings.HasPrefix(dep, "go.uber.org/goleak") {
			t.Errorf("entratest depends on %s outside its tests", dep)
		}
	}
}
