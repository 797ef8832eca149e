package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// proxyProc is a running "pgentra proxy".
type proxyProc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
	host   string // the TCP address it listens on
	port   string
}

// lockedBuffer collects a child's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// listeningRE finds the address in the "listening" log line, text or JSON
// (--structured-logs).
var listeningRE = regexp.MustCompile(`(?:msg="pgentra proxy: listening" addr=|"msg":"pgentra proxy: listening","addr":")([^\s"]+)`)

// startProxyCmd runs pgentra proxy with args (listening on a free
// loopback port unless args say otherwise) and waits until it listens.
// It is stopped with SIGTERM at the end of the test if still running.
func startProxyCmd(t *testing.T, env []string, args ...string) *proxyProc {
	t.Helper()
	hasListen := false
	for _, a := range args {
		hasListen = hasListen || strings.HasPrefix(a, "--listen")
	}
	if !hasListen {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	p := startProxyCmdUntil(t, env, listeningRE, args...)
	m := listeningRE.FindStringSubmatch(p.stderr.String())
	if h, port, err := net.SplitHostPort(m[1]); err == nil {
		p.host, p.port = h, port
	}
	return p
}

// startProxyCmdUntil starts the proxy and waits for a log line matching
// re, rather than for it to listen.
func startProxyCmdUntil(t *testing.T, env []string, re *regexp.Regexp, args ...string) *proxyProc {
	t.Helper()
	p := &proxyProc{stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(pgentraBin, append([]string{"proxy"}, args...)...)
	p.cmd.Env = env
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if strings.Contains(p.stderr.String(), "eyJ") {
			t.Errorf("the proxy logged something like a token: %s", p.stderr.String())
		}
		if t.Failed() {
			t.Logf("proxy stderr:\n%s", p.stderr.String())
		}
	})
	waitUntil(t, "the proxy's log to match "+re.String(), func() bool {
		select {
		case <-p.done:
			t.Fatalf("pgentra proxy exited: %s", p.stderr.String())
		default:
		}
		return re.MatchString(p.stderr.String())
	})
	return p
}

// stop sends SIGTERM and waits for the proxy to exit; it returns the exit
// status.
func (p *proxyProc) stop(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Error("pgentra proxy did not exit after SIGTERM")
	}
	return p.cmd.ProcessState.ExitCode()
}

// env points libpq at the proxy, for database db.
func (p *proxyProc) env(db string, extra ...string) []string {
	return childEnv(append([]string{"PGHOST=" + p.host, "PGPORT=" + p.port, "PGDATABASE=" + db}, extra...)...)
}

// sessionsOpened counts the proxy's "session opened" log lines.
func (p *proxyProc) sessionsOpened() int {
	return strings.Count(p.stderr.String(), "pgentra proxy: session opened")
}

func needPgbench(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("pgbench"); err != nil {
		if os.Getenv("ENTRAAUTH_REQUIRE_PG") == "1" {
			t.Fatal("pgbench is required (ENTRAAUTH_REQUIRE_PG=1):", err)
		}
		t.Skip("pgbench not installed (Debian: apt-get install postgresql-contrib or postgresql-client)")
	}
}

// proxyArgs are the flags pointing a proxy at f's server, with the fake az.
func (f *fixture) proxyArgs(extra ...string) []string {
	return append([]string{"--credential", "cli", "--upstream", f.srv.Addr(), "--sslrootcert", f.srv.CAFile()}, extra...)
}

// createDB (re)creates a database on f's backend, owned by owner if set.
func (f *fixture) createDB(t *testing.T, name, owner string) {
	t.Helper()
	ctx := context.Background()
	if err := f.pg.Exec(ctx, fmt.Sprintf(`drop database if exists %q with (force)`, name)); err != nil {
		t.Fatal(err)
	}
	sql := fmt.Sprintf(`create database %q`, name)
	if owner != "" {
		sql += fmt.Sprintf(` owner %q`, owner)
	}
	if err := f.pg.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

// psql through the proxy: a query with the client's database and
// application_name, the token's principal as the user, libpq's default
// sslmode (prefer: the proxy answers N); \c reconnects with a fresh
// upstream login; one token for all of it.
func TestProxyPsql(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	f.createDB(t, "proxy_other", "")
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)

	r := runCmd(t, p.env("postgres", "PGAPPNAME=psql-via-proxy", "PGUSER=whoever"), "psql", "-X", "-A", "-t", "-c",
		"select current_user, current_database(), current_setting('application_name'), ssl from pg_stat_ssl where pid = pg_backend_pid()")
	// ssl is the entratest server's session to PostgreSQL (a unix socket);
	// the proxy's own upstream TLS is checked by the server's stats.
	if want := alice.UPN + "|postgres|psql-via-proxy|f\n"; r.code != 0 || r.stdout != want {
		t.Errorf("psql through the proxy: %+v; want %q", r, want)
	}
	if st := f.srv.Stats(); st.Accepted != 1 || st.PlaintextPasswords != 0 {
		t.Errorf("upstream stats %+v; want one login over TLS", st)
	}

	// \c to another database: a new session, and a new upstream login.
	opened := p.sessionsOpened()
	cmd := exec.Command("psql", "-X", "-A", "-t", "-q")
	cmd.Env = p.env("postgres")
	cmd.Stdin = strings.NewReader("select current_database(), pg_backend_pid();\n\\c proxy_other\nselect current_database(), pg_backend_pid();\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql with \\c: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "postgres|") || !strings.HasPrefix(lines[1], "proxy_other|") ||
		strings.TrimPrefix(lines[0], "postgres|") == strings.TrimPrefix(lines[1], "proxy_other|") {
		t.Fatalf("psql with \\c printed %q; want postgres and then proxy_other, on two backends", out)
	}
	if st := f.srv.Stats(); st.Accepted != 3 {
		t.Errorf("upstream logins: %d; want 3 (\\c logs in again)", st.Accepted)
	}
	waitUntil(t, "the proxy to log both sessions", func() bool { return p.sessionsOpened() == opened+2 })
	if n := az.Invocations(); n != 1 {
		t.Errorf("az ran %d times; want 1: one token cache for the whole proxy", n)
	}
	if st := f.srv.Stats(); st.DistinctTokens != 1 {
		t.Errorf("distinct tokens upstream: %d", st.DistinctTokens)
	}
}

// Ctrl-C in psql sends a cancel request to the proxy with the key the
// proxy gave it; the proxy forwards it to the right backend: the query
// ends with 57014, as with pg_cancel_backend, not with the session
// terminated, and another session's query goes on. (psql stops a script
// after Ctrl-C; that the session stays usable after a cancel is checked
// with pgconn in the proxy package's TestProxyCancel.)
func TestProxyPsqlCancel(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)

	// A bystander session with a query of its own, which must go on.
	bystander := exec.Command("psql", "-X", "-A", "-t", "-c", "select pg_sleep(5) -- bystander", "-c", "select 'bystander done'")
	bystander.Env = p.env("postgres")
	var bout bytes.Buffer
	bystander.Stdout, bystander.Stderr = &bout, &bout
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-A", "-t", "-v", "VERBOSITY=verbose", "-c", "select pg_sleep(30)")
	cmd.Env = p.env("postgres")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.waitActive(t, "select pg_sleep(30)")
	f.waitActive(t, "select pg_sleep(5) -- bystander")
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatal("psql did not end after SIGINT")
	}
	// Exit status 1 is a failed query; 2 would be a lost connection.
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(stderr.String(), "ERROR:  57014: canceling statement due to user request") ||
		strings.Contains(stderr.String(), "FATAL") || strings.Contains(stderr.String(), "closed the connection") {
		t.Errorf("psql: exit status %d, stderr %q; want the query cancelled with 57014 and the session intact",
			cmd.ProcessState.ExitCode(), stderr.String())
	}
	if n := f.srv.Stats().CancelsForwarded; n != 1 {
		t.Errorf("the server got %d cancel requests, want 1", n)
	}
	if err := bystander.Wait(); err != nil || !strings.Contains(bout.String(), "bystander done") {
		t.Errorf("the other session's query was disturbed: %v: %s", err, bout.String())
	}
}

// waitActive waits until a backend runs query.
func (f *fixture) waitActive(t *testing.T, query string) {
	t.Helper()
	waitUntil(t, "the query "+query, func() bool {
		var n int
		err := f.pg.Admin().QueryRow(context.Background(), "select count(*) from pg_stat_activity where query = $1 and state = 'active'", query).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pgbench -i, then pgbench -S, through the proxy.
func TestProxyPgbench(t *testing.T) {
	needPgbench(t)
	f := newFixture(t)
	az := f.az(t, alice)
	f.createDB(t, "proxy_bench", alice.UPN)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)
	r := runCmd(t, p.env("proxy_bench"), "pgbench", "-i", "-s", "1", "-q")
	if r.code != 0 || !strings.Contains(r.stderr, "done") {
		t.Fatalf("pgbench -i: %+v", r)
	}
	r = runCmd(t, p.env("proxy_bench"), "pgbench", "-S", "-c", "4", "-j", "2", "-t", "200", "-n")
	if r.code != 0 || !strings.Contains(r.stdout, "number of transactions actually processed: 800/800") {
		t.Fatalf("pgbench -S: %+v", r)
	}
	if n := az.Invocations(); n != 1 {
		t.Errorf("az ran %d times", n)
	}
}

// An upstream failure reaches psql as an error with the reason, and a
// wrong local password is refused before any token is asked for.
func TestProxyPsqlErrors(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("l0cal pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--local-password-file", pwFile)...)

	r := runCmd(t, p.env("postgres", "PGPASSWORD=wrong"), "psql", "-X", "-c", "select 1")
	if r.code != 2 || !strings.Contains(r.stderr, `password authentication failed for user`) {
		t.Errorf("a wrong local password: %+v", r)
	}
	if n := az.Invocations(); n != 0 {
		t.Errorf("az ran %d times for a refused client", n)
	}

	az.FailWith("ERROR: Please run 'az login' to setup account.")
	r = runCmd(t, p.env("postgres", "PGPASSWORD=l0cal pw"), "psql", "-X", "-c", "select 1")
	if r.code != 2 || !strings.Contains(r.stderr, "FATAL") || !strings.Contains(r.stderr, "az login") {
		t.Errorf("with az failing: %+v; want psql to show the credential's error", r)
	}
	az.FailWith("")
	// Within the backoff after the failure, clients share it at once; the
	// first after it (at most a second later) asks az again.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r = runCmd(t, p.env("postgres", "PGPASSWORD=l0cal pw"), "psql", "-X", "-A", "-t", "-c", "select current_user")
		if !strings.Contains(r.stderr, "next attempt") || time.Now().After(deadline) {
			break
		}
	}
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("with the local password: %+v", r)
	}
	if strings.Contains(p.stderr.String(), "l0cal pw") {
		t.Error("the local password was logged")
	}
}

// A unix socket only this OS user can use, and no TCP listener.
func TestProxyUnixSocket(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	dir := t.TempDir()
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--listen=", "--unix-socket", dir)...)
	sock := filepath.Join(dir, ".s.PGSQL.5432")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v; want a socket with mode 0600", fi.Mode())
	}
	r := runCmd(t, childEnv("PGHOST="+dir, "PGPORT=5432", "PGDATABASE=postgres"), "psql", "-X", "-A", "-t", "-c", "select current_user")
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("psql over the unix socket: %+v", r)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket file is left after shutdown: %v", err)
	}
}

// SIGTERM stops accepting and lets a running session finish.
func TestProxyGracefulShutdown(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)
	cmd := exec.Command("psql", "-X", "-A", "-t", "-c", "select pg_sleep(2) -- shutdown", "-c", "select 'finished'")
	cmd.Env = p.env("postgres")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.waitActive(t, "select pg_sleep(2) -- shutdown")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the proxy to start shutting down", func() bool { return strings.Contains(p.stderr.String(), "shutting down") })
	if r := runCmd(t, p.env("postgres"), "psql", "-X", "-c", "select 1"); r.code != 2 || !strings.Contains(r.stderr, "pgentra proxy is shutting down") {
		t.Errorf("a new session after SIGTERM: %+v; want it refused", r)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "finished") {
		t.Errorf("the session was cut: %v: %s", err, out.String())
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d", code)
	}
	if !strings.Contains(p.stderr.String(), "session closed") {
		t.Errorf("no session closed line: %s", p.stderr.String())
	}
}

// Flags that would expose the identity or make no sense are refused
// before anything listens.
func TestProxyFlags(t *testing.T) {
	env := childEnv()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--upstream", "srv.example", "--listen", "0.0.0.0:0"}, "--allow-remote"},
		{[]string{"--upstream", "srv.example", "--listen", ":6432"}, "not a loopback address"},
		{[]string{"--upstream", "srv.example", "--sslmode", "disable"}, "--sslmode"},
		{[]string{"--upstream", "srv.example", "--tls-cert", "c.pem"}, "go together"},
		{[]string{"--upstream", "srv.example", "--local-auth", "md5"}, "--local-auth must be scram-sha-256 or password"},
		{[]string{"--upstream", "srv.example", "--local-auth", "password"}, "--local-auth password needs --local-password-file"},
		{[]string{"--upstream", "srv.example", "--listen="}, "nothing to listen on"},
		{[]string{"--credential", "cli"}, "--upstream is required"},
		{[]string{"--upstream", "srv.example", "extra"}, "unexpected argument"},
	} {
		r := pgentra(t, env, append([]string{"proxy"}, tt.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("pgentra proxy %q: %+v; want exit status 2 and %q", tt.args, r, tt.want)
		}
	}
	r := pgentra(t, env, "proxy", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "--upstream") || !strings.Contains(r.stdout, "--credential") ||
		!strings.Contains(r.stdout, "--local-auth METHOD") || !strings.Contains(r.stdout, "sslnegotiation=direct") {
		t.Errorf("pgentra proxy --help: %+v", r)
	}
	if r := pgentra(t, env, "help"); !strings.Contains(r.stdout, "pgentra proxy") {
		t.Errorf("pgentra help does not list proxy: %s", r.stdout)
	}
}

// --allow-remote listens on all interfaces, with a warning.
func TestProxyAllowRemote(t *testing.T) {
	p := startProxyCmd(t, childEnv(), "--credential", "cli", "--upstream", "srv.example", "--listen", "0.0.0.0:0", "--allow-remote")
	if !strings.Contains(p.stderr.String(), "--allow-remote: anyone who can reach") {
		t.Errorf("no warning: %s", p.stderr.String())
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
}

// psql whose backend is terminated exits at once with the server's FATAL
// message and "server closed the connection", as it does directly,
// instead of waiting on a connection the proxy keeps open.
func TestProxyPsqlBackendTerminated(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)
	r := runCmd(t, p.env("postgres"), "psql", "-X", "-c", "select pg_terminate_backend(pg_backend_pid())")
	if r.code != 2 || !strings.Contains(r.stderr, "terminating connection due to administrator command") ||
		!strings.Contains(r.stderr, "server closed the connection unexpectedly") {
		t.Errorf("psql: %+v; want exit status 2 with the FATAL message and the lost connection", r)
	}
	waitUntil(t, "the proxy to log the session's end", func() bool { return strings.Contains(p.stderr.String(), "session closed") })
}

// psql naming another user: by default it gets a session as the token's
// principal and the proxy logs a notice; with --strict-user it is refused
// with 28000 naming the principal, and naming the principal works.
func TestProxyPsqlStrictUser(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)
	r := runCmd(t, p.env("postgres", "PGUSER=whoever"), "psql", "-X", "-A", "-t", "-c", "select current_user")
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("psql as another user: %+v", r)
	}
	waitUntil(t, "the notice", func() bool { return strings.Contains(p.stderr.String(), "client_user=whoever") })

	s := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--strict-user")...)
	// (psql does not print a login error's SQLSTATE; the proxy package's
	// TestProxyStrictUser checks it is 28000.)
	r = runCmd(t, s.env("postgres", "PGUSER=whoever"), "psql", "-X", "-c", "select 1")
	if r.code != 2 || !strings.Contains(r.stderr, `FATAL:  pgentra proxy: user "whoever" is not this proxy's user`) || !strings.Contains(r.stderr, alice.UPN) {
		t.Errorf("psql as another user with --strict-user: %+v; want a FATAL error naming %s", r, alice.UPN)
	}
	r = runCmd(t, s.env("postgres", "PGUSER="+alice.UPN), "psql", "-X", "-A", "-t", "-c", "select current_user")
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("psql as the principal with --strict-user: %+v", r)
	}
}

// During the grace period after SIGTERM, psql's Ctrl-C still cancels its
// query through the proxy; a second SIGTERM then closes the sessions left
// at once rather than after --shutdown-timeout.
func TestProxyShutdownCancelAndSecondSignal(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--shutdown-timeout", "10m")...)
	start := func(query string) (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command("psql", "-X", "-A", "-t", "-v", "VERBOSITY=verbose", "-c", query)
		cmd.Env = p.env("postgres")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		f.waitActive(t, query)
		return cmd, &out
	}
	// The backend of the session closed at the end sleeps on (PostgreSQL
	// notices a lost client only when the query ends), so each run's
	// queries are told apart.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	cancelled, cout := start("select pg_sleep(60) -- cancelled " + run)
	left, lout := start("select pg_sleep(60) -- left " + run)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the proxy to start shutting down", func() bool { return strings.Contains(p.stderr.String(), "shutting down") })
	if err := cancelled.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := cancelled.Wait(); cancelled.ProcessState.ExitCode() != 1 || !strings.Contains(cout.String(), "57014") {
		t.Errorf("psql's cancel during the grace period: %v: %s; want its query cancelled with 57014", err, cout.String())
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the proxy did not exit after a second SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d", code)
	}
	if err := left.Wait(); err == nil || left.ProcessState.ExitCode() != 2 {
		t.Errorf("the session left open: %v: %s; want it closed", err, lout.String())
	}
	if !strings.Contains(p.stderr.String(), "second signal") {
		t.Errorf("no line about the second signal: %s", p.stderr.String())
	}
}

// --unix-socket never takes over a socket in use, and never deletes a
// path it does not own: a PostgreSQL server's socket (found by its lock
// file), another proxy's, a live socket without a lock file and a file
// that is not a socket are refused, and left as they were; a dead
// process's lock and socket are taken over, and removed at exit.
func TestProxyUnixSocketLock(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	env := childEnv(pathWith(az.Dir()))
	refused := func(t *testing.T, want string, args ...string) {
		t.Helper()
		r := pgentra(t, env, append([]string{"proxy"}, f.proxyArgs(args...)...)...)
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("pgentra proxy %q: %+v; want exit status 1 and %q", args, r, want)
		}
	}
	sameFile := func(t *testing.T, path string, before os.FileInfo) {
		t.Helper()
		after, err := os.Lstat(path)
		if err != nil || !os.SameFile(before, after) {
			t.Errorf("%s was replaced or removed: %v", path, err)
		}
	}

	t.Run("PostgreSQL", func(t *testing.T) {
		sock := filepath.Join(f.pg.SocketDir, fmt.Sprintf(".s.PGSQL.%d", f.pg.Port))
		before, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		// Another loopback address, so the TCP port (which names the
		// socket) is free.
		refused(t, "PostgreSQL server (PID", "--listen", fmt.Sprintf("127.0.0.2:%d", f.pg.Port), "--unix-socket", f.pg.SocketDir)
		sameFile(t, sock, before)
		conn, err := pgx.Connect(context.Background(), f.pg.AdminConnString())
		if err != nil {
			t.Fatalf("PostgreSQL's socket no longer works: %v", err)
		}
		conn.Close(context.Background())
	})

	t.Run("another proxy", func(t *testing.T) {
		dir := t.TempDir()
		startProxyCmd(t, env, f.proxyArgs("--listen=", "--unix-socket", dir)...)
		sock := filepath.Join(dir, ".s.PGSQL.5432")
		before, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		refused(t, "lock file", "--listen=", "--unix-socket", dir)
		sameFile(t, sock, before)
		r := runCmd(t, childEnv("PGHOST="+dir, "PGPORT=5432", "PGDATABASE=postgres"), "psql", "-X", "-A", "-t", "-c", "select current_user")
		if r.code != 0 || r.stdout != alice.UPN+"\n" {
			t.Errorf("the first proxy's socket after the second was refused: %+v", r)
		}
	})

	t.Run("live socket without a lock file", func(t *testing.T) {
		dir := t.TempDir()
		sock := filepath.Join(dir, ".s.PGSQL.5432")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		before, _ := os.Lstat(sock)
		refused(t, "already listens", "--listen=", "--unix-socket", dir)
		sameFile(t, sock, before)
	})

	t.Run("not a socket", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, ".s.PGSQL.5432")
		if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
			t.Fatal(err)
		}
		before, _ := os.Lstat(path)
		refused(t, "not a socket", "--listen=", "--unix-socket", dir)
		sameFile(t, path, before)
	})

	t.Run("stale", func(t *testing.T) {
		dir := t.TempDir()
		sock := filepath.Join(dir, ".s.PGSQL.5432")
		// A dead process's lock file and socket.
		dead := exec.Command("true")
		if err := dead.Run(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sock+".lock", []byte(fmt.Sprintf("%d\n", dead.Process.Pid)), 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		p := startProxyCmd(t, env, f.proxyArgs("--listen=", "--unix-socket", dir)...)
		r := runCmd(t, childEnv("PGHOST="+dir, "PGPORT=5432", "PGDATABASE=postgres"), "psql", "-X", "-A", "-t", "-c", "select 1")
		if r.code != 0 {
			t.Errorf("psql over the taken-over socket: %+v", r)
		}
		if pid, err := os.ReadFile(sock + ".lock"); err != nil || !strings.HasPrefix(string(pid), fmt.Sprintf("%d\n", p.cmd.Process.Pid)) {
			t.Errorf("lock file %q, %v; want the proxy's PID", pid, err)
		}
		if code := p.stop(t); code != 0 {
			t.Errorf("exit status %d", code)
		}
		for _, path := range []string{sock, sock + ".lock"} {
			if _, err := os.Lstat(path); !os.IsNotExist(err) {
				t.Errorf("%s left after exit: %v", path, err)
			}
		}
	})
}

// psql whose session the server ends for idle_session_timeout reports
// the same as directly: the FATAL message and the lost connection, at
// once, with exit status 2.
func TestProxyPsqlIdleSessionTimeout(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs()...)
	script := "set idle_session_timeout = '300ms';\n\\! sleep 1\nselect 'after';\n"
	run := func(env []string, args ...string) result {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "psql", append([]string{"-X", "-A", "-t"}, args...)...)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(script)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		_ = cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("psql hung: %s", stderr.String())
		}
		return result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	}
	direct := run(childEnv(), f.pg.AdminConnString())
	proxied := run(p.env("postgres"))
	if direct.code != 2 || !strings.Contains(direct.stderr, "idle-session timeout") {
		t.Fatalf("directly: %+v", direct)
	}
	if proxied.code != direct.code || proxied.stderr != direct.stderr || proxied.stdout != direct.stdout {
		t.Errorf("through the proxy: %+v\ndirectly: %+v", proxied, direct)
	}
}

// --user is the upstream user even when it is the OS user's name, which
// pgx fills in by itself when no user is named (issue 11 item 8).
func TestProxyUserIsOSUser(t *testing.T) {
	needPsql(t)
	me, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	f := newFixture(t)
	if err := f.srv.AddRole(context.Background(), me.Username, alice.ObjectID); err != nil {
		t.Skip(err) // the OS user is the backend's admin
	}
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--user", me.Username)...)
	r := runCmd(t, p.env("postgres"), "psql", "-X", "-A", "-t", "-c", "select current_user")
	if r.code != 0 || r.stdout != me.Username+"\n" {
		t.Errorf("psql through pgentra proxy --user %s: %+v; want current_user %s", me.Username, r, me.Username)
	}
}
