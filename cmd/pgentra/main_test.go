package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
	"github.com/pgentra/entraauth/internal/testmain"
)

// pgentraBin is the pgentra binary TestMain builds for the end-to-end
// tests.
var pgentraBin string

// TestMain builds pgentra once, runs the tests, stops the shared
// PostgreSQL and checks for leaked goroutines.
func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	// PGENTRA_TEST_BINARY runs the end-to-end tests against another build,
	// such as one of an earlier commit, to see a regression test fail.
	if pgentraBin = os.Getenv("PGENTRA_TEST_BINARY"); pgentraBin != "" {
		return testmain.Run(m, &sharedPG)
	}
	dir, err := os.MkdirTemp("", "pgentra-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "the go command is needed to build pgentra:", err)
		return 1
	}
	pgentraBin = filepath.Join(dir, "pgentra")
	// With the VCS revision stamped in when git can give it (GOFLAGS may
	// say -buildvcs=false), for TestVersion; else as GOFLAGS says.
	if _, err := exec.Command(goTool, "build", "-buildvcs=auto", "-o", pgentraBin, ".").CombinedOutput(); err == nil {
		return testmain.Run(m, &sharedPG)
	}
	if out, err := exec.Command(goTool, "build", "-o", pgentraBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building pgentra: %v\n%s", err, out)
		return 1
	}
	return testmain.Run(m, &sharedPG)
}

// sharedPG is one real PostgreSQL for the package's tests, started on
// first use: the backend of every entratest server, and a password server
// of its own.
var sharedPG pgtest.Shared

func testPG(t *testing.T) *pgtest.Server {
	t.Helper()
	return sharedPG.Get(t)
}

// fixture is an Entra emulator and a server checking its tokens.
type fixture struct {
	pg  *pgtest.Server
	iss *entratest.Issuer
	srv *entratest.Server
}

// Principals of the end-to-end tests, with roles on the server.
var (
	alice    = entratest.User("cli-alice@contoso.com")
	identity = entratest.ManagedIdentity("cli-identity")
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{pg: testPG(t)}
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
	if err := f.srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.AddRole(ctx, "cli-identity", identity.ObjectID); err != nil {
		t.Fatal(err)
	}
	return f
}

// issuerOnly is a fixture with an Entra emulator and no server, for
// credentials alone.
func issuerOnly(t *testing.T) *fixture {
	t.Helper()
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{iss: iss}
}

// az returns a fake az for p; its directory goes first on PATH with
// f.azPath.
func (f *fixture) az(t *testing.T, p entratest.Principal) *entratest.AzureCLI {
	t.Helper()
	az, err := entratest.NewAzureCLI(f.iss, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Close)
	return az
}

// mi returns a managed identity endpoint for p.
func (f *fixture) mi(t *testing.T, p entratest.Principal) *entratest.ManagedIdentityEndpoint {
	t.Helper()
	mi, err := entratest.NewManagedIdentityEndpoint(f.iss, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mi.Close)
	return mi
}

// miEnv points managed identity credentials at mi.
func miEnv(mi *entratest.ManagedIdentityEndpoint) []string {
	return []string{"IDENTITY_ENDPOINT=" + mi.URL(), "IDENTITY_HEADER=" + mi.Header()}
}

// pathWith puts dir first on PATH.
func pathWith(dir string) string {
	return "PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")
}

// serverEnv points libpq at the entratest server, verifying its certificate.
func (f *fixture) serverEnv() []string {
	return []string{"PGHOST=" + f.srv.Host(), fmt.Sprintf("PGPORT=%d", f.srv.Port()), "PGDATABASE=postgres", "PGSSLROOTCERT=" + f.srv.CAFile()}
}

// childEnv is this process's environment without the variables that
// choose a server, a user or a credential, plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, p := range []string{"PG", "AZURE_", "NEON_", "IDENTITY_", "MSI_", "IMDS_"} {
			drop = drop || strings.HasPrefix(k, p)
		}
		if !drop {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// result is what a command did.
type result struct {
	stdout, stderr string
	code           int
}

// runCmd runs name with args and env, bounded by a generous hang guard.
func runCmd(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", name, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %q did not finish: %+v", name, args, r)
	}
	// No token on stderr, ever: JWTs start with eyJ ({" in base64url).
	if strings.Contains(r.stderr, "eyJ") {
		t.Errorf("%s %q printed something like a token on stderr: %s", name, args, r.stderr)
	}
	return r
}

// pgentra runs the pgentra binary.
func pgentra(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return runCmd(t, env, pgentraBin, args...)
}
