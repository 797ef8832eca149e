// Package pgtest starts a real, throwaway PostgreSQL server for tests.
//
// Start finds the server binaries (PG_BIN, `pg_config --bindir`,
// /usr/lib/postgresql/*/bin, PATH), runs initdb in a fresh temp directory
// (as the "postgres" OS user when running as root), and runs `postgres`
// as a child process on a free loopback port with TLS on, a unix socket
// for the superuser, and password authentication for everyone else. Stop
// shuts it down and removes everything. If the test binary is killed, the
// kernel kills the server with it (Pdeathsig), and the next Start removes
// the files it left.
//
// Tests use StartForTest, which skips when no binaries are installed unless
// ENTRAAUTH_REQUIRE_PG=1.
package pgtest

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Server is a running throwaway PostgreSQL server. Its fields are read-only.
type Server struct {
	Host      string // "127.0.0.1"
	Port      uint16 // TCP port on Host
	SocketDir string // directory holding the unix socket (short path, < 100 bytes)
	CAFile    string // PEM file of the CA that signed the server certificate (SANs: localhost, 127.0.0.1, ::1)
	CAPool    *x509.CertPool
	DataDir   string
	BinDir    string
	Version   string // major version, from the data directory's PG_VERSION (e.g. "15")

	root    string        // temp root holding everything below
	logPath string        // server log (postgres' stderr)
	logFile *os.File      // our handle, passed to postgres as stdout/stderr
	lock    *os.File      // flock'ed for the server's lifetime, see stale.go
	runAs   *serverUser   // nil: the server runs as the current user
	proc    *process      // the postmaster
	pool    *pgxpool.Pool // superuser pool over the unix socket
	logf    func(string, ...any)

	hbaMu    sync.Mutex // serializes SetHBA
	stopOnce sync.Once
	stopErr  error
	logMu    sync.Mutex // guards finalLog and stopped
	finalLog string     // log content captured by Stop
	stopped  bool
}

// Options configures Start. The zero value is fine.
type Options struct {
	// MaxConnections is the server's max_connections; default 200.
	MaxConnections int
	// Logf, if set, receives progress and diagnostic messages.
	Logf func(format string, args ...any)
}

const (
	readyTimeout    = 60 * time.Second
	stopTimeout     = 10 * time.Second
	startAttempts   = 5
	adminLine       = "local all postgres trust"
	maxSocketPath   = 100
	socketFileSlack = len("/.s.PGSQL.65535")
)

// defaultHBA is the non-admin part of pg_hba.conf after Start. The server
// asks for a cleartext password (like Azure), over TLS or, deliberately,
// plaintext TCP on 127.0.0.1, so tests can prove a client never tries it.
var defaultHBA = []string{
	"local all all password",
	"hostssl all all 127.0.0.1/32 password",
	"hostssl all all ::1/128 password",
	"hostnossl all all 127.0.0.1/32 password",
}

// DefaultHBA returns the non-admin pg_hba.conf lines a new server has, for
// passing to SetHBA to undo earlier changes.
func DefaultHBA() []string { return append([]string(nil), defaultHBA...) }

// Start initializes and starts a new server. It returns an error wrapping
// ErrNoBinaries when no PostgreSQL server binaries are found. ctx bounds
// the whole start; the server itself lives until Stop.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	began := time.Now()
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = 200
	}
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	runAs, err := currentServerUser()
	if err != nil {
		return nil, err
	}
	bases := baseCandidates()
	removeStaleRoots(logf, bases...)
	base, err := chooseBase(bases, runAs)
	if err != nil {
		return nil, err
	}

	s := &Server{Host: "127.0.0.1", BinDir: binDir, runAs: runAs, logf: logf}
	defer func() {
		if err != nil {
			s.stopOnce.Do(func() { s.stopErr = s.stop() })
		}
	}()
	if err := s.prepare(ctx, base, opts); err != nil {
		return nil, err
	}
	logf("pgtest: initdb in %s done after %v", s.DataDir, time.Since(began).Round(time.Millisecond))

	if err := s.launch(ctx); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(s.AdminConnString())
	if err != nil {
		return nil, fmt.Errorf("pgtest: admin pool config: %w", err)
	}
	cfg.MaxConns = 4
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("pgtest: admin pool: %w", err)
	}
	logf("pgtest: PostgreSQL %s from %s ready on %s:%d after %v", s.Version, binDir, s.Host, s.Port, time.Since(began).Round(time.Millisecond))
	return s, nil
}

// prepare creates the temp root, runs initdb and writes certificates and
// configuration.
func (s *Server) prepare(ctx context.Context, base string, opts Options) error {
	root, err := os.MkdirTemp(base, rootPrefix)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	s.root = root
	if err := os.Chmod(root, 0o755); err != nil { // traversable for the server user
		return fmt.Errorf("pgtest: %w", err)
	}
	if s.lock, err = lockRoot(root); err != nil {
		return fmt.Errorf("pgtest: lock %s: %w", root, err)
	}
	s.DataDir = filepath.Join(root, "data")
	s.SocketDir = filepath.Join(root, "sock")
	s.CAFile = filepath.Join(root, "ca.crt")
	s.logPath = filepath.Join(root, "postgres.log")
	if err := s.mkdir(s.DataDir, 0o700); err != nil {
		return err
	}
	if err := s.mkdir(s.SocketDir, 0o755); err != nil {
		return err
	}

	initdb := s.command(ctx, filepath.Join(s.BinDir, "initdb"),
		"-D", s.DataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, tail(string(out), 30))
	}
	if v, err := os.ReadFile(filepath.Join(s.DataDir, "PG_VERSION")); err == nil {
		s.Version = strings.TrimSpace(string(v))
	}

	certs, err := newTLSFiles()
	if err != nil {
		return fmt.Errorf("pgtest: certificates: %w", err)
	}
	s.CAPool = certs.pool
	if err := os.WriteFile(s.CAFile, certs.caCert, 0o644); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := s.writeServerFile("server.crt", certs.serverCert, 0o644); err != nil {
		return err
	}
	if err := s.writeServerFile("server.key", certs.serverKey, 0o600); err != nil {
		return err
	}
	if err := s.writeServerFile("pg_hba.conf", hbaContent(defaultHBA), 0o600); err != nil {
		return err
	}

	conf := []string{
		"",
		"# entraauth pgtest",
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = " + confQuote(s.SocketDir),
		"max_connections = " + strconv.Itoa(opts.MaxConnections),
		"shared_buffers = 32MB",
		"huge_pages = off",
		"ssl = on",
		"ssl_cert_file = 'server.crt'",
		"ssl_key_file = 'server.key'",
		"password_encryption = 'scram-sha-256'",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"logging_collector = off",
		"log_destination = 'stderr'",
		"log_connections = on",
		"log_disconnections = off",
		"log_line_prefix = '%m [%p] %q%u@%d '",
		"lc_messages = 'C'",
		// Statements can carry passwords (tokens): never log them.
		"log_min_error_statement = panic",
		"",
	}
	f, err := os.OpenFile(filepath.Join(s.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = f.WriteString(strings.Join(conf, "\n"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: postgresql.conf: %w", err)
	}

	s.logFile, err = os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// launch starts the postmaster on a free port and waits until it accepts
// connections, retrying with another port if the chosen one was taken
// between picking and binding.
func (s *Server) launch(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		port, err := pickPort()
		if err != nil {
			return fmt.Errorf("pgtest: pick a port: %w", err)
		}
		s.Port = port
		logStart := fileSize(s.logPath)
		cmd := s.command(context.Background(), filepath.Join(s.BinDir, "postgres"),
			"-D", s.DataDir, "-p", strconv.Itoa(int(port)))
		cmd.Stdout, cmd.Stderr = s.logFile, s.logFile
		if s.proc, err = startProcess(cmd); err != nil {
			return fmt.Errorf("pgtest: start postgres: %w", err)
		}
		err = s.waitReady(ctx)
		if err == nil {
			return nil
		}
		s.proc.stop(stopTimeout)
		log := s.readLog()
		if int64(len(log)) >= logStart {
			log = log[logStart:]
		}
		if attempt < startAttempts && ctx.Err() == nil && portTaken(log) {
			s.logf("pgtest: port %d taken, retrying", port)
			continue
		}
		return fmt.Errorf("pgtest: %w; server log:\n%s", err, tail(log, 30))
	}
}

func portTaken(log string) bool {
	return strings.Contains(log, "Address already in use") || strings.Contains(log, "could not create any TCP/IP sockets")
}

// waitReady polls a superuser connection over the unix socket until it
// succeeds, the postmaster exits, ctx ends or readyTimeout passes.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	t := time.NewTimer(0)
	defer t.Stop()
	var lastErr error
	for {
		select {
		case <-s.proc.done:
			return fmt.Errorf("postgres exited during startup: %v", s.proc.err)
		case <-ctx.Done():
			return fmt.Errorf("server not ready: %w (last attempt: %v)", ctx.Err(), lastErr)
		case <-t.C:
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, s.AdminConnString())
		ccancel()
		if err == nil {
			return conn.Close(ctx)
		}
		lastErr = err
		t.Reset(15 * time.Millisecond)
	}
}

// Stop shuts the server down (fast shutdown: SIGINT, then SIGKILL after
// 10 s), waits for it to exit and removes all its files. It is idempotent
// and safe to call concurrently; later calls return the first call's result.
// It reports an error if the server had died before Stop.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Server) stop() error {
	var errs []error
	if s.pool != nil {
		s.pool.Close()
	}
	if s.proc != nil {
		select {
		case <-s.proc.done:
			errs = append(errs, fmt.Errorf("pgtest: server had exited before Stop: %v; server log:\n%s", s.proc.err, tail(s.readLog(), 30)))
		default:
			if !s.proc.stop(stopTimeout) {
				errs = append(errs, errors.New("pgtest: server did not stop on SIGINT within 10s; killed"))
			}
		}
	}
	s.logMu.Lock()
	if s.logPath != "" {
		s.finalLog = s.readLog()
	}
	s.stopped = true
	s.logMu.Unlock()
	if s.logFile != nil {
		s.logFile.Close()
	}
	if s.root != "" {
		if err := os.RemoveAll(s.root); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: remove %s: %w", s.root, err))
		}
	}
	if s.lock != nil {
		s.lock.Close() // after RemoveAll: releases the lock
	}
	return errors.Join(errs...)
}

// ConnString returns a key/value connection string for user and password
// over TCP with verified TLS:
//
//	host=127.0.0.1 port=N dbname=postgres user=U [password=P] sslmode=verify-full sslrootcert=<CAFile> connect_timeout=10
//
// user is left out when empty (pgx then uses the OS user name), password
// when empty. Each extra item is "key=value" with the value taken
// literally (it is quoted here; do not quote it yourself); items are
// appended, and in pgx a later key wins over an earlier one. An item
// without "=" is appended verbatim.
func (s *Server) ConnString(user, password string, extra ...string) string {
	var b strings.Builder
	add := func(k, v string) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteConnValue(v))
	}
	add("host", s.Host)
	add("port", strconv.Itoa(int(s.Port)))
	add("dbname", "postgres")
	if user != "" {
		add("user", user)
	}
	if password != "" {
		add("password", password)
	}
	add("sslmode", "verify-full")
	add("sslrootcert", s.CAFile)
	add("connect_timeout", "10")
	for _, kv := range extra {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			b.WriteByte(' ')
			b.WriteString(kv)
			continue
		}
		add(strings.TrimSpace(k), v)
	}
	return b.String()
}

// AdminConnString returns a connection string for the superuser "postgres"
// over the unix socket (trust authentication, no password, no TLS).
func (s *Server) AdminConnString() string {
	return "host=" + quoteConnValue(s.SocketDir) + " port=" + strconv.Itoa(int(s.Port)) +
		" dbname=postgres user=postgres sslmode=disable connect_timeout=10"
}

// Addr returns "127.0.0.1:port", the server's TCP address.
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(int(s.Port)))
}

// Admin returns the superuser connection pool (unix socket). It is closed
// by Stop.
func (s *Server) Admin() *pgxpool.Pool { return s.pool }

// Log returns the server log so far (connections are logged, disconnections
// and statements are not). After Stop it returns the log as it was at Stop.
func (s *Server) Log() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if s.stopped {
		return s.finalLog
	}
	return s.readLog()
}

func (s *Server) readLog() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// ---- processes and users ----

// serverUser is the OS user the server runs as when we are root
// (PostgreSQL refuses to run as root).
type serverUser struct {
	name     string
	uid, gid uint32
}

func currentServerUser() (*serverUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to run as root, but the OS user \"postgres\" to run it as was not found (%v); create that user or run the tests as a non-root user", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgtest: OS user \"postgres\" has non-numeric uid/gid %q/%q", u.Uid, u.Gid)
	}
	return &serverUser{name: u.Username, uid: uint32(uid), gid: uint32(gid)}, nil
}

// command builds an exec.Cmd for a server binary: run as the server user,
// in its own process group, killed with the test binary (Pdeathsig), with
// a clean C-locale environment free of PG* variables.
func (s *Server) command(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = s.root
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.runAs != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: s.runAs.uid, Gid: s.runAs.gid, Groups: []uint32{}}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// process is a started child and the goroutine waiting for it.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, valid after done is closed
}

// startProcess starts cmd on a goroutine locked to its OS thread for the
// child's whole life: Pdeathsig fires when the *thread* that forked the
// child exits, and the Go runtime may retire threads.
func startProcess(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		defer close(p.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			p.err = err
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
	}()
	if err := <-started; err != nil {
		<-p.done
		return nil, err
	}
	return p, nil
}

// stop sends SIGINT (PostgreSQL's fast shutdown) and waits; after timeout
// it sends SIGKILL to the process group and waits again. It reports
// whether the process exited before the timeout.
func (p *process) stop(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return false
}

// ---- files ----

func (s *Server) chown(path string) error {
	if s.runAs == nil {
		return nil
	}
	if err := os.Chown(path, int(s.runAs.uid), int(s.runAs.gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

func (s *Server) mkdir(path string, perm os.FileMode) error {
	if err := os.Mkdir(path, perm); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Chmod(path, perm); err != nil { // undo the umask
		return fmt.Errorf("pgtest: %w", err)
	}
	return s.chown(path)
}

// writeServerFile atomically replaces a file in the data directory, owned
// by the server user.
func (s *Server) writeServerFile(name string, data []byte, perm os.FileMode) error {
	path := filepath.Join(s.DataDir, name)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := s.chown(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// baseCandidates lists the directories a temp root may go in, preferred
// first.
func baseCandidates() []string {
	bases := []string{os.TempDir()}
	if bases[0] != "/tmp" {
		bases = append(bases, "/tmp")
	}
	return bases
}

// chooseBase picks the first base that exists, is short enough for a unix
// socket path below it, has no characters that need quoting in
// postgresql.conf lists, and (when the server runs as another user) is
// traversable by everyone.
func chooseBase(bases []string, runAs *serverUser) (string, error) {
	// root + "/entraauth-pgtest-NNNNNNNNNN/sock/.s.PGSQL.65535"
	need := len("/"+rootPrefix+"1234567890/sock") + socketFileSlack
	for _, base := range bases {
		abs, err := filepath.Abs(base)
		if err != nil || len(abs)+need >= maxSocketPath || strings.ContainsAny(abs, ",' \\\"") {
			continue
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			continue
		}
		if runAs != nil && !traversableByAll(abs) {
			continue
		}
		return abs, nil
	}
	why := "an existing directory with a short, plain path"
	if runAs != nil {
		why += ", traversable by the OS user " + strconv.Quote(runAs.name)
	}
	return "", fmt.Errorf("pgtest: no usable temp directory among %q (needs %s)", bases, why)
}

func traversableByAll(dir string) bool {
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// pickPort chooses the port for the next start attempt; tests replace it.
var pickPort = freePort

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort() (uint16, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return uint16(port), nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
