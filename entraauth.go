// Package entraauth makes Microsoft Entra ID authentication to Azure
// Database for PostgreSQL just work for pgx and database/sql, and so for
// every Go library built on them.
//
// Azure Database for PostgreSQL accepts an Entra access token as the
// password of a principal-named role. entraauth fetches that token from any
// azcore.TokenCredential, caches it, refreshes it ahead of expiry in the
// background, shares one fetch among every connection that needs it, fills
// in the user name from the token's claims, and refuses to send the token
// without TLS. The connection string names no password and, usually, no
// user. Nothing needs closing and no goroutine outlives a token fetch.
//
// Every snippet below starts from a credential and a connection string:
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	dsn := "host=mysrv.postgres.database.azure.com dbname=app sslmode=verify-full"
//
// # pgxpool
//
// Set the pool's BeforeConnect to Hook; every new connection gets the
// cached token:
//
//	cfg, err := pgxpool.ParseConfig(dsn)
//	cfg.BeforeConnect = entraauth.Hook(cred)
//	pool, err := pgxpool.NewWithConfig(ctx, cfg)
//
// # database/sql
//
// Open the DB on Connector instead of a driver name and DSN:
//
//	db := sql.OpenDB(entraauth.Connector(dsn, cred))
//
// A connection string pgx cannot parse, or a credential that fails, is
// reported by db.PingContext and the first query.
//
// # GORM, sqlx, bun, ent
//
// Each takes an existing *sql.DB: open it on Connector as above and hand it
// over instead of a DSN.
//
//	gormDB, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{}) // gorm.io/driver/postgres
//	sqlxDB := sqlx.NewDb(db, "pgx")                                                  // github.com/jmoiron/sqlx
//	bunDB := bun.NewDB(db, pgdialect.New())                                          // github.com/uptrace/bun, in place of pgdriver
//	client := ent.NewClient(ent.Driver(entsql.OpenDB(dialect.Postgres, db)))         // entgo.io/ent, your generated package ent
//
// Runnable programs for each, tested against a local emulator, are in the
// module github.com/pgentra/entraauth/examples/orm.
//
// # A single pgx connection
//
// pgx.Connect takes no hook: parse the configuration, let Hook (or a
// TokenSource's BeforeConnect) fill in the user and token, then connect.
//
//	cfg, err := pgx.ParseConfig(dsn)
//	err = entraauth.Hook(cred)(ctx, cfg)
//	conn, err := pgx.ConnectConfig(ctx, cfg)
//
// An open connection outlives its token, but each new connection needs a
// current one: for connections opened over time, keep one TokenSource and
// call its BeforeConnect for each, or use a pool.
//
// # One token cache for several pools
//
// Hook and Connector each make their own TokenSource. To share one token
// among pools, make the TokenSource yourself:
//
//	ts := entraauth.NewTokenSource(cred)
//	cfg.BeforeConnect = ts.BeforeConnect
//	db := sql.OpenDB(ts.Connector(dsn))
//
// TokenSource.Token gives the token itself, for a tool that needs it.
//
// # Azure Service Connector
//
// An app connected with Service Connector finds its server and identity in
// AZURE_POSTGRESQL_CONNECTIONSTRING (or _HOST, _DATABASE, …) and
// AZURE_POSTGRESQL_CLIENTID. One call reads them, picks the credential and
// returns a pool or a DB (hand the DB to an ORM as above):
//
//	pool, err := entraauth.NewPoolFromEnv(ctx, "")
//	db, err := entraauth.OpenDBFromEnv("")
//
// LoadEnv returns the parsed settings for building a pool of one's own.
//
// # Credentials
//
// Any azcore.TokenCredential works. The usual ones, from package azidentity:
//
//   - NewDefaultAzureCredential(nil): the environment's service principal,
//     workload identity on AKS, a managed identity (a user-assigned one
//     named by AZURE_CLIENT_ID), then the developer tools (az login, azd
//     auth login, Azure PowerShell). One line for local development and
//     production.
//   - NewManagedIdentityCredential with ID: azidentity.ClientID("…"): a
//     user-assigned managed identity. entraauth finds its role name (the
//     identity's name) from an Azure Resource Manager token.
//   - NewWorkloadIdentityCredential(nil): AKS workload identity, from the
//     variables its webhook sets.
//   - NewAzureCLICredential(nil): whoever ran az login.
//
// Service principals' tokens carry no name: set the role with WithUser or
// user= in the connection string.
//
// # psql, pgAdmin and other tools
//
// The pgentra command (github.com/pgentra/entraauth/cmd/pgentra) prints a
// token for PGPASSWORD or pgAdmin's password exec command, and runs psql
// with one:
//
//	PGPASSWORD=$(pgentra token) psql "host=mysrv.postgres.database.azure.com dbname=app user=alice@contoso.com sslmode=verify-full"
//	pgentra psql -h mysrv.postgres.database.azure.com -d app
//
// # TLS
//
// sslmode=disable over TCP is refused with ErrInsecureTransport and the
// plaintext attempts of sslmode=prefer and allow are dropped, so the token
// only travels over TLS. Use sslmode=verify-full; WithRequireVerifiedTLS
// enforces it.
//
// # Testing without Azure
//
// Package entratest emulates Entra ID and a PostgreSQL server that checks
// tokens the way Azure does, on this machine, for tests and demos.
package entraauth

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"golang.org/x/sync/singleflight"
)

// Token is an access token and its expiry. Printing a Token with fmt or
// slog shows its expiry, never its value.
type Token struct {
	// Value is the JWT to send as the password.
	Value string
	// ExpiresOn is when the token expires.
	ExpiresOn time.Time
}

// String describes the token without its value.
func (t Token) String() string {
	if t.Value == "" {
		return "entraauth.Token{}"
	}
	return "entraauth.Token{Value:[REDACTED] ExpiresOn:" + t.ExpiresOn.UTC().Format(time.RFC3339) + "}"
}

// Format prints the token without its value, whatever the verb.
func (t Token) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(t.String())) }

// LogValue logs the token's expiry, never its value.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(slog.String("value", "[REDACTED]"), slog.Time("expires_on", t.ExpiresOn))
}

// Stats counts a TokenSource's work.
type Stats struct {
	// Fetches counts token requests made to the credential, including the
	// one Resource Manager token a managed identity's user name may need.
	Fetches int64
	// FailedFetches counts the requests that failed.
	FailedFetches int64
	// ExpiresOn is the cached database token's expiry; zero with no token.
	ExpiresOn time.Time
	// RefreshAt is when the cached token will be refreshed in the
	// background; zero with no token.
	RefreshAt time.Time
}

// Refresh timing. Margins are scaled down for short-lived tokens: a token
// living 60 seconds is refreshed at about half-life and used until 6
// seconds before it expires.
const (
	maxRefreshMargin = 5 * time.Minute
	maxExpirySkew    = 30 * time.Second
	minBackoff       = time.Second
	maxBackoff       = 30 * time.Second
)

// cachedToken is a token with the times derived from it. It is immutable.
type cachedToken struct {
	token       Token
	refreshAt   time.Time // after this, refresh in the background
	usableUntil time.Time // after this, never hand the token out
}

func newCachedToken(at azcore.AccessToken, now time.Time) (*cachedToken, error) {
	expires := at.ExpiresOn
	if expires.IsZero() {
		claims, err := parseClaims(at.Token)
		if err != nil {
			return nil, err
		}
		if expires = claims.expiry(); expires.IsZero() {
			return nil, fmt.Errorf("%w: the credential gave neither ExpiresOn nor an exp claim", ErrMalformedToken)
		}
	}
	// Wall clock only: after a laptop sleeps the monotonic clock has not
	// moved, but the token has expired.
	expires = expires.Round(0)
	life := expires.Sub(now)
	if life <= 0 {
		return nil, &TokenExpiredError{ExpiresOn: expires}
	}
	c := &cachedToken{
		token:       Token{Value: at.Token, ExpiresOn: expires},
		refreshAt:   expires.Add(-min(maxRefreshMargin, life/2)),
		usableUntil: expires.Add(-min(maxExpirySkew, life/10)),
	}
	if refreshOn := at.RefreshOn.Round(0); !refreshOn.IsZero() && refreshOn.Before(c.refreshAt) {
		c.refreshAt = refreshOn
	}
	return c, nil
}

// TokenSource caches the access token of one credential for one scope and
// tenant and hands it to every connection: Hook, Connector and the CLI all
// use one. It is safe for concurrent use and needs no closing.
//
// Before the token's refresh point the cached token is returned without
// locking. Between the refresh point and expiry the cached token is still
// returned at once while one background fetch replaces it. With no usable
// token, callers wait for the single fetch in flight (or their context).
type TokenSource struct {
	cred azcore.TokenCredential
	set  settings
	now  func() time.Time

	scope   atomic.Pointer[string] // fixed by WithScope or the first host
	current atomic.Pointer[cachedToken]

	fetches  singleflight.Group
	fetching atomic.Bool // a database token fetch is running

	backoffMu sync.Mutex
	failures  int
	retryAt   time.Time // no background refresh before this

	user  atomic.Pointer[userResult] // the derived user name, once known
	users singleflight.Group

	userNamedCache atomic.Pointer[userNamedResult]
	oauthProvider  func(context.Context) (string, error)

	nFetches, nFailed atomic.Int64
}

// NewTokenSource returns a TokenSource for cred. An invalid option or a nil
// credential is reported, wrapping ErrInvalidOption, by the first Token,
// BeforeConnect or Connect.
func NewTokenSource(cred azcore.TokenCredential, opts ...Option) *TokenSource {
	ts := &TokenSource{cred: cred, set: newSettings(opts), now: time.Now}
	if cred == nil && ts.set.err == nil {
		ts.set.err = fmt.Errorf("%w: nil credential; pass one from azidentity, such as azidentity.NewDefaultAzureCredential(nil)", ErrInvalidOption)
	}
	if ts.set.scope != "" {
		ts.scope.Store(&ts.set.scope)
	}
	ts.oauthProvider = func(ctx context.Context) (string, error) {
		tok, err := ts.Token(ctx)
		return tok.Value, err
	}
	return ts
}

// String describes the TokenSource without its token.
func (ts *TokenSource) String() string {
	s := ts.Stats()
	return fmt.Sprintf("entraauth.TokenSource{fetches:%d failed:%d expires:%s}",
		s.Fetches, s.FailedFetches, s.ExpiresOn.UTC().Format(time.RFC3339))
}

// Format prints the TokenSource as String does, whatever the verb, so fmt
// never reads its internals.
func (ts *TokenSource) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(ts.String())) }

// Stats returns counts of the TokenSource's work and the cached token's times.
func (ts *TokenSource) Stats() Stats {
	s := Stats{Fetches: ts.nFetches.Load(), FailedFetches: ts.nFailed.Load()}
	if c := ts.current.Load(); c != nil {
		s.ExpiresOn, s.RefreshAt = c.token.ExpiresOn, c.refreshAt
	}
	return s
}

// Token returns a usable access token: the cached one, or a fresh one when
// none is usable, waiting at most until ctx ends. Its scope is WithScope's,
// else the one chosen from the first server connected to, else the public
// cloud's.
func (ts *TokenSource) Token(ctx context.Context) (Token, error) {
	if ts.set.err != nil {
		return Token{}, ts.set.err
	}
	p := ts.scope.Load()
	if p == nil {
		ts.scope.CompareAndSwap(nil, &publicCloud.dbScope)
		p = ts.scope.Load()
	}
	scope := *p
	c, err := ts.token(ctx, scope)
	if err != nil {
		return Token{}, err
	}
	return c.token, nil
}

// scopeForHost returns the scope to use for a server host, fixing it on
// first use: one TokenSource holds tokens for one scope.
func (ts *TokenSource) scopeForHost(host string) (string, error) {
	if ts.set.scope != "" {
		return ts.set.scope, nil
	}
	want := &cloudForHost(host).dbScope
	if p := ts.scope.Load(); p != nil || !ts.scope.CompareAndSwap(nil, want) {
		if got := *ts.scope.Load(); got != *want {
			return "", fmt.Errorf("%w: this TokenSource holds tokens for %s but host %q needs %s; use a TokenSource per cloud, or WithScope",
				ErrScopeMismatch, got, host, *want)
		}
	}
	return *want, nil
}

// token returns the cached token while usable, starting a background
// refresh once it is due, and otherwise waits for a fetch.
func (ts *TokenSource) token(ctx context.Context, scope string) (*cachedToken, error) {
	now := ts.now().Round(0)
	if c := ts.current.Load(); c != nil {
		if now.Before(c.refreshAt) {
			return c, nil
		}
		if now.Before(c.usableUntil) {
			ts.refreshInBackground(now, scope)
			return c, nil
		}
	}
	return ts.waitForFetch(ctx, scope)
}

// refreshInBackground starts one fetch unless one is running or the last
// one failed too recently.
func (ts *TokenSource) refreshInBackground(now time.Time, scope string) {
	if ts.fetching.Load() {
		return
	}
	ts.backoffMu.Lock()
	wait := now.Before(ts.retryAt)
	ts.backoffMu.Unlock()
	if wait {
		return
	}
	ts.set.logger.Debug("entraauth: refreshing token in the background", "scope", scope)
	// The result reaches the cache; the buffered channel is dropped.
	ts.fetches.DoChan(scope, func() (any, error) { return ts.fetch(scope) })
}

// waitForFetch joins the fetch in flight, or starts one, and waits for it
// or for ctx. A failure goes back to the caller at once: the credential
// retries on its own, and the next connect starts a new fetch.
func (ts *TokenSource) waitForFetch(ctx context.Context, scope string) (*cachedToken, error) {
	ch := ts.fetches.DoChan(scope, func() (any, error) { return ts.fetch(scope) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		c := r.Val.(*cachedToken)
		if !ts.now().Round(0).Before(c.usableUntil) {
			return nil, &TokenExpiredError{ExpiresOn: c.token.ExpiresOn}
		}
		return c, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("entraauth: waiting for an access token: %w", context.Cause(ctx))
	}
}

// fetch gets a token from the credential on a context of its own, so one
// caller giving up does not fail the others, and caches it.
func (ts *TokenSource) fetch(scope string) (*cachedToken, error) {
	ts.fetching.Store(true)
	defer ts.fetching.Store(false)

	at, err := ts.getToken(scope)
	var c *cachedToken
	if err == nil {
		c, err = newCachedToken(at, ts.now().Round(0))
	}
	if err != nil {
		ts.nFailed.Add(1)
		delay := ts.backOff()
		ts.set.logger.Warn("entraauth: token fetch failed", "scope", scope, "error", err.Error(), "retry_in", delay)
		return nil, err
	}
	ts.current.Store(c)
	ts.backoffMu.Lock()
	ts.failures, ts.retryAt = 0, time.Time{}
	ts.backoffMu.Unlock()
	ts.set.logger.Info("entraauth: token fetched", "scope", scope, "expires_on", c.token.ExpiresOn, "refresh_at", c.refreshAt)
	return c, nil
}

// getToken asks the credential for one token, bounded by the fetch timeout.
func (ts *TokenSource) getToken(scope string) (azcore.AccessToken, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ts.set.fetchTimeout)
	defer cancel()
	ts.nFetches.Add(1)
	at, err := ts.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}, TenantID: ts.set.tenantID})
	if err != nil {
		return at, &CredentialError{Scope: scope, Err: err}
	}
	return at, nil
}

// backOff records a failed fetch and returns the jittered delay before the
// next background refresh: exponential from minBackoff to maxBackoff, each
// drawn from its upper half.
func (ts *TokenSource) backOff() time.Duration {
	ts.backoffMu.Lock()
	defer ts.backoffMu.Unlock()
	d := min(minBackoff<<min(ts.failures, 16), maxBackoff)
	ts.failures++
	d = d/2 + rand.N(d/2+1)
	ts.retryAt = ts.now().Round(0).Add(d)
	return d
}
