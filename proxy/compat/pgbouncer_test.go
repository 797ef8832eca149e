package compat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/proxy"
)

// A self-hosted PgBouncer with Entra tokens (README): many clients →
// Debian's real pgbouncer in transaction mode → pgentra proxy on a unix
// socket → the Entra emulator over verified TLS, which checks each
// login's token the way Azure does (signature, audience, expiry, oid).
// Tokens live a few seconds and pgbouncer replaces its server connections
// every two seconds (server_lifetime), so each replacement is a new
// upstream login that only succeeds with a current token. 200 clients
// run queries for 15 seconds: not one may fail, the server must refuse no
// login, and it must have seen several tokens over many logins.
func TestPgbouncerTransactionPoolingRotatingTokens(t *testing.T) {
	const (
		clients        = 200
		poolSize       = 10
		serverLifetime = 2 * time.Second
		// Tokens this short are used until a tenth of their life before
		// expiry, and the emulator allows 1 s of clock skew: 1.8 s from a
		// token's last hand-out to the server's check. With 4 s tokens
		// (1.4 s), a login slowed by -race on a loaded 2-core machine
		// could reach the server after the token expired; an hour-long
		// token has 30 s.
		tokenLife     = 8 * time.Second
		runFor        = 15 * time.Second
		localPassword = "local-app-password" // pgbouncer's own client login, not Entra
	)
	bin := needPgbouncer(t)
	pg := sharedPG.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss, BackendDSN: pg.AdminConnString(), Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	alice := entratest.User("pgbouncer-alice@contoso.com")
	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		t.Fatal(err)
	}
	cred := entratest.NewCredential(iss, alice)
	cred.SetLifetime(tokenLife)

	// pgentra proxy: one TokenSource, upstream over verified TLS, on a
	// unix socket only pgbouncer's OS user can use.
	logs := &lockedBuffer{}
	px, err := proxy.New(proxy.Config{
		Upstream:    fmt.Sprintf("host=%s port=%d sslmode=verify-full sslrootcert=%s", srv.Host(), srv.Port(), srv.CAFile()),
		TokenSource: entraauth.NewTokenSource(cred, entraauth.WithRequireVerifiedTLS()),
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runAs := pgbouncerUser(t)
	socketDir, proxyPort := proxySocket(t, px, runAs)
	t.Cleanup(func() {
		if strings.Contains(logs.String(), "eyJ") {
			t.Error("the proxy logged something like a token")
		}
		if t.Failed() {
			t.Logf("proxy log (tail):\n%s", tailString(logs.String(), 30))
		}
	})

	b := startPgbouncer(t, bin, runAs, fmt.Sprintf(`[databases]
app = host=%s port=%d dbname=postgres user=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %%d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %%s
pool_mode = transaction
max_client_conn = %d
default_pool_size = %d
server_lifetime = %d
`, socketDir, proxyPort, quoteIni(alice.UPN), clients+10, poolSize, int(serverLifetime.Seconds())),
		fmt.Sprintf("%q %q\n", "app", localPassword))

	// pgbouncer 1.18 keeps no prepared statements across transactions:
	// pgx's unnamed statements (exec mode) work in transaction mode.
	connString := fmt.Sprintf("host=127.0.0.1 port=%d dbname=app user=app password=%s sslmode=disable default_query_exec_mode=exec connect_timeout=30",
		b.port, localPassword)
	var (
		queries, failures atomic.Int64
		perClient         [clients]int64
		errMu             sync.Mutex
		errs              []error
		wg                sync.WaitGroup
	)
	fail := func(err error) {
		failures.Add(1)
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 5 {
			errs = append(errs, err)
		}
	}
	runCtx, stop := context.WithTimeout(ctx, runFor)
	defer stop()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, connString)
			if err != nil {
				fail(fmt.Errorf("client %d: connect: %w", c, err))
				return
			}
			defer conn.Close(context.Background())
			for i := 0; runCtx.Err() == nil; i++ {
				// A round that waits on a server connection pgbouncer
				// cannot open fails in time, not at the test's end.
				roundCtx, cancelRound := context.WithTimeout(ctx, 20*time.Second)
				err := clientRound(roundCtx, conn, i, alice.UPN)
				cancelRound()
				if err != nil {
					fail(fmt.Errorf("client %d, round %d: %w", c, i, err))
					return
				}
				queries.Add(1)
				perClient[c]++
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of the clients failed (%d rounds done); want 0", n, queries.Load())
	}
	for c, n := range perClient {
		if n == 0 {
			t.Errorf("client %d ran no query", c)
		}
	}

	st := srv.Stats()
	opened := strings.Count(logs.String(), "pgentra proxy: session opened")
	t.Logf("%d rounds by %d clients; upstream: %d logins, %d distinct tokens, %d token fetches, rejected %v; proxy sessions %d",
		queries.Load(), clients, st.Accepted, st.DistinctTokens, cred.Calls(), st.Rejected, opened)
	if st.TotalRejected() != 0 || st.PlaintextPasswords != 0 {
		t.Errorf("upstream refused logins %v, plaintext passwords %d; want none", st.Rejected, st.PlaintextPasswords)
	}
	// Tokens live 8 s, refreshed from 3.2 s on, over 15 s: at least 3 of them logged in.
	if st.DistinctTokens < 3 {
		t.Errorf("upstream saw %d distinct tokens; want at least 3 as they rotate", st.DistinctTokens)
	}
	// Server connections live 2 s over 15 s: pgbouncer must have logged
	// in again and again, each time through the proxy.
	if st.Accepted < 3*poolSize {
		t.Errorf("upstream logins: %d; want at least %d as pgbouncer replaces its server connections", st.Accepted, 3*poolSize)
	}
	if int64(opened) != st.Accepted {
		t.Errorf("the proxy opened %d sessions, the server accepted %d logins; want one login per pgbouncer server connection", opened, st.Accepted)
	}
}

// clientRound is one client's round: a query, or every third round a
// transaction of two statements, as the principal's role.
func clientRound(ctx context.Context, conn *pgx.Conn, i int, wantUser string) error {
	var (
		user string
		n    int
	)
	if i%3 != 2 {
		if err := conn.QueryRow(ctx, "select current_user, $1::int", i).Scan(&user, &n); err != nil {
			return err
		}
	} else {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx) //nolint:errcheck // after Commit, a no-op
		if _, err := tx.Exec(ctx, "set local application_name = 'pgbouncer-test'"); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "select current_user, $1::int + length(current_setting('application_name')) - 14", i).Scan(&user, &n); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	if user != wantUser || n != i {
		return fmt.Errorf("got (%q, %d); want (%q, %d)", user, n, wantUser, i)
	}
	return nil
}

// needPgbouncer returns the path of Debian's pgbouncer, skipping the test
// when it is missing (failing with ENTRAAUTH_REQUIRE_PG=1, as in CI).
func needPgbouncer(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	if os.Getenv("ENTRAAUTH_REQUIRE_PG") == "1" {
		t.Fatal("pgbouncer is required (ENTRAAUTH_REQUIRE_PG=1): Debian: apt-get install pgbouncer")
	}
	t.Skip("pgbouncer not installed (Debian: apt-get install pgbouncer)")
	return ""
}

// osUser is the OS user pgbouncer runs as.
type osUser struct{ uid, gid int }

// pgbouncerUser is the OS user to run pgbouncer as: this one, or, as
// root (which pgbouncer refuses to run as), "postgres", as
// bench/proxy/main.go and internal/pgtest do. Nil means this user.
func pgbouncerUser(t *testing.T) *osUser {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal("pgbouncer refuses to run as root and there is no OS user postgres:", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	return &osUser{uid: uid, gid: gid}
}

// chown gives path to u (nothing to do when u is nil).
func (u *osUser) chown(t *testing.T, path string) {
	t.Helper()
	if u == nil {
		return
	}
	if err := os.Chown(path, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
}

// proxySocket serves px on a unix socket DIR/.s.PGSQL.PORT that only
// runAs can use (mode 0600, as pgentra proxy --unix-socket makes it),
// until the test ends.
func proxySocket(t *testing.T, px *proxy.Server, runAs *osUser) (dir string, port int) {
	t.Helper()
	// A short directory: a unix socket path has a limit of about 100 bytes.
	dir, err := os.MkdirTemp("", "pgb-proxy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	port = 6543
	sock := filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		t.Fatal(err)
	}
	runAs.chown(t, sock)
	done := make(chan error, 1)
	go func() { done <- px.Serve(l) }()
	t.Cleanup(func() {
		if err := px.Close(); err != nil {
			t.Error(err)
		}
		if err := <-done; err != proxy.ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return dir, port
}

// runningPgbouncer is a pgbouncer child process.
type runningPgbouncer struct {
	port int
	dir  string
	done chan struct{} // closed when it has exited
}

// startPgbouncer runs pgbouncer with the configuration ini (its
// listen_port and auth_file left as %d and %s to fill in) and the
// userlist, as runAs, and waits until it accepts connections. On every
// path out of the test it is killed, and its directory removed.
func startPgbouncer(t *testing.T, bin string, runAs *osUser, ini, userlist string) *runningPgbouncer {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	runAs.chown(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	auth := filepath.Join(dir, "userlist.txt")
	if err := os.WriteFile(auth, []byte(userlist), 0o600); err != nil {
		t.Fatal(err)
	}
	runAs.chown(t, auth)
	logFile := filepath.Join(dir, "pgbouncer.log")
	cfg := filepath.Join(dir, "pgbouncer.ini")
	ini = fmt.Sprintf(ini, port, auth) + fmt.Sprintf("logfile = %s\npidfile = %s\n", logFile, filepath.Join(dir, "pgbouncer.pid"))
	if err := os.WriteFile(cfg, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
	runAs.chown(t, cfg)

	cmd := exec.Command(bin, cfg)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if runAs != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(runAs.uid), Gid: uint32(runAs.gid), Groups: []uint32{}}
	}
	b := &runningPgbouncer{port: port, dir: dir, done: make(chan struct{})}
	// Pdeathsig fires when the thread that started the child exits, so
	// the child is started and waited for on one locked thread.
	started := make(chan error, 1)
	go func() {
		defer close(b.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// SIGTERM is pgbouncer's immediate shutdown; SIGKILL if it hangs.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-b.done
			t.Error("pgbouncer did not exit on SIGTERM")
		}
		if t.Failed() {
			log, _ := os.ReadFile(logFile)
			t.Logf("pgbouncer log (tail):\n%s", tailString(string(log), 30))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			return b
		}
		select {
		case <-b.done:
			t.Fatal("pgbouncer exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("pgbouncer did not start listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quoteIni quotes a value of a pgbouncer [databases] line.
func quoteIni(s string) string { return "'" + s + "'" }

// tailString returns the last n lines of s.
func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockedBuffer collects log lines written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
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
