package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// testCtx bounds a test step; it is a hang guard, not a timing assertion.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(testCtx(t), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// The client's database and startup parameters go upstream; the user is
// the token's principal whatever the client says; the token goes over
// verified TLS and appears in no log line.
func TestProxySession(t *testing.T) {
	f := newFixture(t, Config{})
	conn := connect(t, f.connString("user=someone-else", "application_name=proxy-test", "options='-c search_path=proxy_path'"))

	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q, want the token's principal %q", got, alice.UPN)
	}
	if got := queryString(t, conn, "select current_setting('application_name')"); got != "proxy-test" {
		t.Errorf("application_name = %q", got)
	}
	if got := queryString(t, conn, "select current_setting('search_path')"); got != "proxy_path" {
		t.Errorf("search_path from options = %q", got)
	}
	// The upstream's parameter statuses reached the client.
	if got := conn.PgConn().ParameterStatus("server_version"); got == "" {
		t.Error("no server_version parameter status")
	}
	// The client's key carries the backend's real process ID, so a
	// client recognises its own notifications by their sender's PID.
	if pid := queryString(t, conn, "select pg_backend_pid()::text"); pid != itoa(conn.PgConn().PID()) {
		t.Errorf("the client's key has process ID %d; the backend's is %s", conn.PgConn().PID(), pid)
	}
	if _, err := conn.Exec(testCtx(t), "listen proxy_self; notify proxy_self, 'mine'"); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.WaitForNotification(testCtx(t)); err != nil || n.PID != conn.PgConn().PID() {
		t.Errorf("own notification %+v, %v: sender PID differs from the session's %d", n, err, conn.PgConn().PID())
	}
	st := f.srv.Stats()
	if st.Accepted != 1 || st.PlaintextPasswords != 0 {
		t.Errorf("upstream stats %+v; want one login, over TLS", st)
	}
	if err := conn.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session to close", func() bool { return f.proxy.Stats().Open == 0 && strings.Contains(f.logs.String(), "session closed") })
	logs := f.logs.String()
	if strings.Count(logs, "session opened") != 1 || !strings.Contains(logs, "user="+alice.UPN) || !strings.Contains(logs, "application_name=proxy-test") {
		t.Errorf("logs: %s", logs)
	}
	f.noToken(t, "the log", logs)
	if s := f.proxy.Stats(); s.Opened != 1 || s.Failed != 0 {
		t.Errorf("proxy stats %+v", s)
	}
}

// One token cache for the whole proxy: many sessions, one credential call.
func TestProxyOneTokenForManySessions(t *testing.T) {
	f := newFixture(t, Config{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			conn, err := pgx.Connect(testCtx(t), f.connString())
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			if err := conn.Ping(testCtx(t)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := f.cred.Calls(); n != 1 {
		t.Errorf("the credential was called %d times for 8 sessions, want 1", n)
	}
	if st := f.srv.Stats(); st.Accepted != 8 || st.DistinctTokens != 1 {
		t.Errorf("upstream stats %+v", st)
	}
}

// Config.User names the upstream user whatever the token's principal is
// called; the server still checks that the token belongs to it.
func TestProxyUser(t *testing.T) {
	f := newFixture(t, Config{User: alice.UPN})
	conn := connect(t, f.connString("user=x"))
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	// bob's role with alice's token: the upstream refuses, and the client
	// hears why.
	p, addr := startProxy(t, Config{Upstream: f.srv.ConnString(), TokenSource: f.ts, User: bob.UPN, Logger: f.proxy.log})
	_ = p
	host, port, _ := net.SplitHostPort(addr)
	_, err := pgx.Connect(testCtx(t), "host="+host+" port="+port+" dbname=postgres sslmode=disable")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("connecting as bob with alice's token: %v; want the upstream's 28P01", err)
	}
	f.noToken(t, "the error", err.Error())
}

func itoa(n uint32) string { return big.NewInt(int64(n)).String() }

// waitFor polls cond until it holds; the test's hang guard bounds it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitQuery waits until a backend runs query.
func (f *fixture) waitQuery(t *testing.T, query string) {
	t.Helper()
	waitFor(t, "the query "+query, func() bool {
		var n int
		err := f.pg.Admin().QueryRow(testCtx(t), "select count(*) from pg_stat_activity where query = $1 and state = 'active'", query).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
}

// A cancel request with the key the proxy gave the client reaches that
// session's backend and only it: the query ends with 57014, the session
// stays usable, and another session's query goes on. A wrong key cancels
// nothing.
func TestProxyCancel(t *testing.T) {
	f := newFixture(t, Config{})
	a := connect(t, f.connString("application_name=a"))
	b := connect(t, f.connString("application_name=b"))
	pidA := queryString(t, a, "select pg_backend_pid()::text")

	const sleepA, sleepB = "select pg_sleep(30) -- a", "select pg_sleep(30) -- b"
	errA, errB := make(chan error, 1), make(chan error, 1)
	go func() { _, err := a.Exec(testCtx(t), sleepA); errA <- err }()
	go func() { _, err := b.Exec(testCtx(t), sleepB); errB <- err }()
	f.waitQuery(t, sleepA)
	f.waitQuery(t, sleepB)

	// A wrong secret is ignored.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	secret := append([]byte(nil), a.PgConn().SecretKey()...)
	secret[0] ^= 0xff
	msg, _ := (&pgproto3.CancelRequest{ProcessID: a.PgConn().PID(), SecretKey: secret}).Encode(nil)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Read(make([]byte, 1)) // the proxy closes it
	c.Close()
	waitFor(t, "the wrong key to be ignored", func() bool { return f.proxy.Stats().CancelsIgnored == 1 })

	if err := a.PgConn().CancelRequest(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	err = <-errA
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("the cancelled query ended with %v; want SQLSTATE 57014", err)
	}
	// b's query still runs, and a's session goes on with the same backend.
	f.waitQuery(t, sleepB)
	select {
	case err := <-errB:
		t.Fatalf("b's query ended: %v", err)
	default:
	}
	if got := queryString(t, a, "select pg_backend_pid()::text"); got != pidA {
		t.Errorf("after the cancel a's backend is %s, was %s", got, pidA)
	}
	if err := b.PgConn().CancelRequest(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-errB; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("b's cancelled query ended with %v", err)
	}
	if s := f.proxy.Stats(); s.CancelsForwarded != 2 || s.CancelsIgnored != 1 {
		t.Errorf("proxy stats %+v", s)
	}
	if n := f.srv.Stats().CancelsForwarded; n != 2 {
		t.Errorf("the upstream got %d cancel requests, want 2", n)
	}
}

// The local password: a wrong or missing one is refused with 28P01
// before any token is fetched; the right one opens a session.
func TestProxyLocalPassword(t *testing.T) {
	const password = "local s3cret"
	f := newFixture(t, Config{LocalPassword: password})
	for _, pw := range []string{"wrong", ""} {
		_, err := pgx.Connect(testCtx(t), f.connString("password='"+pw+"'"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Errorf("password %q: %v; want 28P01", pw, err)
		}
	}
	if n := f.cred.Calls(); n != 0 {
		t.Errorf("the credential was called %d times for refused clients", n)
	}
	conn := connect(t, f.connString("password='"+password+"'"))
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	if strings.Contains(f.logs.String(), password) {
		t.Error("the local password was logged")
	}
}

// Upstream failures reach the client as an ErrorResponse saying why, and
// never with the token.
func TestProxyUpstreamErrors(t *testing.T) {
	f := newFixture(t, Config{})
	// The credential fails.
	f.cred.FailWith(errors.New("AzureCLICredential: ERROR: Please run 'az login' to setup account"))
	_, err := pgx.Connect(testCtx(t), f.connString())
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "az login") {
		t.Errorf("with a failing credential: %v; want 28000 naming the credential's error", err)
	}
	f.cred.FailWith(nil)
	tok := f.token(t)

	// The upstream's certificate is not from the CA the proxy trusts.
	host, port, _ := net.SplitHostPort(f.srv.Addr())
	_, addr := startProxy(t, Config{
		Upstream:    "host=" + host + " port=" + port + " dbname=postgres sslmode=verify-full sslrootcert=" + f.pg.CAFile,
		TokenSource: f.ts, Logger: f.proxy.log,
	})
	ph, pp, _ := net.SplitHostPort(addr)
	_, err = pgx.Connect(testCtx(t), "host="+ph+" port="+pp+" dbname=postgres sslmode=disable")
	if !errors.As(err, &pgErr) || pgErr.Code != "08001" || !strings.Contains(pgErr.Message, "certificate") {
		t.Errorf("with an untrusted upstream certificate: %v; want 08001 about the certificate", err)
	}
	if f.srv.Stats().PlaintextPasswords != 0 || f.srv.Stats().Accepted != 0 {
		t.Errorf("upstream stats %+v", f.srv.Stats())
	}

	// The upstream rejects the login (a database that does not exist).
	_, err = pgx.Connect(testCtx(t), f.connString("dbname=no_such_db"))
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		t.Errorf("with a missing database: %v; want the upstream's 3D000", err)
	}

	// Plaintext upstream: refused before the token is sent.
	_, addr = startProxy(t, Config{Upstream: "host=" + host + " port=" + port + " sslmode=disable", TokenSource: f.ts, Logger: f.proxy.log})
	ph, pp, _ = net.SplitHostPort(addr)
	_, err = pgx.Connect(testCtx(t), "host="+ph+" port="+pp+" dbname=postgres sslmode=disable")
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "without TLS") {
		t.Errorf("with a plaintext upstream: %v", err)
	}
	if f.srv.Stats().PlaintextPasswords != 0 {
		t.Error("the token went upstream in plaintext")
	}
	logs := f.logs.String()
	if strings.Contains(logs, tok) || strings.Contains(logs, "eyJ") {
		t.Errorf("the log holds the token: %s", logs)
	}
	if !strings.Contains(logs, "session refused") {
		t.Errorf("no refusal logged: %s", logs)
	}
}

// Over MaxConnections, a client gets 53300; a slot frees when a session
// ends.
func TestProxyMaxConnections(t *testing.T) {
	f := newFixture(t, Config{MaxConnections: 1})
	first, err := pgx.Connect(testCtx(t), f.connString())
	if err != nil {
		t.Fatal(err)
	}
	_, err = pgx.Connect(testCtx(t), f.connString())
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Errorf("over the limit: %v; want 53300", err)
	}
	first.Close(testCtx(t))
	waitFor(t, "the slot to free", func() bool { return f.proxy.Stats().Open == 0 })
	connect(t, f.connString())
}

// Shutdown refuses new sessions with 57P03 but goes on forwarding cancel
// requests for the open sessions, lets them run to their end, returns
// when they have and then closes the listeners; with its context done,
// it closes the sessions.
func TestProxyShutdown(t *testing.T) {
	f := newFixture(t, Config{})
	conn := connect(t, f.connString())
	done := make(chan error, 1)
	go func() { done <- f.proxy.Shutdown(context.Background()) }()
	var pgErr *pgconn.PgError
	waitFor(t, "new sessions to be refused", func() bool {
		c, err := pgx.Connect(testCtx(t), f.connString())
		if err == nil {
			c.Close(testCtx(t))
		}
		return errors.As(err, &pgErr) && pgErr.Code == "57P03"
	})
	if got := queryString(t, conn, "select 'still here'"); got != "still here" {
		t.Errorf("got %q", got)
	}
	// A cancel request during the grace period reaches the backend.
	const sleep = "select pg_sleep(30) -- shutdown"
	errc := make(chan error, 1)
	go func() { _, err := conn.Exec(testCtx(t), sleep); errc <- err }()
	f.waitQuery(t, sleep)
	if err := conn.PgConn().CancelRequest(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("the query cancelled during shutdown ended with %v; want 57014", err)
	}
	if n := f.proxy.Stats().CancelsForwarded; n != 1 {
		t.Errorf("%d cancel requests forwarded during shutdown; want 1", n)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a session open", err)
	default:
	}
	conn.Close(testCtx(t))
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if c, err := net.Dial("tcp", f.addr); err == nil {
		c.Close()
		t.Error("the listener is still open after Shutdown returned")
	}

	g := newFixture(t, Config{})
	conn = connect(t, g.connString())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.proxy.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with a done context: %v", err)
	}
	if err := conn.Ping(testCtx(t)); err == nil {
		t.Error("the session survived a forced shutdown")
	}
}

// With a TLS config the proxy answers SSLRequest with TLS, and a client
// can verify it; GSSENCRequest is declined.
func TestProxyClientTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	f := newFixture(t, Config{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	cfg, err := pgx.ParseConfig(f.connString("sslmode=verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig.RootCAs = pool
	conn, err := pgx.ConnectConfig(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Error("the client connection is not TLS")
	}
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}

	// GSSENCRequest: 'N', then a plain startup works.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.GSSEncRequest{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != 'N' {
		t.Fatalf("GSSENCRequest answered %q, %v", b[0], err)
	}
	startupThrough(t, fe, pgproto3.ProtocolVersion30, map[string]string{"user": "x", "database": "postgres"})
}

// A client asking for protocol 3.2 and protocol options is told 3.0 and
// which options were not recognized, as PostgreSQL does, then logged in.
// The version on the wire is the full 3.0 (0x00030000), as PostgreSQL
// sends it: libpq 18 refuses anything lower as a downgrade below 3.0.
func TestProxyProtocolNegotiation(t *testing.T) {
	f := newFixture(t, Config{})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32,
		Parameters: map[string]string{"user": "x", "database": "postgres", "_pq_.test_option": "on"}}).Encode(nil)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	// 'v', length 4+4+4+len("_pq_.test_option\x00"), version, one option.
	want := append([]byte{'v', 0, 0, 0, 29, 0, 3, 0, 0, 0, 0, 0, 1}, "_pq_.test_option\x00"...)
	got := make([]byte, len(want))
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("NegotiateProtocolVersion on the wire: % x; want % x", got, want)
	}
	// The login goes on after it.
	fe := pgproto3.NewFrontend(c, c)
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if er, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatal(er.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	// pgx asking for 3.2 accepts the answer and works at 3.0.
	conn := connect(t, f.connString("max_protocol_version=3.2", "min_protocol_version=3.0"))
	if got := queryString(t, conn, "select 'ok'"); got != "ok" {
		t.Errorf("got %q", got)
	}
}

// startupThrough sends a startup message and reads up to ReadyForQuery,
// returning the messages; the last must be ReadyForQuery, after
// AuthenticationOk and BackendKeyData.
func startupThrough(t *testing.T, fe *pgproto3.Frontend, version uint32, params map[string]string) []pgproto3.BackendMessage {
	t.Helper()
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: version, Parameters: params})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var msgs []pgproto3.BackendMessage
	var sawAuth, sawKey bool
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			msgs = append(msgs, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: m.NewestMinorProtocol, UnrecognizedOptions: append([]string(nil), m.UnrecognizedOptions...)})
			continue
		case *pgproto3.AuthenticationOk:
			sawAuth = true
		case *pgproto3.BackendKeyData:
			sawKey = len(m.SecretKey) == 4
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s", m.Message)
		case *pgproto3.ReadyForQuery:
			if !sawAuth || !sawKey {
				t.Fatalf("ReadyForQuery without AuthenticationOk (%v) or a 4-byte BackendKeyData (%v)", sawAuth, sawKey)
			}
			return append(msgs, m)
		}
		msgs = append(msgs, m)
	}
}

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pgentra proxy test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
