package bench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/jackc/pgx/v5"

	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
)

// Two paths to the same real PostgreSQL, both over verified TLS:
//
//   - direct: the client talks to PostgreSQL itself. The role's password
//     is the current token: roleCredential sets it (ALTER ROLE) as each
//     token is minted, as DESIGN.md describes. Only one token is valid at a
//     time, so this path serves benchmarks where one token is used
//     throughout (cold pool, connect throughput).
//   - relay: the client talks to an entratest.Server, which checks every
//     login's token like Azure (RS256 signature, audience, expiry, role)
//     and relays the session to the same PostgreSQL. Any valid token of the
//     principal is accepted, so it serves benchmarks where tokens change
//     under load (refresh stall), the per-connection baseline (a new token
//     per connect) and the real AzureCLICredential (whose tokens the fake
//     az mints out of our reach).
//
// Every variant of one benchmark takes the same path, so their figures
// compare.

var (
	directUser = entratest.User("direct@contoso.com")
	relayUser  = entratest.User("relay@contoso.com")
)

// sharedEnv is one PostgreSQL, one issuer and one entratest server for the
// whole test binary, started on first use and stopped by TestMain:
// benchmark functions run once per -count, and starting PostgreSQL each
// time would dominate the run.
var sharedEnv struct {
	once sync.Once
	pg   *pgtest.Server
	iss  *entratest.Issuer
	srv  *entratest.Server
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedEnv.srv != nil {
		if err := sharedEnv.srv.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the entratest server:", err)
		}
	}
	if sharedEnv.pg != nil {
		if err := sharedEnv.pg.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping PostgreSQL:", err)
		}
	}
	os.Exit(code)
}

// env is what a benchmark needs: the servers and the issuer.
type env struct {
	pg  *pgtest.Server
	iss *entratest.Issuer
	srv *entratest.Server
}

// startEnv returns the shared environment, skipping tb when PostgreSQL is
// not installed (failing under ENTRAAUTH_REQUIRE_PG=1).
func startEnv(tb testing.TB) *env {
	tb.Helper()
	sharedEnv.once.Do(func() { sharedEnv.err = setUp() })
	pgtest.SkipOrFail(tb, sharedEnv.err)
	return &env{pg: sharedEnv.pg, iss: sharedEnv.iss, srv: sharedEnv.srv}
}

func setUp() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		return err
	}
	sharedEnv.pg = pg
	if sharedEnv.iss, err = entratest.NewIssuer(); err != nil {
		return err
	}
	if err := pg.CreateRole(ctx, directUser.UPN, "not-a-token-yet"); err != nil {
		return err
	}
	sharedEnv.srv, err = entratest.NewServer(ctx, entratest.ServerConfig{Verifier: sharedEnv.iss, BackendDSN: pg.AdminConnString()})
	if err != nil {
		return err
	}
	return sharedEnv.srv.AddRole(ctx, relayUser.UPN, relayUser.ObjectID)
}

// directConnString names the role of the direct path explicitly, so every
// variant logs in as it.
func (e *env) directConnString() string { return e.pg.ConnString(directUser.UPN, "") }

func (e *env) relayConnString() string { return e.srv.ConnString("user=" + relayUser.UPN) }

// longToken mints a token valid for a day: the static password of the
// baselines, the same length and shape as the tokens the other variants
// send.
func (e *env) longToken(tb testing.TB, p entratest.Principal) string {
	tb.Helper()
	at, err := e.iss.Mint(p, entratest.ScopePublic, 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return at.Token
}

// directStaticPassword makes a day-long token the direct role's password
// and returns it.
func (e *env) directStaticPassword(tb testing.TB) string {
	tb.Helper()
	tok := e.longToken(tb, directUser)
	if err := e.pg.SetPassword(context.Background(), directUser.UPN, tok); err != nil {
		tb.Fatal(err)
	}
	return tok
}

// Hook is a pgxpool.Config.BeforeConnect function.
type Hook = func(context.Context, *pgx.ConnConfig) error

// staticHook is the floor: it only sets a fixed password.
func staticHook(password string) Hook {
	return func(_ context.Context, cfg *pgx.ConnConfig) error {
		cfg.Password = password
		return nil
	}
}

// perConnectionHook asks the credential for a token on every connection,
// as Microsoft's samples for Python, JavaScript and .NET do.
func perConnectionHook(cred azcore.TokenCredential) Hook {
	return func(ctx context.Context, cfg *pgx.ConnConfig) error {
		tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{entratest.ScopePublic}})
		if err != nil {
			return err
		}
		cfg.Password = tok.Token
		return nil
	}
}

// roleCredential is the fake credential of the direct path: it mints a
// token with an entratest.Credential, makes it the role's password (the
// way Azure accepts the principal's current token), and answers after
// latency in all, counted from the call, so the ALTER ROLE is hidden inside
// the credential's latency rather than added to it.
type roleCredential struct {
	inner   *entratest.Credential
	pg      *pgtest.Server
	role    string
	latency time.Duration
	calls   atomic.Int64
}

func newRoleCredential(e *env, latency time.Duration) *roleCredential {
	return &roleCredential{inner: entratest.NewCredential(e.iss, directUser), pg: e.pg, role: directUser.UPN, latency: latency}
}

// GetToken implements azcore.TokenCredential.
func (c *roleCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	start := time.Now()
	c.calls.Add(1)
	at, err := c.inner.GetToken(ctx, opts)
	if err != nil {
		return at, err
	}
	if err := c.pg.SetPassword(ctx, c.role, at.Token); err != nil {
		return azcore.AccessToken{}, err
	}
	if d := c.latency - time.Since(start); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return azcore.AccessToken{}, ctx.Err()
		}
	}
	return at, nil
}

// parseConfig parses a connection string or fails tb.
func parseConfig(tb testing.TB, connString string) *pgx.ConnConfig {
	tb.Helper()
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// connect opens one connection the way pgxpool does: a copy of the
// config, the hook, then pgx.ConnectConfig. It returns the connection and
// the time spent in the hook.
func connect(ctx context.Context, base *pgx.ConnConfig, hook Hook) (*pgx.Conn, time.Duration, error) {
	cfg := base.Copy()
	start := time.Now()
	if err := hook(ctx, cfg); err != nil {
		return nil, 0, err
	}
	inHook := time.Since(start)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	return conn, inHook, err
}

// unsetenv unsets key for the rest of tb (tb.Setenv restores it).
func unsetenv(tb testing.TB, key string) {
	tb.Helper()
	tb.Setenv(key, "")
	if err := os.Unsetenv(key); err != nil {
		tb.Fatal(err)
	}
}
