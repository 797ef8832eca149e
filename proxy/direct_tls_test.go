package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// newTLSFixture is a fixture whose proxy offers TLS with a self-signed
// certificate, and the pool that trusts it.
func newTLSFixture(t *testing.T, cfg Config) (*fixture, *x509.CertPool) {
	t.Helper()
	cert, pool := selfSigned(t)
	cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return newFixture(t, cfg), pool
}

// pgx with sslnegotiation=direct (PostgreSQL 17's direct TLS, ALPN
// "postgresql") logs in through the proxy, with SCRAM and channel binding
// for the local password; its cancel requests, sent the same way, work.
func TestDirectTLS(t *testing.T) {
	f, pool := newTLSFixture(t, Config{LocalPassword: localPassword})
	cfg, err := pgx.ParseConfig(f.connString("sslmode=verify-full", "sslnegotiation=direct", "channel_binding=require",
		"require_auth=scram-sha-256", "password='"+localPassword+"'"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig.RootCAs = pool
	conn, err := pgx.ConnectConfig(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tc, ok := conn.PgConn().Conn().(*tls.Conn)
	if !ok || tc.ConnectionState().NegotiatedProtocol != "postgresql" {
		t.Fatalf("the client connection is not TLS with ALPN postgresql: %T", conn.PgConn().Conn())
	}
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(testCtx(t), "select pg_sleep(60)")
		errc <- err
	}()
	f.waitQuery(t, "select pg_sleep(60)")
	if err := conn.PgConn().CancelRequest(testCtx(t)); err != nil { // over direct TLS too
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if err := <-errc; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Errorf("the cancelled query ended with %v; want 57014", err)
	}
	if got := queryString(t, conn, "select 'still here'"); got != "still here" {
		t.Errorf("after the cancel: %q", got)
	}
	waitFor(t, "the cancel request to be forwarded", func() bool { return f.proxy.Stats().CancelsForwarded == 1 })
	if logs := f.logs.String(); !strings.Contains(logs, "client_tls=true") {
		t.Errorf("logs: %s", logs)
	}
}

// A direct TLS client that does not ask for ALPN "postgresql" is refused
// after the handshake with an error it can read, as PostgreSQL 17 refuses
// it; one asking for another protocol fails the handshake, with direct
// TLS and after SSLRequest alike; a client asking for none after
// SSLRequest is served (libpq before 17 asks for none).
func TestDirectTLSALPN(t *testing.T) {
	f, pool := newTLSFixture(t, Config{})
	dial := func(protos []string) (*tls.Conn, error) {
		raw, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		_ = raw.SetDeadline(time.Now().Add(time.Minute))
		c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: protos})
		return c, c.Handshake()
	}

	c, err := dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(c, c)
	m, err := fe.Receive()
	if er, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || er.Code != "08P01" || !strings.Contains(er.Message, "without ALPN") {
		t.Errorf("a direct TLS client without ALPN got %#v, %v; want 08P01", m, err)
	}
	if _, err := fe.Receive(); err == nil {
		t.Error("the connection stayed open")
	}

	if _, err := dial([]string{"h2"}); err == nil || !strings.Contains(err.Error(), "no application protocol") {
		t.Errorf("a direct TLS client asking for h2: %v; want the handshake refused", err)
	}

	sslRequest := func(protos []string) (*tls.Conn, error) {
		raw, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		_ = raw.SetDeadline(time.Now().Add(time.Minute))
		req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		var b [1]byte
		if _, err := raw.Write(req); err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Read(b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answered %q, %v", b[0], err)
		}
		c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: protos})
		return c, c.Handshake()
	}
	if _, err := sslRequest([]string{"h2"}); err == nil {
		t.Error("a client asking for h2 after SSLRequest got TLS")
	}
	c, err = sslRequest([]string{"postgresql"})
	if err != nil || c.ConnectionState().NegotiatedProtocol != "postgresql" {
		t.Errorf("a client asking for postgresql after SSLRequest: %v, %q", err, c.ConnectionState().NegotiatedProtocol)
	}
	c, err = sslRequest(nil)
	if err != nil {
		t.Fatalf("a client asking for no ALPN after SSLRequest: %v", err)
	}
	startupThrough(t, pgproto3.NewFrontend(c, c), pgproto3.ProtocolVersion30, map[string]string{"user": "x", "database": "postgres"})
}

// Without a TLS config, a direct TLS client is refused at once: its
// connection is closed (it is not left waiting for its startup deadline),
// and the log says why.
func TestDirectTLSWithoutTLSConfig(t *testing.T) {
	f := newFixture(t, Config{StartupTimeout: 10 * time.Minute})
	cfg, err := pgx.ParseConfig(f.connString("sslmode=require", "sslnegotiation=direct"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = pgx.ConnectConfig(testCtx(t), cfg) // a minute at most: a hang fails here
	if err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("a direct TLS client without a TLS config: %v; want its connection refused", err)
	}
	waitFor(t, "the refusal to be logged", func() bool {
		return strings.Contains(f.logs.String(), "offers no TLS to clients")
	})
	if s := f.proxy.Stats(); s.Failed != 1 || s.Starting != 0 {
		t.Errorf("stats %+v", s)
	}
}
