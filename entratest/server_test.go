package entratest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgentra/entraauth/internal/pgtest"
)

// srvKit is a Server under test with its issuer and captured log.
type srvKit struct {
	t   *testing.T
	srv *Server
	iss *Issuer
	log *srvLog
}

// srvLog collects the server's log lines.
type srvLog struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *srvLog) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.b.WriteString(line)
	l.b.WriteByte('\n')
	l.mu.Unlock()
	l.t.Log(line)
}

func (l *srvLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// srvContext returns a context that bounds a test (a hang guard, not a
// timing assertion).
func srvContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startSrvKit starts a server for the test, on a throwaway PostgreSQL
// unless cfg.BackendDSN is set, and closes it at cleanup.
func startSrvKit(t *testing.T, cfg ServerConfig) *srvKit {
	t.Helper()
	iss, err := NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	k := &srvKit{t: t, iss: iss, log: &srvLog{t: t}}
	if cfg.Verifier == nil {
		cfg.Verifier = iss
	}
	cfg.Logf = k.log.logf
	srv, err := NewServer(srvContext(t), cfg)
	if errors.Is(err, ErrNoPostgreSQL) {
		pgtest.SkipOrFail(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	k.srv = srv
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return k
}

// addRole registers role for p.
func (k *srvKit) addRole(role string, p Principal) {
	k.t.Helper()
	if err := k.srv.AddRole(srvContext(k.t), role, p.ObjectID); err != nil {
		k.t.Fatal(err)
	}
}

// mint returns a database token for p valid for lifetime.
func (k *srvKit) mint(p Principal, lifetime time.Duration) string {
	k.t.Helper()
	tok, err := k.iss.Mint(p, ScopePublic, lifetime)
	if err != nil {
		k.t.Fatal(err)
	}
	return tok.Token
}

// connect logs in through pgx as user with password, with extra
// connection string items.
func (k *srvKit) connect(ctx context.Context, user, password string, extra ...string) (*pgx.Conn, error) {
	k.t.Helper()
	cfg, err := pgx.ParseConfig(k.srv.ConnString(append([]string{"user=" + user, "connect_timeout=20"}, extra...)...))
	if err != nil {
		k.t.Fatal(err)
	}
	cfg.Password = password
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		k.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	}
	return conn, err
}

// mustConnect is connect that fails the test on error.
func (k *srvKit) mustConnect(user, password string, extra ...string) *pgx.Conn {
	k.t.Helper()
	conn, err := k.connect(srvContext(k.t), user, password, extra...)
	if err != nil {
		k.t.Fatalf("login as %q: %v", user, scrubToken(err.Error(), password))
	}
	return conn
}

// noToken fails the test if token appears in any of texts or in the
// server's log.
func (k *srvKit) noToken(token string, texts ...string) {
	k.t.Helper()
	for _, s := range append(texts, k.log.String()) {
		if token != "" && strings.Contains(s, token) {
			k.t.Errorf("the token appears in %q", scrubToken(s, token))
		}
	}
}

// queryString runs a one-value query.
func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(srvContext(t), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func wantStats(t *testing.T, got ServerStats, accepted, distinct, plaintext int64, rejected map[RejectReason]int64) {
	t.Helper()
	if got.Accepted != accepted || got.DistinctTokens != distinct || got.PlaintextPasswords != plaintext {
		t.Errorf("stats: Accepted=%d DistinctTokens=%d PlaintextPasswords=%d, want %d, %d, %d",
			got.Accepted, got.DistinctTokens, got.PlaintextPasswords, accepted, distinct, plaintext)
	}
	if rejected == nil {
		rejected = map[RejectReason]int64{}
	}
	if fmt.Sprint(got.Rejected) != fmt.Sprint(rejected) {
		t.Errorf("stats: Rejected=%v, want %v", got.Rejected, rejected)
	}
}

func TestServerUserLogin(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	token := k.mint(alice, time.Hour)

	conn := k.mustConnect(alice.UPN, token)
	if got := queryString(t, conn, "SELECT current_user"); got != alice.UPN {
		t.Errorf("current_user = %q, want %q", got, alice.UPN)
	}
	wantStats(t, k.srv.Stats(), 1, 1, 0, nil)

	// The session is relayed as the client asked: TLS to the kit, the
	// backend's parameters passed on.
	if conn.PgConn().ParameterStatus("server_version") == "" {
		t.Error("no server_version parameter from the backend")
	}
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Errorf("client connection is %T, want *tls.Conn", conn.PgConn().Conn())
	}

	// Same token again: another login, no new distinct token. A new token:
	// one more.
	k.mustConnect(alice.UPN, token)
	k.mustConnect(alice.UPN, k.mint(alice, 2*time.Hour))
	wantStats(t, k.srv.Stats(), 3, 2, 0, nil)
	k.noToken(token)
}

func TestServerManagedIdentityLogin(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	mi := ManagedIdentity("orders-api")
	k.addRole("orders-api", mi)
	token := k.mint(mi, time.Hour)
	claims, err := k.iss.Verify(token, ScopePublic)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"upn", "preferred_username", "unique_name"} {
		if _, ok := claims[c]; ok {
			t.Fatalf("managed identity token has a %s claim; the test needs one without a name", c)
		}
	}
	conn := k.mustConnect("orders-api", token)
	if got := queryString(t, conn, "SELECT current_user"); got != "orders-api" {
		t.Errorf("current_user = %q, want orders-api", got)
	}
	wantStats(t, k.srv.Stats(), 1, 1, 0, nil)
}

func TestServerRelay(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	ctx := srvContext(t)
	admin, err := pgx.Connect(ctx, k.srv.AdminConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, sql := range []string{
		`CREATE DATABASE appdb OWNER "alice@contoso.com"`,
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	token := k.mint(alice, time.Hour)

	conn := k.mustConnect(alice.UPN, token, "dbname=appdb", "application_name=entratest relay", "options=-c search_path=custom,public")
	if got := queryString(t, conn, "SELECT current_database()"); got != "appdb" {
		t.Errorf("current_database() = %q, want appdb", got)
	}
	if got := queryString(t, conn, "SELECT current_setting('application_name')"); got != "entratest relay" {
		t.Errorf("application_name = %q, want %q", got, "entratest relay")
	}
	if got := queryString(t, conn, "SELECT current_setting('search_path')"); got != "custom,public" {
		t.Errorf("search_path = %q, want %q", got, "custom,public")
	}
	if got := conn.PgConn().ParameterStatus("application_name"); got != "entratest relay" {
		t.Errorf("ParameterStatus(application_name) = %q", got)
	}

	// A multi-row result larger than any one buffer, and a long parameter
	// in.
	rows, err := conn.Query(ctx, "SELECT i, repeat('x', 100) FROM generate_series(1, 20000) AS i")
	if err != nil {
		t.Fatal(err)
	}
	var n, sum int64
	for rows.Next() {
		var i int64
		var s string
		if err := rows.Scan(&i, &s); err != nil {
			t.Fatal(err)
		}
		if len(s) != 100 {
			t.Fatalf("row %d: value of length %d", i, len(s))
		}
		n++
		sum += i
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 20000 || sum != 20000*20001/2 {
		t.Errorf("got %d rows summing to %d, want 20000 rows summing to %d", n, sum, 20000*20001/2)
	}
	var length int
	if err := conn.QueryRow(ctx, "SELECT length($1)", strings.Repeat("y", 1<<20)).Scan(&length); err != nil || length != 1<<20 {
		t.Errorf("length of a 1 MiB parameter: %d, %v", length, err)
	}

	// COPY in and out, and a transaction.
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int, note text)"); err != nil {
		t.Fatal(err)
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{"t"}, []string{"id", "note"}, pgx.CopyFromSlice(1000, func(i int) ([]any, error) {
		return []any{i, fmt.Sprint("note ", i)}, nil
	}))
	if err != nil || copied != 1000 {
		t.Fatalf("CopyFrom: %d, %v", copied, err)
	}
	var out bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &out, "COPY t TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out.String(), "\n"); got != 1000 {
		t.Errorf("COPY TO gave %d lines, want 1000", got)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM t"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, conn, "SELECT count(*)::text FROM t"); got != "1000" {
		t.Errorf("after rollback: %s rows, want 1000", got)
	}

	// A database that does not exist: the backend's own error, counted.
	_, err = k.connect(ctx, alice.UPN, token, "dbname=nosuchdb")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		t.Errorf("login to a missing database: %v, want SQLSTATE 3D000", err)
	}
	wantStats(t, k.srv.Stats(), 1, 1, 0, map[RejectReason]int64{RejectBackend: 1})
}

func TestServerNegotiation(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	token := k.mint(alice, time.Hour)

	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"direct TLS", []string{"sslnegotiation=direct"}},
		{"protocol 3.2 asked", []string{"max_protocol_version=latest"}},
		{"sslmode=require", []string{"sslmode=require"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := k.connect(srvContext(t), alice.UPN, token, tc.extra...)
			if err != nil {
				t.Fatalf("login: %v", scrubToken(err.Error(), token))
			}
			if got := queryString(t, conn, "SELECT current_user"); got != alice.UPN {
				t.Errorf("current_user = %q", got)
			}
		})
	}

	// GSSENCRequest is declined, then TLS goes on as usual.
	t.Run("GSSENCRequest", func(t *testing.T) {
		raw := dialSrv(t, k.srv)
		for _, step := range []struct {
			code uint32
			want byte
		}{{codeGSSENCRequest, 'N'}, {codeSSLRequest, 'S'}} {
			if _, err := raw.Write(untypedPacket(step.code)); err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			if _, err := io.ReadFull(raw, b[:]); err != nil || b[0] != step.want {
				t.Fatalf("answer to %d: %q, %v; want %q", step.code, b[0], err, step.want)
			}
		}
		tc := tls.Client(raw, &tls.Config{RootCAs: k.srv.CertPool(), ServerName: "localhost"})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS after GSSENCRequest and SSLRequest: %v", err)
		}
	})
	wantStats(t, k.srv.Stats(), 3, 1, 0, nil)
}

func TestServerRejections(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	alice, bob := User("alice@contoso.com"), User("bob@contoso.com")
	k.addRole(alice.UPN, alice)
	k.addRole(bob.UPN, bob)

	expired, err := k.iss.mintAt(alice, ScopePublic, time.Now().Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongAudience, err := k.iss.Mint(alice, ScopeARMPublic, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Signed by another key under the same key id, so only the signature
	// is wrong.
	forger, err := NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	forger.keyID, forger.tenantID = k.iss.keyID, k.iss.tenantID
	forged, err := forger.Mint(alice, ScopePublic, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherTenant := alice
	otherTenant.TenantID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	wrongIssuer, err := k.iss.Mint(otherTenant, ScopePublic, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	validationFailed := msgTokenInvalid
	for _, tc := range []struct {
		name, user, token string
		reason            RejectReason
		message           string
	}{
		{"expired", alice.UPN, expired.Token, RejectExpired, msgTokenExpired},
		{"wrong audience", alice.UPN, wrongAudience.Token, RejectAudience,
			`The access token does not have a valid audience claim. Please acquire a new token for the resource "https://ossrdbms-aad.database.windows.net".`},
		{"bad signature", alice.UPN, forged.Token, RejectSignature, validationFailed},
		{"other tenant", alice.UPN, wrongIssuer.Token, RejectIssuer, validationFailed},
		{"not a JWT", alice.UPN, "not-a-jwt-at-all-but-long-enough", RejectMalformed, validationFailed},
		{"user mismatch", alice.UPN, k.mint(bob, time.Hour), RejectUserMismatch, `password authentication failed for user "alice@contoso.com"`},
		{"unknown role", "carol@contoso.com", k.mint(User("carol@contoso.com"), time.Hour), RejectUnknownRole, `password authentication failed for user "carol@contoso.com"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := k.srv.Stats()
			_, err := k.connect(srvContext(t), tc.user, tc.token)
			if err == nil {
				t.Fatal("login succeeded")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("error %v is not a *pgconn.PgError", scrubToken(err.Error(), tc.token))
			}
			if pgErr.Code != "28P01" || pgErr.Severity != "FATAL" || pgErr.Message != tc.message {
				t.Errorf("got %s %s %q, want FATAL 28P01 %q", pgErr.Severity, pgErr.Code, scrubToken(pgErr.Message, tc.token), tc.message)
			}
			if !strings.HasPrefix(pgErr.Detail, "entratest: ") {
				t.Errorf("detail %q does not say why", scrubToken(pgErr.Detail, tc.token))
			}
			t.Logf("client sees: %s / DETAIL: %s", scrubToken(err.Error(), tc.token), scrubToken(pgErr.Detail, tc.token))
			k.noToken(tc.token, err.Error(), pgErr.Detail, pgErr.Hint, fmt.Sprintf("%+v", pgErr))
			after := k.srv.Stats()
			if got := after.Rejected[tc.reason] - before.Rejected[tc.reason]; got != 1 {
				t.Errorf("Rejected[%s] went up by %d, want 1 (stats %v)", tc.reason, got, after.Rejected)
			}
			if after.TotalRejected()-before.TotalRejected() != 1 || after.Accepted != 0 {
				t.Errorf("stats %+v after %+v: want exactly one more rejection and no login", after, before)
			}
		})
	}
	if got := k.srv.Stats().PlaintextPasswords; got != 0 {
		t.Errorf("PlaintextPasswords = %d over TLS", got)
	}
}

func TestServerPlaintextRejected(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	token := k.mint(alice, time.Hour)

	_, err := k.connect(srvContext(t), alice.UPN, token, "sslmode=disable")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Message != msgSSLRequired {
		t.Fatalf("plaintext login: %v, want FATAL 28000 %q", scrubToken(fmt.Sprint(err), token), msgSSLRequired)
	}
	k.noToken(token, err.Error(), pgErr.Detail)
	// The (valid) token went over the wire in the clear: counted, and
	// refused all the same.
	wantStats(t, k.srv.Stats(), 0, 0, 1, map[RejectReason]int64{RejectNoTLS: 1})
}

func TestServerOAuthBearer(t *testing.T) {
	k := startSrvKit(t, ServerConfig{Mode: ModeOAuthBearer})
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	token := k.mint(alice, time.Hour)

	connect := func(t *testing.T, token string, extra ...string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(k.srv.ConnString(append([]string{"user=" + alice.UPN}, extra...)...))
		if err != nil {
			t.Fatal(err)
		}
		calls := 0
		cfg.OAuthTokenProvider = func(context.Context) (string, error) {
			calls++
			return token, nil
		}
		conn, err := pgx.ConnectConfig(srvContext(t), cfg)
		if err == nil {
			t.Cleanup(func() { _ = conn.Close(context.Background()) })
			if calls != 1 {
				t.Errorf("token provider called %d times, want 1", calls)
			}
		}
		return conn, err
	}

	t.Run("good token", func(t *testing.T) {
		conn, err := connect(t, token)
		if err != nil {
			t.Fatalf("login: %v", scrubToken(err.Error(), token))
		}
		if got := queryString(t, conn, "SELECT current_user"); got != alice.UPN {
			t.Errorf("current_user = %q", got)
		}
		wantStats(t, k.srv.Stats(), 1, 1, 0, nil)
	})

	t.Run("bad token", func(t *testing.T) {
		expired, err := k.iss.mintAt(alice, ScopePublic, time.Now().Add(-2*time.Hour), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = connect(t, expired.Token)
		if err == nil || !strings.Contains(err.Error(), "OAuth authentication failed: invalid_token") {
			t.Fatalf("login with an expired token: %v, want pgx's OAuth invalid_token failure", scrubToken(fmt.Sprint(err), expired.Token))
		}
		k.noToken(expired.Token, err.Error())
		wantStats(t, k.srv.Stats(), 1, 1, 0, map[RejectReason]int64{RejectExpired: 1})
	})

	// The rest of the RFC 7628 exchange, which pgx cuts short: the client
	// acknowledges the error status with \x01 and gets PostgreSQL 18's
	// error.
	t.Run("full failure exchange", func(t *testing.T) {
		fe := startupTLS(t, k.srv, alice.UPN)
		msg := receive(t, fe)
		sasl, ok := msg.(*pgproto3.AuthenticationSASL)
		if !ok || len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "OAUTHBEARER" {
			t.Fatalf("got %#v, want AuthenticationSASL [OAUTHBEARER]", msg)
		}
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "OAUTHBEARER", Data: []byte("n,,\x01auth=Bearer " + k.mint(User("bob@contoso.com"), time.Hour) + "\x01\x01")})
		flush(t, fe)
		cont, ok := receive(t, fe).(*pgproto3.AuthenticationSASLContinue)
		if !ok || !strings.Contains(string(cont.Data), `"status":"invalid_token"`) || !strings.Contains(string(cont.Data), ScopePublic) {
			t.Fatalf("got %#v, want SASLContinue with the invalid_token status and scope", cont)
		}
		fe.Send(&pgproto3.SASLResponse{Data: []byte{0x01}})
		flush(t, fe)
		errResp, ok := receive(t, fe).(*pgproto3.ErrorResponse)
		if !ok || errResp.Code != "28000" || errResp.Message != `OAuth bearer authentication failed for user "alice@contoso.com"` {
			t.Fatalf("got %#v, want FATAL 28000 OAuth bearer authentication failed", errResp)
		}
		if !strings.Contains(errResp.Detail, "oid claim") {
			t.Errorf("detail %q does not say why", errResp.Detail)
		}
		if got := k.srv.Stats().Rejected[RejectUserMismatch]; got != 1 {
			t.Errorf("Rejected[user_mismatch] = %d, want 1", got)
		}
	})

	t.Run("plaintext", func(t *testing.T) {
		_, err := connect(t, token, "sslmode=disable")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Message != msgSSLRequired {
			t.Fatalf("plaintext login: %v, want FATAL 28000 %q", scrubToken(fmt.Sprint(err), token), msgSSLRequired)
		}
		if got := k.srv.Stats().PlaintextPasswords; got != 1 {
			t.Errorf("PlaintextPasswords = %d, want 1", got)
		}
	})
	k.noToken(token)
}

func TestParseOAuthBearer(t *testing.T) {
	for _, tc := range []struct {
		in, token string
		bad       bool
	}{
		{in: "n,,\x01auth=Bearer abc.def.ghi\x01\x01", token: "abc.def.ghi"},
		{in: "y,,\x01host=x\x01auth=bearer   tok\x01port=5432\x01\x01", token: "tok"},
		{in: "n,,\x01auth=\x01\x01", token: ""}, // discovery
		{in: "p=tls-server-end-point,,\x01auth=Bearer t\x01\x01", bad: true},
		{in: "n,a=alice,\x01auth=Bearer t\x01\x01", bad: true},
		{in: "n,,\x01auth=Basic dXNlcjpwYXNz\x01\x01", bad: true},
		{in: "n,,\x01auth=Bearer t\x01", bad: true},
		{in: "n,,\x01\x01", bad: true},
		{in: "n,,auth=Bearer t\x01\x01", bad: true},
		{in: "n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", bad: true},
		{in: "", bad: true},
	} {
		got, err := parseOAuthBearer([]byte(tc.in))
		if (err != nil) != tc.bad || got != tc.token {
			t.Errorf("parseOAuthBearer(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.token, tc.bad)
		}
	}
}

func TestServerCancel(t *testing.T) {
	pg := pgtest.StartForTest(t)
	if err := pg.SetPassword(srvContext(t), "postgres", "admin-secret"); err != nil {
		t.Fatal(err)
	}
	for _, backend := range []struct{ name, dsn string }{
		{"unix socket backend", pg.AdminConnString()},
		{"TLS backend", pg.ConnString("postgres", "admin-secret")},
	} {
		t.Run(backend.name, func(t *testing.T) {
			k := startSrvKit(t, ServerConfig{BackendDSN: backend.dsn})
			alice := User("alice@contoso.com")
			k.addRole(alice.UPN, alice)
			cfg, err := pgx.ParseConfig(k.srv.ConnString("user=" + alice.UPN))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Password = k.mint(alice, time.Hour)
			// Cancel through the protocol when the context ends (pgx's
			// default only closes the connection).
			cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
				return &pgconn.CancelRequestContextWatcherHandler{Conn: c, CancelRequestDelay: 0, DeadlineDelay: 25 * time.Second}
			}
			conn, err := pgx.ConnectConfig(srvContext(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())

			ctx, cancel := context.WithTimeout(srvContext(t), 300*time.Millisecond)
			defer cancel()
			_, err = conn.Exec(ctx, "SELECT pg_sleep(30)")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("cancelled pg_sleep: %v, want SQLSTATE 57014 (query_canceled)", err)
			}
			if got := k.srv.Stats().CancelsForwarded; got != 1 {
				t.Errorf("CancelsForwarded = %d, want 1", got)
			}
			wantSSL := backend.name == "TLS backend"
			var ssl bool
			if err := conn.QueryRow(srvContext(t), "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)").Scan(&ssl); err != nil || ssl != wantSSL {
				t.Errorf("backend session over TLS: %v, %v; want %v", ssl, err, wantSSL)
			}
			// The session survives its cancelled query.
			if got := queryString(t, conn, "SELECT 'still here'"); got != "still here" {
				t.Errorf("after cancel: %q", got)
			}
		})
	}
	// A kit on someone else's backend leaves it running.
	if _, err := pg.Admin().Exec(srvContext(t), "SELECT 1"); err != nil {
		t.Errorf("backend after the kits closed: %v", err)
	}
}

func TestServerAddRole(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	ctx := srvContext(t)
	for _, tc := range []struct{ role, oid string }{
		{"", "x"},
		{"alice", ""},
		{"postgres", "x"}, // the admin
		{strings.Repeat("r", 64), "x"},
	} {
		if err := k.srv.AddRole(ctx, tc.role, tc.oid); err == nil {
			t.Errorf("AddRole(%q, %q) succeeded", tc.role, tc.oid)
		}
	}
	// Re-registering moves the role to another principal; an odd name is
	// quoted.
	alice, bob := User("alice@contoso.com"), User("bob@contoso.com")
	role := `we"ird role`
	k.addRole(role, alice)
	k.addRole(role, bob)
	if _, err := k.connect(ctx, role, k.mint(alice, time.Hour)); err == nil {
		t.Error("alice logged in to a role moved to bob")
	}
	conn := k.mustConnect(role, k.mint(bob, time.Hour))
	if got := queryString(t, conn, "SELECT current_user"); got != role {
		t.Errorf("current_user = %q, want %q", got, role)
	}
}

func TestServerProtocolErrors(t *testing.T) {
	k := startSrvKit(t, ServerConfig{AuthTimeout: time.Second})

	t.Run("no user", func(t *testing.T) {
		fe := startupTLS(t, k.srv, "")
		errResp, ok := receive(t, fe).(*pgproto3.ErrorResponse)
		if !ok || errResp.Code != "28000" || !strings.Contains(errResp.Message, "no PostgreSQL user name") {
			t.Fatalf("got %#v", errResp)
		}
	})
	t.Run("protocol 2", func(t *testing.T) {
		raw := dialSrv(t, k.srv)
		if _, err := raw.Write(untypedPacket(2 << 16)); err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(raw, raw)
		errResp, ok := receive(t, fe).(*pgproto3.ErrorResponse)
		if !ok || errResp.Code != "0A000" {
			t.Fatalf("got %#v", errResp)
		}
	})
	t.Run("silent client", func(t *testing.T) {
		// A client that never speaks is dropped after AuthTimeout; the
		// read below returning at all is the check (the test's own
		// deadline is the hang guard).
		raw := dialSrv(t, k.srv)
		if _, err := raw.Read(make([]byte, 1)); err == nil {
			t.Fatal("the server sent something to a silent client")
		}
	})
	if got := k.srv.Stats().Rejected[RejectProtocol]; got != 2 {
		t.Errorf("Rejected[protocol] = %d, want 2", got)
	}
}

func TestServerClose(t *testing.T) {
	k := startSrvKit(t, ServerConfig{})
	alice := User("alice@contoso.com")
	k.addRole(alice.UPN, alice)
	conn := k.mustConnect(alice.UPN, k.mint(alice, time.Hour))
	idle := dialSrv(t, k.srv) // a client stuck before its startup message
	caFile := k.srv.CAFile()

	if err := k.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := k.srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := conn.Exec(srvContext(t), "SELECT 1"); err == nil {
		t.Error("a session outlived Close")
	}
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("an unauthenticated connection outlived Close")
	}
	if _, err := os.Stat(caFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("CA file after Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", k.srv.Addr(), 5*time.Second); err == nil {
		c.Close()
		t.Error("the server still accepts connections after Close")
	}
}

func TestServerConnString(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "my dir")
	caPEM, _, err := newServerCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Server{host: "127.0.0.1", port: 5432, caFile: caFile}
	got := s.ConnString("user=alice@contoso.com", "application_name=it's")
	want := `host=127.0.0.1 port=5432 dbname=postgres sslmode=verify-full sslrootcert='` + caFile + `' user=alice@contoso.com application_name='it\'s'`
	if got != want {
		t.Errorf("ConnString =\n%s\nwant\n%s", got, want)
	}
	cfg, err := pgconn.ParseConfig(got)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != "alice@contoso.com" || cfg.RuntimeParams["application_name"] != "it's" || cfg.Port != 5432 {
		t.Errorf("parsed back: user %q, application_name %q, port %d", cfg.User, cfg.RuntimeParams["application_name"], cfg.Port)
	}
}

func TestScrubToken(t *testing.T) {
	tok := "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
	for _, s := range []string{
		"whole " + tok,
		"payload eyJvaWQiOiJ4In0 only",
		"signature c2lnbmF0dXJlc2lnbmF0dXJl only",
	} {
		got := scrubToken(s, tok)
		for part := range strings.SplitSeq(tok, ".") {
			if strings.Contains(got, part) {
				t.Errorf("scrubToken(%q) = %q still has %q", s, got, part)
			}
		}
	}
}

// dialSrv opens a TCP connection to the server, closed at cleanup.
func dialSrv(t *testing.T, s *Server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { c.Close() })
	return c
}

// untypedPacket is a startup-phase packet of just a code.
func untypedPacket(code uint32) []byte {
	return []byte{0, 0, 0, 8, byte(code >> 24), byte(code >> 16), byte(code >> 8), byte(code)}
}

// startupTLS connects with TLS (verifying the kit's CA) and sends a 3.0
// StartupMessage for user (none if empty).
func startupTLS(t *testing.T, s *Server, user string) *pgproto3.Frontend {
	t.Helper()
	raw := dialSrv(t, s)
	if _, err := raw.Write(untypedPacket(codeSSLRequest)); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(raw, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", b[0], err)
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: s.CertPool(), ServerName: "127.0.0.1"})
	fe := pgproto3.NewFrontend(tc, tc)
	params := map[string]string{"database": "postgres"}
	if user != "" {
		params["user"] = user
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params})
	flush(t, fe)
	return fe
}

func receive(t *testing.T, fe *pgproto3.Frontend) pgproto3.BackendMessage {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return msg
}

func flush(t *testing.T, fe *pgproto3.Frontend) {
	t.Helper()
	if err := fe.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}
