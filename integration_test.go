package entraauth_test

// Integration tests: entraauth through pgxpool and database/sql against the
// entratest server, which checks tokens the way Azure Database for
// PostgreSQL does and relays sessions to a real, throwaway PostgreSQL.
// They skip without PostgreSQL server binaries (fail under
// ENTRAAUTH_REQUIRE_PG=1).

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
)

// logLines collects the entratest server's log lines, so a test can show
// them when it fails and search them for tokens.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// newEntraServer starts an issuer and an entratest server checking its
// tokens in front of a throwaway PostgreSQL; both go away with the test.
// It skips without PostgreSQL binaries (fails under ENTRAAUTH_REQUIRE_PG=1).
func newEntraServer(t *testing.T) (*entratest.Issuer, *entratest.Server, *logLines) {
	t.Helper()
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	logs := &logLines{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss, Logf: logs.logf})
	pgtest.SkipOrFail(t, err) // entratest.ErrNoPostgreSQL wraps pgtest.ErrNoBinaries
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("entratest server log:\n%s", logs)
		}
	})
	return iss, srv, logs
}

func addRole(t *testing.T, srv *entratest.Server, role, objectID string) {
	t.Helper()
	if err := srv.AddRole(context.Background(), role, objectID); err != nil {
		t.Fatal(err)
	}
}

// newPool opens a pgx pool on connString whose connections authenticate
// through before; configure, if not nil, adjusts the config first.
func newPool(t *testing.T, connString string, before func(context.Context, *pgx.ConnConfig) error, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BeforeConnect = before
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// unsetenv unsets key for the rest of the test (t.Setenv restores it).
// azidentity tells an unset variable from an empty one.
func unsetenv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "")
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}

// clearAzureEnv keeps the machine's Azure and PG… settings out of a test
// using the real azidentity credentials.
func clearAzureEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{
		"AZURE_TOKEN_CREDENTIALS", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
		"AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
		"AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST",
		"AZURE_ADDITIONALLY_ALLOWED_TENANTS", "PGUSER", "PGPASSWORD",
	} {
		unsetenv(t, k)
	}
}

// TestRotationUnderLoad runs a pgx pool and a database/sql pool, each
// with connections living one second, against a server that checks every
// login like Azure, while tokens live five seconds: 8 goroutines query for
// 20 seconds across several token rotations and no query may fail, no
// login may be rejected (expired tokens above all), and the credential is
// asked at most once per half-life per TokenSource, however many
// connections open.
func TestRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 20 seconds; skipped with -short")
	}
	const (
		tokenLife = 5 * time.Second
		connLife  = time.Second
		runFor    = 20 * time.Second
		workers   = 8
	)
	unsetenv(t, "PGUSER")
	iss, srv, _ := newEntraServer(t)
	alice := entratest.User("rotation@contoso.com")
	addRole(t, srv, alice.UPN, alice.ObjectID)
	cred := entratest.NewCredential(iss, alice)
	cred.SetLifetime(tokenLife)

	start := time.Now()
	// The pool and the database handle each have their own TokenSource,
	// as Hook and Connector make them.
	pool := newPool(t, srv.ConnString(), entraauth.Hook(cred, entraauth.WithRequireVerifiedTLS()), func(cfg *pgxpool.Config) {
		cfg.MaxConns = 4
		cfg.MaxConnLifetime = connLife
		cfg.MaxConnLifetimeJitter = connLife / 4
		cfg.HealthCheckPeriod = connLife / 4
	})
	db := sql.OpenDB(entraauth.Connector(srv.ConnString(), cred, entraauth.WithRequireVerifiedTLS()))
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(4)
	db.SetConnMaxLifetime(connLife)

	var poolQueries, dbQueries atomic.Int64
	failures := queryLoad(t, workers, start.Add(runFor), alice.UPN, func(ctx context.Context, w, i int) (user string, err error) {
		if (w+i)%2 == 0 {
			poolQueries.Add(1)
			err = pool.QueryRow(ctx, "select current_user").Scan(&user)
		} else {
			dbQueries.Add(1)
			err = db.QueryRowContext(ctx, "select current_user").Scan(&user)
		}
		return user, err
	})
	elapsed := time.Since(start)

	st := srv.Stats()
	t.Logf("%d queries through pgxpool, %d through database/sql in %v; server: %d logins, %d distinct tokens, rejected %v; credential calls %d",
		poolQueries.Load(), dbQueries.Load(), elapsed.Round(time.Millisecond), st.Accepted, st.DistinctTokens, st.Rejected, cred.Calls())
	if failures != 0 {
		t.Errorf("%d queries failed, want 0", failures)
	}
	if poolQueries.Load() == 0 || dbQueries.Load() == 0 {
		t.Errorf("queries: pgxpool %d, database/sql %d; want both > 0", poolQueries.Load(), dbQueries.Load())
	}
	if n := st.Rejected[entratest.RejectExpired]; n != 0 {
		t.Errorf("server rejected %d expired tokens, want 0", n)
	}
	if n := st.TotalRejected(); n != 0 {
		t.Errorf("server rejected %d logins (%v), want 0", n, st.Rejected)
	}
	if st.PlaintextPasswords != 0 {
		t.Errorf("%d tokens arrived without TLS", st.PlaintextPasswords)
	}
	if st.DistinctTokens < 3 {
		t.Errorf("server saw %d distinct tokens, want at least 3 (tokens rotate every %v)", st.DistinctTokens, tokenLife/2)
	}
	// Connections really were replaced: each pool reopens its connections
	// about every second for 20 seconds.
	if st.Accepted < 20 {
		t.Errorf("server accepted %d logins, want at least 20 (connections live %v)", st.Accepted, connLife)
	}
	// Each new token is refreshed no sooner than its half-life less the
	// refresh jitter window (a tenth of its life), so each of the two
	// TokenSources asks at most once per 0.4 lives plus once at the start,
	// however many connections open.
	if maxCalls := 2 * (int64(elapsed/(tokenLife*4/10)) + 1); cred.Calls() > maxCalls {
		t.Errorf("credential called %d times in %v, want at most %d", cred.Calls(), elapsed, maxCalls)
	}
}

// TestDefaultAzureCredentialManagedIdentity: the real
// DefaultAzureCredential gets tokens from the App Service managed
// identity emulator, and with no user in the connection string the user
// is the identity's name, from the xms_mirid claim of a Resource Manager
// token: two requests in all, shared by a pool and a database handle.
func TestDefaultAzureCredentialManagedIdentity(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	id := entratest.ManagedIdentity("orders-api")
	addRole(t, srv, "orders-api", id.ObjectID)
	mi, err := entratest.NewManagedIdentityEndpoint(iss, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mi.Close)
	mi.Setenv(t)

	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := entraauth.NewTokenSource(cred, entraauth.WithRequireVerifiedTLS())
	pool := newPool(t, srv.ConnString(), ts.BeforeConnect, nil)
	db := sql.OpenDB(ts.Connector(srv.ConnString()))
	t.Cleanup(func() { _ = db.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var poolUser, dbUser string
	if err := pool.QueryRow(ctx, "select current_user").Scan(&poolUser); err != nil {
		t.Fatalf("pgxpool: %v", err)
	}
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&dbUser); err != nil {
		t.Fatalf("database/sql: %v", err)
	}
	if poolUser != "orders-api" || dbUser != "orders-api" {
		t.Errorf("current_user: pgxpool %q, database/sql %q; want orders-api", poolUser, dbUser)
	}
	// One database token and one Resource Manager token.
	if n := mi.Requests(); n != 2 {
		t.Errorf("managed identity endpoint got %d requests, want 2 (database and Resource Manager scopes)", n)
	}
	if st := ts.Stats(); st.Fetches != 2 || st.FailedFetches != 0 {
		t.Errorf("TokenSource stats %+v, want 2 fetches and no failure", st)
	}
	if st := srv.Stats(); st.Accepted != 2 || st.DistinctTokens != 1 || st.TotalRejected() != 0 {
		t.Errorf("server stats %+v, want 2 logins with 1 token and no rejection", st)
	}
}

// TestAzureCLICredentialColdPool: 30 connections opened at once through
// the real AzureCLICredential, whose az takes 300 ms, run az once.
func TestAzureCLICredentialColdPool(t *testing.T) {
	const conns = 30
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	alice := entratest.User("cli-alice@contoso.com")
	addRole(t, srv, alice.UPN, alice.ObjectID)
	az, err := entratest.NewAzureCLI(iss, alice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Close)
	az.SetLatency(300 * time.Millisecond)
	az.Setenv(t)

	cred, err := azidentity.NewAzureCLICredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := newPool(t, srv.ConnString(), entraauth.Hook(cred, entraauth.WithRequireVerifiedTLS()), func(cfg *pgxpool.Config) {
		cfg.MaxConns = conns
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Each goroutine holds its connection until all have one, so the pool
	// opens 30 connections, all cold.
	var acquired, wg sync.WaitGroup
	acquired.Add(conns)
	release := make(chan struct{})
	for i := range conns {
		wg.Go(func() {
			c, err := pool.Acquire(ctx)
			acquired.Done()
			if err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			defer c.Release()
			var user string
			if err := c.QueryRow(ctx, "select current_user").Scan(&user); err != nil || user != alice.UPN {
				t.Errorf("connection %d: current_user %q, %v; want %q", i, user, err, alice.UPN)
			}
			<-release
		})
	}
	acquired.Wait()
	close(release)
	wg.Wait()

	if n := az.Invocations(); n != 1 {
		t.Errorf("az ran %d times for %d cold connections, want 1", n, conns)
	}
	if st := srv.Stats(); st.Accepted != conns || st.DistinctTokens != 1 {
		t.Errorf("server: %d logins with %d distinct tokens, want %d with 1", st.Accepted, st.DistinctTokens, conns)
	}
	if n := pool.Stat().TotalConns(); n != conns {
		t.Errorf("pool has %d connections, want %d", n, conns)
	}
}

// recordingCredential wraps a credential and keeps every token it hands
// out, so a test can search what it captured for them. With stale set it
// behaves like a credential whose cache serves a token past its expiry:
// it waits until the server would reject the token, then reports it as
// living another hour.
type recordingCredential struct {
	cred  azcore.TokenCredential
	stale bool

	mu     sync.Mutex
	tokens []string
}

func (r *recordingCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	at, err := r.cred.GetToken(ctx, opts)
	if err != nil {
		return at, err
	}
	r.mu.Lock()
	r.tokens = append(r.tokens, at.Token)
	r.mu.Unlock()
	if r.stale {
		claims := jwt.MapClaims{}
		if _, _, err := jwt.NewParser().ParseUnverified(at.Token, claims); err != nil {
			return azcore.AccessToken{}, err
		}
		exp, err := claims.GetExpirationTime()
		if err != nil || exp == nil {
			return azcore.AccessToken{}, errors.New("token without exp")
		}
		// The server allows a second of clock skew.
		wait := time.NewTimer(time.Until(exp.Add(1100 * time.Millisecond)))
		defer wait.Stop()
		select {
		case <-ctx.Done():
			return azcore.AccessToken{}, ctx.Err()
		case <-wait.C:
		}
		at.ExpiresOn = time.Now().Add(time.Hour)
	}
	return at, nil
}

func (r *recordingCredential) Tokens() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

// TestServerRejectsWhatAzureRejects connects through entraauth, with both
// a pgx pool and database/sql, with tokens Azure would refuse: each login
// is refused by the server for the right reason, the client's error is the
// server's (a *pgconn.PgError with Azure's message), and no error, no
// PgError field and no server log line holds any token handed out.
func TestServerRejectsWhatAzureRejects(t *testing.T) {
	unsetenv(t, "PGUSER")
	iss, srv, logs := newEntraServer(t)
	otherIss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	alice := entratest.User("alice@contoso.com")
	bob := entratest.User("bob@contoso.com")
	addRole(t, srv, alice.UPN, alice.ObjectID)
	addRole(t, srv, bob.UPN, bob.ObjectID)

	const (
		msgExpired  = "The access token has expired. Please acquire a new token and retry."
		msgInvalid  = "An error occurred while validating the access token. Please acquire a new token and retry."
		msgAudience = `The access token does not have a valid audience claim. Please acquire a new token for the resource "` + entratest.DefaultAudience + `".`
	)
	shortLived := entratest.NewCredential(iss, alice)
	shortLived.SetLifetime(time.Second)
	cases := []struct {
		name    string
		cred    *recordingCredential
		opts    []entraauth.Option
		extra   []string // connection string items
		reason  entratest.RejectReason
		message string
	}{
		{"expired", &recordingCredential{cred: shortLived, stale: true}, nil, nil, entratest.RejectExpired, msgExpired},
		{"wrong audience", &recordingCredential{cred: entratest.NewCredential(iss, alice)},
			[]entraauth.Option{entraauth.WithScope(entratest.ScopeChina)}, nil, entratest.RejectAudience, msgAudience},
		{"bad signature", &recordingCredential{cred: entratest.NewCredential(otherIss, alice)}, nil, nil, entratest.RejectSignature, msgInvalid},
		{"user mismatch", &recordingCredential{cred: entratest.NewCredential(iss, alice)}, nil, []string{"user=" + bob.UPN},
			entratest.RejectUserMismatch, `password authentication failed for user "` + bob.UPN + `"`},
	}

	var errs []error
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			connString := srv.ConnString(tc.extra...)
			ts := entraauth.NewTokenSource(tc.cred, tc.opts...)
			before := srv.Stats().Rejected[tc.reason]
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			pool := newPool(t, connString, ts.BeforeConnect, nil)
			poolErr := pool.Ping(ctx)
			db := sql.OpenDB(ts.Connector(connString))
			defer db.Close()
			dbErr := db.PingContext(ctx)

			for _, c := range []struct {
				via string
				err error
			}{{"pgxpool", poolErr}, {"database/sql", dbErr}} {
				if c.err == nil {
					t.Errorf("%s: connected, want the server to refuse", c.via)
					continue
				}
				errs = append(errs, c.err)
				t.Logf("%s: %v", c.via, c.err)
				var pgErr *pgconn.PgError
				if !errors.As(c.err, &pgErr) {
					t.Errorf("%s: %v, want a *pgconn.PgError from the server", c.via, c.err)
					continue
				}
				if pgErr.Code != "28P01" || pgErr.Message != tc.message {
					t.Errorf("%s: SQLSTATE %s %q, want 28P01 %q", c.via, pgErr.Code, pgErr.Message, tc.message)
				}
				if !strings.Contains(c.err.Error(), tc.message) {
					t.Errorf("%s: error %q does not carry the server's message", c.via, c.err)
				}
			}
			if n := srv.Stats().Rejected[tc.reason] - before; n != 2 {
				t.Errorf("server counted %d %s rejections, want 2", n, tc.reason)
			}
			if n := len(tc.cred.Tokens()); n != 1 {
				t.Errorf("credential handed out %d tokens, want 1 (one TokenSource for both)", n)
			}
		})
	}
	if st := srv.Stats(); st.Accepted != 0 {
		t.Errorf("server accepted %d logins, want 0", st.Accepted)
	}

	// Every token handed out, searched for in everything the client and
	// the server said.
	var tokens []string
	for _, tc := range cases {
		tokens = append(tokens, tc.cred.Tokens()...)
	}
	if len(tokens) == 0 {
		t.Fatal("no token was handed out")
	}
	serverLog := logs.String()
	for _, tok := range tokens {
		for _, err := range errs {
			for _, s := range errorTexts(err) {
				if strings.Contains(s, tok) {
					t.Errorf("a token appears in the client's error: %s", strings.ReplaceAll(s, tok, "[TOKEN]"))
				}
			}
		}
		if strings.Contains(serverLog, tok) {
			t.Error("a token appears in the server's log")
		}
	}
}

// errorTexts returns what a program might print of err: its message, %+v
// and %#v, and every string field of a *pgconn.PgError in its chain.
func errorTexts(err error) []string {
	texts := []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		v := reflect.ValueOf(pgErr).Elem()
		for i := range v.NumField() {
			if f := v.Field(i); f.Kind() == reflect.String {
				texts = append(texts, f.String())
			}
		}
	}
	return texts
}

// queryLoad runs workers goroutines until end, each running query (its
// w-th worker's i-th, which returns current_user) under a 30-second
// timeout, and returns how many failed or named another user than
// wantUser; the first such failure is reported.
func queryLoad(t *testing.T, workers int, end time.Time, wantUser string, query func(ctx context.Context, w, i int) (string, error)) int64 {
	t.Helper()
	var (
		failures atomic.Int64
		firstErr sync.Once
		wg       sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				user, err := query(ctx, w, i)
				cancel()
				if err == nil && user != wantUser {
					err = fmt.Errorf("current_user = %q, want %q", user, wantUser)
				}
				if err != nil {
					failures.Add(1)
					firstErr.Do(func() { t.Errorf("worker %d, query %d: %v", w, i, err) })
				}
			}
		})
	}
	wg.Wait()
	return failures.Load()
}
