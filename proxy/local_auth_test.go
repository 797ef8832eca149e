package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

const localPassword = "l0cal s3cret pw"

// tap is a relay in front of the proxy that records what crosses the
// client's hop, both ways.
type tap struct {
	addr                 string
	mu                   sync.Mutex
	toServer, toClient   bytes.Buffer
	toServerW, toClientW io.Writer
	wg                   sync.WaitGroup
	connsMu              sync.Mutex
	conns                []net.Conn
}

// newTap relays every connection on a loopback port to target until the
// test ends.
func newTap(t *testing.T, target string) *tap {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{addr: l.Addr().String()}
	tp.toServerW = lockedWriter{&tp.mu, &tp.toServer}
	tp.toClientW = lockedWriter{&tp.mu, &tp.toClient}
	tp.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			tp.connsMu.Lock()
			tp.conns = append(tp.conns, c, up)
			tp.connsMu.Unlock()
			tp.wg.Go(func() { _, _ = io.Copy(io.MultiWriter(up, tp.toServerW), c); up.Close() })
			tp.wg.Go(func() { _, _ = io.Copy(io.MultiWriter(c, tp.toClientW), up); c.Close() })
		}
	})
	t.Cleanup(func() {
		l.Close()
		tp.connsMu.Lock()
		for _, c := range tp.conns {
			c.Close()
		}
		tp.connsMu.Unlock()
		tp.wg.Wait()
	})
	return tp
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (tp *tap) recorded() (toServer, toClient []byte) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.toServer.Bytes()), bytes.Clone(tp.toClient.Bytes())
}

// authRequests parses the proxy's messages to a plaintext client and
// returns the authentication request codes it sent (AuthenticationOk 0,
// cleartext 3, SASL 10, SASLContinue 11, SASLFinal 12).
func authRequests(t *testing.T, toClient []byte) []uint32 {
	t.Helper()
	var codes []uint32
	for len(toClient) >= 5 {
		n := int(binary.BigEndian.Uint32(toClient[1:5]))
		if n < 4 || len(toClient) < 1+n {
			t.Fatalf("a truncated message on the client's hop: % x", toClient)
		}
		if toClient[0] == 'R' {
			codes = append(codes, binary.BigEndian.Uint32(toClient[5:9]))
		}
		toClient = toClient[1+n:]
	}
	return codes
}

// psql (libpq 15) logs in through the proxy with SCRAM-SHA-256 by default:
// on the client's hop, the proxy asks for SASL and never for a cleartext
// password, and the password never crosses it.
func TestLocalSCRAMPsql(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("no psql")
	}
	f := newFixture(t, Config{LocalPassword: localPassword})
	tp := newTap(t, f.addr)
	host, port, _ := net.SplitHostPort(tp.addr)
	run := func(password string) (string, error) {
		cmd := exec.Command(psql, "-X", "-A", "-t", "-w", "-c", "select current_user")
		cmd.Env = []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=someone", "PGDATABASE=postgres",
			"PGSSLMODE=disable", "PGPASSWORD=" + password, "PGCONNECT_TIMEOUT=20"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(localPassword)
	if err != nil || strings.TrimSpace(out) != alice.UPN {
		t.Fatalf("psql: %v: %s", err, out)
	}
	toServer, toClient := tp.recorded()
	if got, want := authRequests(t, toClient), []uint32{10, 11, 12, 0}; !slices.Equal(got, want) {
		t.Errorf("authentication requests on the client's hop: %v; want SASL, SASLContinue, SASLFinal, Ok %v", got, want)
	}
	if !bytes.Contains(toClient, []byte("SCRAM-SHA-256\x00")) || !bytes.Contains(toServer, []byte("SCRAM-SHA-256\x00")) {
		t.Error("SCRAM-SHA-256 was not offered and chosen on the client's hop")
	}
	if bytes.Contains(toServer, []byte(localPassword)) {
		t.Error("the local password crossed the client's hop")
	}

	out, err = run("wrong")
	if err == nil || !strings.Contains(out, `password authentication failed for user "someone"`) {
		t.Errorf("psql with a wrong password: %v: %s", err, out)
	}
	if n := f.srv.Stats().Accepted; n != 1 {
		t.Errorf("%d upstream logins; want 1 (none for the wrong password)", n)
	}
	if logs := f.logs.String(); strings.Contains(logs, localPassword) {
		t.Error("the local password was logged")
	}
}

// pgx logs in with SCRAM (require_auth=scram-sha-256 holds it to that); a
// wrong password is 28P01 with no upstream login; over TLS, channel
// binding (SCRAM-SHA-256-PLUS) is offered and works.
func TestLocalSCRAMPgx(t *testing.T) {
	cert, pool := selfSigned(t)
	f := newFixture(t, Config{LocalPassword: localPassword,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	conn := connect(t, f.connString("password='"+localPassword+"'", "require_auth=scram-sha-256"))
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	// pgx refuses a server asking for a cleartext password under
	// require_auth=scram-sha-256; the converse, too, proves the method.
	if _, err := pgx.Connect(testCtx(t), f.connString("password='"+localPassword+"'", "require_auth=password")); err == nil {
		t.Error("require_auth=password was satisfied: the proxy did not ask for SCRAM")
	}
	for _, pw := range []string{"wrong", ""} {
		_, err := pgx.Connect(testCtx(t), f.connString("password='"+pw+"'", "require_auth=scram-sha-256"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Message != `password authentication failed for user "`+osUser(t)+`"` {
			t.Errorf("password %q: %v; want 28P01", pw, err)
		}
	}
	if n := f.srv.Stats().Accepted; n != 1 {
		t.Errorf("%d upstream logins; want 1", n)
	}

	for _, cb := range []string{"require", "disable"} {
		cfg, err := pgx.ParseConfig(f.connString("sslmode=verify-full", "password='"+localPassword+"'", "channel_binding="+cb))
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSConfig.RootCAs = pool
		c, err := pgx.ConnectConfig(testCtx(t), cfg)
		if err != nil {
			t.Fatalf("over TLS with channel_binding=%s: %v", cb, err)
		}
		if got := queryString(t, c, "select current_user"); got != alice.UPN {
			t.Errorf("current_user = %q", got)
		}
		c.Close(context.Background())
	}
	if strings.Contains(f.logs.String(), localPassword) {
		t.Error("the local password was logged")
	}
}

// osUser is the user name pgx sends when the connection string names none.
func osUser(t *testing.T) string {
	cfg, err := pgconn.ParseConfig("")
	if err != nil {
		t.Fatal(err)
	}
	return cfg.User
}

// psql with channel_binding=require logs in over TLS: libpq 15 checks that
// the proxy used SCRAM-SHA-256-PLUS.
func TestLocalSCRAMPsqlChannelBinding(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("no psql")
	}
	cert, _ := selfSigned(t)
	f := newFixture(t, Config{LocalPassword: localPassword,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	host, port, _ := net.SplitHostPort(f.addr)
	cmd := exec.Command(psql, "-X", "-A", "-t", "-w", "-c", "select current_user")
	cmd.Env = []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=someone", "PGDATABASE=postgres",
		"PGSSLMODE=require", "PGCHANNELBINDING=require", "PGPASSWORD=" + localPassword, "PGCONNECT_TIMEOUT=20"}
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != alice.UPN {
		t.Fatalf("psql with channel_binding=require: %v: %s", err, out)
	}
}

// startRaw opens a raw connection to addr and sends a protocol 3.0
// startup message for user; the connection is closed at the end of the
// test.
func startRaw(t *testing.T, addr, user string) *pgproto3.Frontend {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": user, "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return fe
}

// rawLogin opens a connection as a client that can only send its password
// in cleartext: it answers any authentication request with a
// PasswordMessage. It returns the messages up to ReadyForQuery or an
// ErrorResponse.
func rawLogin(t *testing.T, addr, password string) []pgproto3.BackendMessage {
	t.Helper()
	fe := startRaw(t, addr, "old-driver")
	var msgs []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %T: %v", msgs, err)
		}
		switch m := m.(type) {
		case *pgproto3.AuthenticationCleartextPassword, *pgproto3.AuthenticationSASL:
			msgs = append(msgs, m)
			fe.Send(&pgproto3.PasswordMessage{Password: password})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		case *pgproto3.ErrorResponse:
			e := *m
			return append(msgs, &e)
		case *pgproto3.ReadyForQuery:
			return append(msgs, m)
		default:
			msgs = append(msgs, m)
		}
	}
}

// A client that can only send a cleartext password is refused under the
// default, with an error saying what to do, and works under
// LocalAuthPassword, which warns that clients get no TLS.
func TestLocalCleartextOnlyClient(t *testing.T) {
	f := newFixture(t, Config{LocalPassword: localPassword})
	msgs := rawLogin(t, f.addr, localPassword)
	er, ok := msgs[len(msgs)-1].(*pgproto3.ErrorResponse)
	if !ok || er.Code != "08P01" || !strings.Contains(er.Hint, "--local-auth password") {
		t.Fatalf("a cleartext-only client under scram-sha-256: %#v; want 08P01 with a hint", msgs[len(msgs)-1])
	}
	if _, ok := msgs[0].(*pgproto3.AuthenticationSASL); !ok {
		t.Errorf("first asked with %T", msgs[0])
	}
	if strings.Contains(er.Message+er.Detail+er.Hint, localPassword) || strings.Contains(f.logs.String(), localPassword) {
		t.Error("the password the client sent was echoed or logged")
	}
	if n := f.cred.Calls(); n != 0 {
		t.Errorf("the credential was called %d times for a refused client", n)
	}
	if strings.Contains(f.logs.String(), "cleartext") {
		t.Error("a cleartext warning under scram-sha-256")
	}

	g := newFixture(t, Config{LocalPassword: localPassword, LocalAuth: LocalAuthPassword})
	msgs = rawLogin(t, g.addr, localPassword)
	if _, ok := msgs[0].(*pgproto3.AuthenticationCleartextPassword); !ok {
		t.Errorf("first asked with %T; want a cleartext password", msgs[0])
	}
	if _, ok := msgs[len(msgs)-1].(*pgproto3.ReadyForQuery); !ok {
		t.Errorf("a cleartext client under password: %#v", msgs[len(msgs)-1])
	}
	msgs = rawLogin(t, g.addr, "wrong")
	if er, ok := msgs[len(msgs)-1].(*pgproto3.ErrorResponse); !ok || er.Code != "28P01" {
		t.Errorf("a wrong cleartext password: %#v", msgs[len(msgs)-1])
	}
	if logs := g.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "cleartext") {
		t.Errorf("no warning about cleartext without TLS: %s", logs)
	}
}

// Malformed SASL exchanges are refused with 08P01, the proxy's messages
// naming nothing of the client's.
func TestLocalSCRAMMalformed(t *testing.T) {
	f := newFixture(t, Config{LocalPassword: localPassword})
	cases := []struct {
		name string
		send []pgproto3.FrontendMessage
		want string
	}{
		{"unknown mechanism", []pgproto3.FrontendMessage{&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-1", Data: []byte("n,,n=,r=abc")}},
			"client selected an invalid SASL authentication mechanism"},
		{"PLUS without TLS", []pgproto3.FrontendMessage{&pgproto3.SASLInitialResponse{AuthMechanism: mechSCRAMPlus, Data: []byte("p=tls-server-end-point,,n=,r=abc")}},
			"client selected an invalid SASL authentication mechanism"},
		{"garbage first message", []pgproto3.FrontendMessage{&pgproto3.SASLInitialResponse{AuthMechanism: mechSCRAM, Data: []byte("x,garbage")}},
			"malformed SCRAM message"},
		{"binding flag with SCRAM-SHA-256", []pgproto3.FrontendMessage{&pgproto3.SASLInitialResponse{AuthMechanism: mechSCRAM, Data: []byte("p=tls-server-end-point,,n=,r=abc")}},
			"malformed SCRAM message"},
		{"garbage final message", []pgproto3.FrontendMessage{&pgproto3.SASLInitialResponse{AuthMechanism: mechSCRAM, Data: []byte("n,,n=,r=abc")}, &pgproto3.SASLResponse{Data: []byte("c=biws,r=other,p=AAAA")}},
			"malformed SCRAM message"},
		{"a query instead", []pgproto3.FrontendMessage{&pgproto3.Query{String: "select 1"}},
			"expected SASL response, got message type 81"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fe := startRaw(t, f.addr, "x")
			for _, m := range tc.send {
				if _, err := fe.Receive(); err != nil { // AuthenticationSASL, then SASLContinue
					t.Fatal(err)
				}
				fe.Send(m)
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if er, ok := m.(*pgproto3.ErrorResponse); !ok || er.Code != "08P01" || er.Message != tc.want {
				t.Errorf("got %#v; want 08P01 %q", m, tc.want)
			}
			if _, err := fe.Receive(); err == nil {
				t.Error("the connection stayed open")
			}
		})
	}
	if n := f.cred.Calls(); n != 0 {
		t.Errorf("the credential was called %d times", n)
	}
}

// A client that stops answering in the middle of SCRAM is dropped at its
// startup deadline.
func TestLocalSCRAMStartupTimeout(t *testing.T) {
	f := newFixture(t, Config{LocalPassword: localPassword, StartupTimeout: 200 * time.Millisecond})
	fe := startRaw(t, f.addr, "x")
	if m, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("got %T", m)
	}
	if _, err := fe.Receive(); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Errorf("a silent client in SCRAM: %v; want its connection closed by the proxy", err)
	}
	waitFor(t, "the startup slot to be freed", func() bool { return f.proxy.Stats().Starting == 0 })
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A bad LocalAuth is refused by New.
func TestLocalAuthConfig(t *testing.T) {
	f := newFixture(t, Config{})
	for _, v := range []string{"md5", "SCRAM-SHA-256", "trust"} {
		_, err := New(Config{Upstream: "host=x", TokenSource: f.ts, LocalPassword: "x", LocalAuth: v})
		if err == nil || !strings.Contains(err.Error(), `"scram-sha-256" or "password"`) {
			t.Errorf("LocalAuth %q: %v", v, err)
		}
	}
}

// Many clients at once, right and wrong passwords mixed, share the one
// SCRAM server: each gets its own answer.
func TestLocalSCRAMConcurrent(t *testing.T) {
	f := newFixture(t, Config{LocalPassword: localPassword})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := range 40 {
		wg.Go(func() {
			pw := localPassword
			if i%2 == 1 {
				pw = "wrong " + localPassword
			}
			conn, err := pgx.Connect(testCtx(t), f.connString("password='"+pw+"'", "require_auth=scram-sha-256"))
			var pgErr *pgconn.PgError
			switch {
			case err == nil && i%2 == 0:
				conn.Close(context.Background())
				mu.Lock()
				ok++
				mu.Unlock()
			case errors.As(err, &pgErr) && pgErr.Code == "28P01" && i%2 == 1:
				mu.Lock()
				refused++
				mu.Unlock()
			default:
				t.Errorf("client %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if ok != 20 || refused != 20 {
		t.Errorf("%d logged in and %d refused; want 20 and 20", ok, refused)
	}
	if n := f.srv.Stats().Accepted; n != 20 {
		t.Errorf("%d upstream logins; want 20", n)
	}
}

// A password SASLprep changes (a no-break space is mapped to a space) is
// prepared as PostgreSQL prepares it: psql and pgx, which prepare it too,
// log in with it.
func TestLocalSCRAMSASLprep(t *testing.T) {
	const pw = "l0cal\u00a0pässwörd"
	f := newFixture(t, Config{LocalPassword: pw})
	conn := connect(t, f.connString("password='"+pw+"'", "require_auth=scram-sha-256"))
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		return
	}
	host, port, _ := net.SplitHostPort(f.addr)
	cmd := exec.Command(psql, "-X", "-A", "-t", "-w", "-c", "select current_user")
	cmd.Env = []string{"PGHOST=" + host, "PGPORT=" + port, "PGDATABASE=postgres", "PGSSLMODE=disable", "PGPASSWORD=" + pw, "PGCONNECT_TIMEOUT=20"}
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != alice.UPN {
		t.Errorf("psql: %v: %s", err, out)
	}
}
