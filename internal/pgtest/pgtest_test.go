package pgtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// login connects with connString and returns current_user and whether the
// session uses TLS.
func login(ctx context.Context, connString string) (user string, ssl bool, err error) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return "", false, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&user, &ssl)
	return user, ssl, err
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

const trickyPassword = `p'a\ss w=rd"` // quotes, backslash, space, '='

func TestTLSPasswordLogin(t *testing.T) {
	t.Parallel()
	s := StartForTest(t)
	ctx := testContext(t)
	if err := s.CreateRole(ctx, "alice", trickyPassword); err != nil {
		t.Fatal(err)
	}

	// verify-full against CAFile, and the server asks for a cleartext
	// password (require_auth=password accepts nothing else).
	user, ssl, err := login(ctx, s.ConnString("alice", trickyPassword, "require_auth=password"))
	if err != nil {
		t.Fatalf("TLS login: %v", err)
	}
	if user != "alice" || !ssl {
		t.Errorf("current_user=%q ssl=%v, want alice over TLS", user, ssl)
	}

	// The server does not offer SCRAM.
	if _, _, err := login(ctx, s.ConnString("alice", trickyPassword, "require_auth=scram-sha-256")); err == nil {
		t.Error("login with require_auth=scram-sha-256 succeeded; the server should ask for a cleartext password")
	}

	// CAPool verifies the certificate for the name "localhost" too.
	cfg, err := pgx.ParseConfig(s.ConnString("alice", trickyPassword, "host=localhost"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig = &tls.Config{RootCAs: s.CAPool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	cfg.Fallbacks = nil
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("TLS login with CAPool to localhost: %v", err)
	}
	conn.Close(ctx)

	// verify-full really verifies: another CA is refused.
	other, err := newTLSFiles()
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(t.TempDir(), "other.crt")
	if err := os.WriteFile(otherCA, other.caCert, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := login(ctx, s.ConnString("alice", trickyPassword, "sslrootcert="+otherCA)); err == nil {
		t.Error("login verifying against an unrelated CA succeeded")
	}

	// Plaintext TCP is deliberately possible.
	if _, ssl, err := login(ctx, s.ConnString("alice", trickyPassword, "sslmode=disable")); err != nil || ssl {
		t.Errorf("plaintext login: ssl=%v err=%v, want a plaintext session", ssl, err)
	}

	// A wrong password is rejected as such.
	_, _, err = login(ctx, s.ConnString("alice", "wrong"))
	if got := sqlState(err); got != "28P01" {
		t.Errorf("wrong password: SQLSTATE %q (%v), want 28P01", got, err)
	}

	if log := s.Log(); !strings.Contains(log, "connection authorized: user=alice") {
		t.Errorf("server log lacks alice's connection:\n%s", log)
	}
}

func TestSetHBA(t *testing.T) {
	t.Parallel()
	s := StartForTest(t)
	ctx := testContext(t)
	if err := s.CreateRole(ctx, "bob", "secret"); err != nil {
		t.Fatal(err)
	}
	bob := s.ConnString("bob", "secret")
	if _, _, err := login(ctx, bob); err != nil {
		t.Fatalf("login before SetHBA: %v", err)
	}

	if err := s.SetHBA(ctx, "hostssl all all 127.0.0.1/32 reject"); err != nil {
		t.Fatal(err)
	}
	_, _, err := login(ctx, bob)
	if got := sqlState(err); got != "28000" {
		t.Errorf("login after reject rule: SQLSTATE %q (%v), want 28000", got, err)
	}
	if err := s.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("admin connection after SetHBA: %v", err)
	}
	hba, err := os.ReadFile(filepath.Join(s.DataDir, "pg_hba.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if lines := nonComment(string(hba)); len(lines) != 2 || lines[0] != adminLine {
		t.Errorf("pg_hba.conf lines = %q, want the admin line then the reject line", lines)
	}

	if err := s.SetHBA(ctx, DefaultHBA()...); err != nil {
		t.Fatal(err)
	}
	if _, _, err := login(ctx, bob); err != nil {
		t.Errorf("login after restoring the default rules: %v", err)
	}

	// A line PostgreSQL cannot parse is reported and the file put back.
	err = s.SetHBA(ctx, "hostssl all all 127.0.0.1/32 no-such-method")
	if err == nil || !strings.Contains(err.Error(), "no-such-method") {
		t.Errorf("SetHBA with an invalid method: %v, want an error naming it", err)
	}
	if again, _ := os.ReadFile(filepath.Join(s.DataDir, "pg_hba.conf")); string(again) != string(hbaContent(defaultHBA)) {
		t.Errorf("pg_hba.conf after a rejected SetHBA:\n%s", again)
	}
	if _, _, err := login(ctx, bob); err != nil {
		t.Errorf("login after a rejected SetHBA: %v", err)
	}
	if err := s.SetHBA(ctx, "host all all 127.0.0.1/32 trust\nlocal all all trust"); err == nil {
		t.Error("SetHBA accepted a line with a line break")
	}
}

func nonComment(conf string) []string {
	var lines []string
	for l := range strings.SplitSeq(conf, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

func TestRolesAndQuoting(t *testing.T) {
	t.Parallel()
	s := StartForTest(t)
	ctx := testContext(t)

	const upn = "alice.smith@contoso.onmicrosoft.com"
	if err := s.CreateRole(ctx, upn, trickyPassword); err != nil {
		t.Fatal(err)
	}
	if user, _, err := login(ctx, s.ConnString(upn, trickyPassword)); err != nil || user != upn {
		t.Fatalf("UPN login: user=%q err=%v", user, err)
	}
	if err := s.SetPassword(ctx, upn, "n3w\\'pass"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := login(ctx, s.ConnString(upn, trickyPassword)); sqlState(err) != "28P01" {
		t.Errorf("old password after SetPassword: %v, want 28P01", err)
	}
	if _, _, err := login(ctx, s.ConnString(upn, "n3w\\'pass")); err != nil {
		t.Errorf("new password after SetPassword: %v", err)
	}

	const odd = `we"ird'role`
	if err := s.CreateRole(ctx, odd, "x"); err != nil {
		t.Fatal(err)
	}
	if user, _, err := login(ctx, s.ConnString(odd, "x")); err != nil || user != odd {
		t.Errorf("odd role login: user=%q err=%v", user, err)
	}

	// Errors name the role, never the password.
	err := s.CreateRole(ctx, upn, "do-not-print-me")
	if err == nil || sqlState(err) != "42710" || strings.Contains(err.Error(), "do-not-print-me") || !strings.Contains(err.Error(), upn) {
		t.Errorf("duplicate CreateRole: %v", err)
	}
	if strings.Contains(s.Log(), "do-not-print-me") {
		t.Error("the server log contains a password")
	}
	if err := s.CreateRole(ctx, strings.Repeat("x", 64), "x"); err == nil {
		t.Error("CreateRole accepted a 64-byte name PostgreSQL would truncate")
	}

	// quoteLiteral means the same string whatever standard_conforming_strings is.
	conn, err := s.Admin().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, scs := range []string{"on", "off"} {
		if _, err := conn.Exec(ctx, "SET standard_conforming_strings = "+scs); err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"", "plain", "it's", `back\slash`, `\'`, `''\\`, `E'x'`, "tab\there", "ünï€ode"} {
			// Raw simple protocol: pgx itself refuses standard_conforming_strings=off.
			res, err := conn.Conn().PgConn().Exec(ctx, "SELECT "+quoteLiteral(v)).ReadAll()
			got := ""
			if err == nil && len(res) == 1 && len(res[0].Rows) == 1 {
				got = string(res[0].Rows[0][0])
			}
			if err != nil || got != v {
				t.Errorf("standard_conforming_strings=%s: %s read back as %q (%v), want %q", scs, quoteLiteral(v), got, err, v)
			}
		}
	}
}

func TestStopRemovesEverything(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, err := Start(ctx, Options{MaxConnections: 20, Logf: t.Logf})
	SkipOrFail(t, err)
	var maxConns int
	if err := s.Admin().QueryRow(ctx, "SELECT current_setting('max_connections')::int").Scan(&maxConns); err != nil || maxConns != 20 {
		t.Errorf("max_connections = %d (%v), want 20", maxConns, err)
	}
	if os.Geteuid() == 0 {
		checkOwnership(t, s)
	}
	if len(s.SocketDir)+len("/.s.PGSQL.65535") >= 100 {
		t.Errorf("socket dir %q too long", s.SocketDir)
	}

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{s.DataDir, s.SocketDir, s.CAFile, s.root} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Stop (%v)", p, err)
		}
	}
	if c, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after Stop", s.Addr())
	}
	if err := syscall.Kill(s.proc.cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postmaster still exists after Stop: kill 0 = %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if !strings.Contains(s.Log(), "database system is shut down") {
		t.Errorf("Log after Stop lacks the shutdown:\n%s", s.Log())
	}
}

func checkOwnership(t *testing.T, s *Server) {
	t.Helper()
	owner := func(p string) (uint32, os.FileMode) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Uid, fi.Mode().Perm()
	}
	if uid, _ := owner(s.DataDir); uid != s.runAs.uid {
		t.Errorf("data dir owned by uid %d, want the postgres user %d", uid, s.runAs.uid)
	}
	if uid, mode := owner(filepath.Join(s.DataDir, "server.key")); uid != s.runAs.uid || mode != 0o600 {
		t.Errorf("server.key uid %d mode %v, want %d 0600", uid, mode, s.runAs.uid)
	}
	if _, mode := owner(s.CAFile); mode != 0o644 {
		t.Errorf("CA file mode %v, want 0644", mode)
	}
}

func TestStopAfterServerDied(t *testing.T) {
	t.Parallel()
	s, err := Start(testContext(t), Options{Logf: t.Logf})
	SkipOrFail(t, err)
	if err := syscall.Kill(s.proc.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.proc.done
	err = s.Stop()
	if err == nil || !strings.Contains(err.Error(), "exited before Stop") {
		t.Errorf("Stop after the server died: %v, want an error saying so", err)
	}
	if _, err := os.Stat(s.root); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop (%v)", s.root, err)
	}
}

// Not parallel: it replaces findBinDir and sets the environment.
func TestNoBinaries(t *testing.T) {
	empty := t.TempDir()
	saved := findBinDir
	t.Cleanup(func() { findBinDir = saved })
	findBinDir = binSearch{getenv: func(k string) string {
		if k == "PG_BIN" {
			return empty
		}
		return ""
	}}.find

	_, err := Start(testContext(t), Options{})
	if !errors.Is(err, ErrNoBinaries) || !strings.Contains(err.Error(), empty) {
		t.Fatalf("Start with PG_BIN=%s: %v, want ErrNoBinaries naming the directory", empty, err)
	}

	t.Setenv(RequireEnv, "")
	tb := &fakeTB{}
	SkipOrFail(tb, err)
	if !tb.skipped || tb.failed {
		t.Errorf("SkipOrFail(ErrNoBinaries): skipped=%v failed=%v, want a skip", tb.skipped, tb.failed)
	}
	tb = &fakeTB{}
	if StartForTest(tb) != nil || !tb.skipped {
		t.Errorf("StartForTest without binaries: skipped=%v, want a skip", tb.skipped)
	}

	t.Setenv(RequireEnv, "1")
	if !Required() {
		t.Error("Required() = false with ENTRAAUTH_REQUIRE_PG=1")
	}
	tb = &fakeTB{}
	SkipOrFail(tb, err)
	if tb.skipped || !tb.failed || !strings.Contains(tb.msg, RequireEnv) {
		t.Errorf("SkipOrFail(ErrNoBinaries) with %s=1: skipped=%v failed=%v msg=%q, want a failure", RequireEnv, tb.skipped, tb.failed, tb.msg)
	}
}

func TestSkipOrFailOtherErrors(t *testing.T) {
	t.Parallel()
	tb := &fakeTB{}
	SkipOrFail(tb, nil)
	if tb.skipped || tb.failed {
		t.Error("SkipOrFail(nil) skipped or failed")
	}
	tb = &fakeTB{}
	SkipOrFail(tb, errors.New("initdb: boom"))
	if tb.skipped || !tb.failed || !strings.Contains(tb.msg, "boom") {
		t.Errorf("SkipOrFail(other error): skipped=%v failed=%v msg=%q, want a failure", tb.skipped, tb.failed, tb.msg)
	}
}

// fakeTB records Skip and Fatal instead of ending the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper()                       {}
func (f *fakeTB) Logf(string, ...any)           {}
func (f *fakeTB) Cleanup(func())                { f.failed = true; f.msg = "Cleanup registered" }
func (f *fakeTB) Skipf(format string, a ...any) { f.skipped = true; f.msg = fmt.Sprintf(format, a...) }
func (f *fakeTB) Fatalf(format string, a ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, a...)
}
func (f *fakeTB) Fatal(a ...any) { f.failed = true; f.msg = fmt.Sprint(a...) }

// Not parallel: it replaces pickPort.
func TestPortTakenRetries(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := uint16(taken.Addr().(*net.TCPAddr).Port)
	saved := pickPort
	t.Cleanup(func() { pickPort = saved })
	calls := 0
	pickPort = func() (uint16, error) {
		calls++
		if calls == 1 {
			return takenPort, nil
		}
		return saved()
	}

	s := StartForTest(t)
	if calls < 2 || s.Port == takenPort {
		t.Errorf("port picked %d times, server on %d (taken: %d); want a retry on another port", calls, s.Port, takenPort)
	}
	if err := s.Exec(testContext(t), "SELECT 1"); err != nil {
		t.Error(err)
	}
}
