package entraauth

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgentra/entraauth/internal/pgtest"
)

// roleCredential returns a fake credential whose every new database token
// becomes the role's password on the real server, the way Azure accepts
// the current token of the principal.
func roleCredential(t *testing.T, pg *pgtest.Server, role, upn, mirid string) *fakeCredential {
	t.Helper()
	ctx := context.Background()
	// The role may exist from an earlier run of the test (-count).
	if err := pg.CreateRole(ctx, role, "not-a-token-yet"); err != nil {
		if err := pg.SetPassword(ctx, role, "not-a-token-yet"); err != nil {
			t.Fatal(err)
		}
	}
	cred := newFakeCredential(upn)
	cred.mirid = mirid
	cred.onMint = func(token string) {
		if err := pg.SetPassword(ctx, role, token); err != nil {
			t.Errorf("setting the role's password: %v", err)
		}
	}
	return cred
}

func newPool(t *testing.T, connString string, hook func(context.Context, *pgx.ConnConfig) error, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BeforeConnect = hook
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func currentUser(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (string, error) {
	var user string
	err := q.QueryRow(ctx, "select current_user").Scan(&user)
	return user, err
}

func TestPoolColdStartSharesOneFetchOverVerifiedTLS(t *testing.T) {
	t.Setenv("PGUSER", "")
	pg := testServer(t)
	cred := roleCredential(t, pg, "alice@contoso.com", "alice@contoso.com", "")
	cred.latency = 200 * time.Millisecond
	pool := newPool(t, pg.ConnString("", ""), Hook(cred, WithRequireVerifiedTLS()), 16)

	ctx := context.Background()
	var wg sync.WaitGroup
	conns := make([]*pgxpool.Conn, 16)
	for i := range conns {
		wg.Go(func() {
			c, err := pool.Acquire(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			conns[i] = c
			var user string
			var ssl bool
			if err := c.QueryRow(ctx, "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&user, &ssl); err != nil {
				t.Error(err)
			} else if user != "alice@contoso.com" || !ssl {
				t.Errorf("current_user = %q, ssl = %v", user, ssl)
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Release()
		}
	}
	if n := pool.Stat().TotalConns(); n != 16 {
		t.Fatalf("pool has %d connections, want 16", n)
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d for 16 cold connections, want 1", n)
	}
}

func TestNewTokenIsUsedAfterRefresh(t *testing.T) {
	pg := testServer(t)
	clock := newTestClock()
	cred := roleCredential(t, pg, "refresh@contoso.com", "refresh@contoso.com", "")
	cred.clock, cred.lifetime = clock.Now, 10*time.Minute
	ts := NewTokenSource(cred)
	ts.now = clock.Now
	db := sql.OpenDB(ts.Connector(pg.ConnString("", "")))
	defer db.Close()
	db.SetMaxIdleConns(0) // every query opens a new connection
	ctx := context.Background()

	var user string
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil || user != "refresh@contoso.com" {
		t.Fatalf("first connection: %q, %v", user, err)
	}
	first := cred.allMinted()[0]

	clock.Advance(6 * time.Minute) // past the refresh point (5 minutes before expiry)
	if _, err := ts.Token(ctx); err != nil {
		t.Fatal(err)
	}
	cred.waitReturned(t, 2)
	waitIdle(t, ts)

	// The role now only accepts the new token: this connect succeeds only
	// if the hook sends it.
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil {
		t.Fatalf("connection after refresh: %v", err)
	}
	old, err := pgx.Connect(ctx, pg.ConnString("refresh@contoso.com", first))
	if err == nil {
		old.Close(ctx)
		t.Fatal("the first token still works: the test cannot tell which token was sent")
	}
	if s := ts.Stats(); s.Fetches != 2 {
		t.Fatalf("fetches = %d, want 2", s.Fetches)
	}
}

func TestManagedIdentityUserNameEndToEnd(t *testing.T) {
	t.Setenv("PGUSER", "")
	pg := testServer(t)
	mirid := "/subscriptions/0000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders-api"
	cred := roleCredential(t, pg, "orders-api", "", mirid)
	pool := newPool(t, pg.ConnString("", ""), Hook(cred), 4)
	user, err := currentUser(context.Background(), pool)
	if err != nil || user != "orders-api" {
		t.Fatalf("current_user = %q, %v", user, err)
	}
	scopes := cred.requestedScopes()
	if len(scopes) != 2 || scopes[1] != "https://management.azure.com/.default" {
		t.Fatalf("scopes = %v", scopes)
	}
}

// countingDialer counts TCP connections pgx opens.
type countingDialer struct{ n atomic.Int64 }

func (d *countingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func TestPlaintextIsRefusedBeforeAnythingIsSent(t *testing.T) {
	pg := testServer(t)
	cred := roleCredential(t, pg, "plain1@contoso.com", "plain1@contoso.com", "")
	cfg := connConfig(t, pg.ConnString("plain1@contoso.com", "", "sslmode=disable"))
	dialer := &countingDialer{}
	cfg.DialFunc = dialer.dial
	hook := Hook(cred)
	err := hook(context.Background(), cfg)
	if !errors.Is(err, ErrInsecureTransport) {
		t.Fatalf("err = %v, want ErrInsecureTransport", err)
	}
	if dialer.n.Load() != 0 || cred.calls.Load() != 0 {
		t.Fatalf("dials = %d, credential calls = %d; want none", dialer.n.Load(), cred.calls.Load())
	}
}

// tlsRefusingProxy answers "N" to every SSLRequest (as a server without TLS
// does) and relays everything else to target, counting connections and
// plaintext startup messages.
type tlsRefusingProxy struct {
	ln        net.Listener
	target    string
	conns     atomic.Int64
	plaintext atomic.Int64
	wg        sync.WaitGroup
	mu        sync.Mutex
	open      []net.Conn // closed at cleanup so a failing test cannot hang
}

func newTLSRefusingProxy(t *testing.T, target string) *tlsRefusingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsRefusingProxy{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.open {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *tlsRefusingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.track(c)
		p.wg.Go(func() { p.relay(c) })
	}
}

func (p *tlsRefusingProxy) track(c net.Conn) {
	p.mu.Lock()
	p.open = append(p.open, c)
	p.mu.Unlock()
}

func (p *tlsRefusingProxy) relay(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	if string(buf[4:]) == "\x04\xd2\x16\x2f" { // SSLRequest code 80877103
		if _, err := c.Write([]byte("N")); err != nil {
			return
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
	}
	p.plaintext.Add(1)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.track(up)
	defer up.Close()
	if _, err := up.Write(buf); err != nil {
		return
	}
	done := make(chan struct{})
	go func() { _, _ = io.Copy(up, c); up.Close(); close(done) }()
	_, _ = io.Copy(c, up)
	c.Close()
	<-done
}

func TestPreferNeverFallsBackToPlaintext(t *testing.T) {
	pg := testServer(t)
	cred := roleCredential(t, pg, "plain2@contoso.com", "plain2@contoso.com", "")
	proxy := newTLSRefusingProxy(t, net.JoinHostPort(pg.Host, itoa(int(pg.Port))))
	_, port, _ := net.SplitHostPort(proxy.ln.Addr().String())
	connString := "host=127.0.0.1 port=" + port + " dbname=postgres user=plain2@contoso.com sslmode=prefer connect_timeout=10"
	ctx := context.Background()

	cfg := connConfig(t, connString)
	if err := Hook(cred)(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if conn, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		conn.Close(ctx)
		t.Fatal("connected although the server refused TLS")
	}
	if proxy.conns.Load() != 1 || proxy.plaintext.Load() != 0 {
		t.Fatalf("connections = %d, plaintext startups = %d; want 1 and 0", proxy.conns.Load(), proxy.plaintext.Load())
	}

	// Control: with plaintext allowed, pgx's fallback does carry the token
	// in plaintext, so the check above is meaningful.
	cfg = connConfig(t, connString)
	if err := Hook(cred, WithInsecurePlaintextForLocalDevelopment())(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("control connection: %v", err)
	}
	conn.Close(ctx)
	if proxy.plaintext.Load() != 1 {
		t.Fatalf("plaintext startups = %d, want 1 in the control", proxy.plaintext.Load())
	}
}

func TestUnixSocketNeedsNoTLS(t *testing.T) {
	pg := testServer(t)
	cred := roleCredential(t, pg, "local@contoso.com", "local@contoso.com", "")
	connString := "host=" + pg.SocketDir + " port=" + itoa(int(pg.Port)) + " dbname=postgres sslmode=disable user=local@contoso.com"
	db := sql.OpenDB(Connector(connString, cred))
	defer db.Close()
	var user string
	if err := db.QueryRow("select current_user").Scan(&user); err != nil || user != "local@contoso.com" {
		t.Fatalf("current_user = %q, %v", user, err)
	}
}

func TestCredentialFailureReachesTheCaller(t *testing.T) {
	pg := testServer(t)
	cred := roleCredential(t, pg, "fail@contoso.com", "fail@contoso.com", "")
	cred.failWith(errBoom)
	db := sql.OpenDB(Connector(pg.ConnString("", ""), cred))
	defer db.Close()
	err := db.PingContext(context.Background())
	var fake *fakeCredError
	var credErr *CredentialError
	if !errors.As(err, &fake) || !errors.As(err, &credErr) {
		t.Fatalf("err = %v, want the credential's error wrapped in a CredentialError", err)
	}
	// Until the backoff ends, callers share the failure at once; then the
	// next one asks the credential again.
	cred.failWith(nil)
	err = db.PingContext(context.Background())
	var backoff *BackoffError
	if errors.As(err, &backoff) {
		time.Sleep(time.Until(backoff.RetryAt))
		err = db.PingContext(context.Background())
	}
	if err != nil {
		t.Fatalf("after the credential recovered: %v", err)
	}
}

func TestCancelledConnectReturnsPromptlyAndTheFetchStillLands(t *testing.T) {
	pg := testServer(t)
	cred := roleCredential(t, pg, "slow@contoso.com", "slow@contoso.com", "")
	release := cred.hold()
	defer release()
	ts := NewTokenSource(cred)
	db := sql.OpenDB(ts.Connector(pg.ConnString("", "")))
	defer db.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := db.PingContext(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	release()
	cred.waitReturned(t, 1)
	waitIdle(t, ts)
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d, want 1: the abandoned fetch's token is used", n)
	}
}

func TestConnectorReportsBadConnectionString(t *testing.T) {
	db := sql.OpenDB(Connector("host=h port=notaport password=hunter2-secret", newFakeCredential("a")))
	defer db.Close()
	err := db.PingContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "invalid connection string") || strings.Contains(err.Error(), "hunter2-secret") {
		t.Fatalf("err = %v", err)
	}
}

func TestRejectedTokenDoesNotLeakIntoTheError(t *testing.T) {
	pg := testServer(t)
	ctx := context.Background()
	if err := pg.CreateRole(ctx, "rejected@contoso.com", "some-other-password"); err != nil {
		if err := pg.SetPassword(ctx, "rejected@contoso.com", "some-other-password"); err != nil { // left by an earlier -count run
			t.Fatal(err)
		}
	}
	cred := newFakeCredential("rejected@contoso.com")
	pool := newPool(t, pg.ConnString("", ""), Hook(cred), 2)
	err := pool.Ping(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("err = %v, want SQLSTATE 28P01", err)
	}
	for _, tok := range cred.allMinted() {
		if strings.Contains(err.Error(), tok) {
			t.Fatal("the error contains the token")
		}
	}
}
