package compat

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgentra/entraauth/proxy"
)

// suiteEnv turns the pgx suite run on: it takes minutes, so only CI
// (.ci/run) and whoever asks for it run it.
const suiteEnv = "ENTRAAUTH_PGX_SUITE"

// suitePackages are the packages of pgx whose tests run, as the issue
// names them.
var suitePackages = []string{".", "./pgconn/...", "./pgtype/...", "./pgxpool", "./stdlib", "./tracelog"}

// suiteRunEnv, when set, is a -run pattern that narrows both passes (and
// the checks that only the whole suite can meet are left out), for
// looking into a failure: ENTRAAUTH_PGX_SUITE_RUN=TestConnPing.
const suiteRunEnv = "ENTRAAUTH_PGX_SUITE_RUN"

// suiteTimeout bounds one pass of the suite (go test -timeout).
const suiteTimeout = 10 * time.Minute

// TestPGXSuite runs pgx v5.12.0's own tests directly against PostgreSQL
// over TLS and then through the proxy against the same server and role,
// and fails on every test that passed directly but not through the proxy,
// apart from those in byDesign. A proxy-only failure is run again through
// the proxy to tell a flake of pgx's timing from a fault: one that passes
// then is reported, not failed.
//
// pgx's optional tests of the server's own authentication methods (md5,
// SCRAM, plain password, client certificates, OAuth) and of pgbouncer
// and CrateDB skip in both passes: their variables stay unset, since the
// proxy replaces the server's authentication by design.
func TestPGXSuite(t *testing.T) {
	if os.Getenv(suiteEnv) != "1" {
		t.Skipf("pgx's suite takes minutes; set %s=1 to run it (.ci/run does)", suiteEnv)
	}
	f := newFixture(t, "pgx-suite@contoso.com")
	setupPGXDatabase(t, f)
	dir := copyPGXModule(t)

	directEnv := pgxEnv(f.direct("pgx_test"), f.directUnix("pgx_test"))
	proxyEnv := pgxEnv(f.proxied("pgx_test"), f.proxiedUnix("pgx_test"))

	args := suitePackages
	pattern := os.Getenv(suiteRunEnv)
	if pattern != "" {
		args = append([]string{"-run", pattern}, args...)
	}
	direct := runSuite(t, "direct", dir, directEnv, args...)
	proxied := runSuite(t, "through the proxy", dir, proxyEnv, args...)
	if n := direct.count("pass"); n < 1000 && pattern == "" {
		t.Fatalf("only %d tests passed directly: the environment is not what pgx's suite expects", n)
	}
	var skipped []string
	for id, action := range direct.tests {
		if action == "skip" {
			skipped = append(skipped, id.String())
		}
	}
	slices.Sort(skipped)
	t.Logf("skipped directly (and so not compared): %s", strings.Join(skipped, ", "))
	if failed := direct.failures(); len(failed) > 0 {
		t.Logf("%d tests failed directly too (not the proxy's doing, not compared):", len(failed))
		for _, id := range failed {
			t.Logf("  %s", id)
		}
	}

	diffs := proxyOnly(direct, proxied)
	var faults, expected []difference
	for _, d := range diffs {
		if reason := exception(d.ID); reason != "" {
			expected = append(expected, d)
			t.Logf("by design: %s (%s)", d, reason)
		} else {
			faults = append(faults, d)
		}
	}
	for key := range byDesign {
		if !containsKey(expected, key) && pattern == "" {
			t.Errorf("%q is listed in byDesign but did not differ through the proxy: remove it from the list and the README", key)
		}
	}
	if pattern == "" {
		strictUserPass(t, f, dir)
	}
	if len(faults) == 0 {
		return
	}
	// Run the proxy-only failures again through the proxy, by package:
	// a test that fails both times, or a test the second run shows failing
	// only through the proxy, is a fault.
	again := rerun(t, dir, proxyEnv, faults)
	failed := map[testID]bool{}
	for _, d := range faults {
		if again.tests[d.ID] == "pass" {
			t.Logf("FLAKE? %s, but passed when run again through the proxy", d)
			continue
		}
		failed[d.ID] = true
		t.Errorf("PROXY-ONLY FAILURE %s; output through the proxy:\n%s", d, strings.Join(outputOf(proxied, d.ID), "\n"))
	}
	for _, d := range proxyOnly(direct, again) {
		if d.Proxied == "fail" && !failed[d.ID] && exception(d.ID) == "" {
			failed[d.ID] = true
			t.Errorf("PROXY-ONLY FAILURE (when run again) %s; output through the proxy:\n%s", d, strings.Join(outputOf(again, d.ID), "\n"))
		}
	}
	var list []string
	for id := range failed {
		list = append(list, id.String())
	}
	slices.Sort(list)
	if len(list) > 0 {
		t.Errorf("%d tests failed only through the proxy:\n  %s", len(list), strings.Join(list, "\n  "))
	}
}

// strictUserPass runs pgx's TestConnectInvalidUser through a proxy with
// StrictUser (--strict-user), where it must pass: the exception holds only
// for the default, which ignores the client's user name.
func strictUserPass(t *testing.T, f *fixture, dir string) {
	t.Helper()
	_, port, socketDir := f.startProxy(t, filepath.Join(t.TempDir(), "strict.log"), proxy.Config{StrictUser: true})
	tcp, unix := f.proxied("pgx_test"), f.proxiedUnix("pgx_test")
	tcp.Port, unix.Port, unix.Host = port, port, socketDir
	r := runSuite(t, "through a --strict-user proxy", dir, pgxEnv(tcp, unix), "-run", "^TestConnectInvalidUser$", "./pgconn")
	if id := (testID{Pkg: "pgconn", Name: "TestConnectInvalidUser"}); r.tests[id] != "pass" {
		t.Errorf("%s: %q through a proxy with StrictUser, want pass; output:\n%s", id, r.tests[id], strings.Join(outputOf(r, id), "\n"))
	}
}

func containsKey(ds []difference, key string) bool {
	for _, d := range ds {
		pkg, name, _ := strings.Cut(key, " ")
		if d.ID.Pkg == pkg && (d.ID.Name == name || strings.HasPrefix(d.ID.Name, name+"/")) {
			return true
		}
	}
	return false
}

// outputOf is what id printed, or its package when it printed nothing.
func outputOf(r *suiteRun, id testID) []string {
	if out := r.output[id]; len(out) > 0 {
		return out
	}
	return r.output[testID{Pkg: id.Pkg}]
}

// pgxEnv is the environment of one pass: the connection strings pgx's
// suite reads. The TCP and TLS strings are the same verified-TLS string,
// since the token never travels without TLS.
func pgxEnv(tcp, unix fmt.Stringer) []string {
	return []string{
		"PGX_TEST_DATABASE=" + tcp.String(),
		"PGX_TEST_TCP_CONN_STRING=" + tcp.String(),
		"PGX_TEST_TLS_CONN_STRING=" + tcp.String(),
		"PGX_TEST_UNIX_SOCKET_CONN_STRING=" + unix.String(),
	}
}

// setupPGXDatabase does what pgx's testsetup/postgresql_setup.sql does that
// its tests need: the pgx_test database, its extensions and domain, and
// the role with special characters in its name.
func setupPGXDatabase(t *testing.T, f *fixture) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.pg.Exec(ctx, "CREATE DATABASE pgx_test"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, f.pg.AdminConnString()+" dbname=pgx_test")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{
		"CREATE EXTENSION hstore",
		"CREATE EXTENSION ltree",
		"CREATE DOMAIN uint64 AS numeric(20,0)",
		`CREATE ROLE " tricky, ' } "" \ test user " SUPERUSER`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// copyPGXModule copies pgx's module, which holds its tests, from the
// read-only module cache into a temporary directory, and returns it.
func copyPGXModule(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", pgxModule).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", pgxModule, err)
	}
	src := strings.TrimSpace(string(out))
	if !strings.HasSuffix(src, "@v5.12.0") {
		t.Fatalf("pgx module at %s; the suite and its exceptions are for v5.12.0", src)
	}
	dst := filepath.Join(t.TempDir(), "pgx")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// runSuite runs go test -json on pkgs in pgx's module at dir with env
// added, and returns what it reported. Failing tests are what it is for,
// so go test's exit status is not an error; output that is no test's
// result (a build failure) fails the test.
func runSuite(t *testing.T, name, dir string, env []string, args ...string) *suiteRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"test", "-json", "-count=1", "-vet=off", "-timeout=" + suiteTimeout.String()}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(suiteBaseEnv(), env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	run, perr := parseTestJSON(stdout)
	io.Copy(io.Discard, stdout)
	werr := cmd.Wait()
	elapsed := time.Since(began)
	if perr != nil {
		t.Fatalf("%s: reading go test -json: %v", name, perr)
	}
	if _, ok := werr.(*exec.ExitError); werr != nil && !ok {
		t.Fatalf("%s: go test: %v", name, werr)
	}
	if lines := run.output[testID{Pkg: "?"}]; len(lines) > 0 {
		t.Fatalf("%s: go test printed:\n%s", name, strings.Join(lines, "\n"))
	}
	t.Logf("pgx suite %s: %d passed, %d failed, %d skipped in %v", name,
		run.count("pass"), run.count("fail"), run.count("skip"), elapsed.Round(time.Second))
	return run
}

// rerun runs the top-level tests of diffs again with env, each package
// once.
func rerun(t *testing.T, dir string, env []string, diffs []difference) *suiteRun {
	t.Helper()
	byPkg := map[string][]string{}
	for _, d := range diffs {
		if d.ID.Name == "" {
			continue // a whole package: nothing narrower to rerun
		}
		top, _, _ := strings.Cut(d.ID.Name, "/")
		if re := "^" + regexp.QuoteMeta(top) + "$"; !slices.Contains(byPkg[d.ID.Pkg], re) {
			byPkg[d.ID.Pkg] = append(byPkg[d.ID.Pkg], re)
		}
	}
	all := &suiteRun{tests: map[testID]string{}, packages: map[string]string{}, output: map[testID][]string{}}
	for pkg, names := range byPkg {
		r := runSuite(t, "again through the proxy ("+pkg+")", dir, env, "-run", strings.Join(names, "|"), "./"+pkg)
		for id, a := range r.tests {
			all.tests[id] = a
		}
		for id, out := range r.output {
			all.output[id] = out
		}
	}
	return all
}

// suiteBaseEnv is this process's environment without the variables that
// would steer pgx's suite elsewhere: the PG* and PGX_* settings.
func suiteBaseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}
