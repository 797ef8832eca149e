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
// only travels over TLS. With no sslmode named (in the connection string,
// PGSSLMODE or a service file) the server is verified as
// sslmode=verify-full verifies it, against the system's CAs or sslrootcert;
// a failure is ErrServerNotVerified, saying what to trust. An explicit
// sslmode=require encrypts without verifying; WithRequireVerifiedTLS
// refuses it.
//
// # Testing without Azure
//
// Package entratest emulates Entra ID and a PostgreSQL server that checks
// tokens the way Azure does, on this machine, for tests and demos.
package entraauth

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"golang.org/x/sync/singleflight"
)

// TokenSource caches the access token of one credential for one scope and
// tenant and hands it to every connection: Hook, Connector and the CLI all
// use one. It is safe for concurrent use and needs no closing.
//
// Before the token's refresh point the cached token is returned without
// locking. Between the refresh point and expiry the cached token is still
// returned at once while one background fetch replaces it. With no usable
// token, callers wait for the single fetch in flight (or their context).
//
// A fetch is bounded by the fetch timeout (WithFetchTimeout) whatever the
// credential does, and a credential's panic becomes a *CredentialError.
// After a failed fetch, callers with no usable token get that failure at
// once, as a *BackoffError, until a jittered exponential backoff (1s
// growing to 30s) lets the next fetch start; a success resets it.
type TokenSource struct {
	cred azcore.TokenCredential
	set  settings
	now  func() time.Time
	// refreshJitter places this source's refresh point within the refresh
	// window, so a fleet started together does not refresh together.
	refreshJitter float64

	scope    atomic.Pointer[string] // fixed by WithScope or the first host
	current  atomic.Pointer[cachedToken]
	inflight atomic.Pointer[flight] // the database token fetch running, if any

	backoffMu sync.Mutex
	failures  int       // consecutive failed or premature fetches
	retryAt   time.Time // no fetch starts before this
	lastErr   error     // the last fetch's failure, shared until retryAt

	users singleflight.Group // Resource Manager name lookups, by principal

	configs       atomic.Pointer[configCache] // what was derived from each connection config
	oauthProvider func(context.Context) (string, error)

	nFetches, nFailed atomic.Int64
	metrics           *metrics // nil without WithMeterProvider
}

// NewTokenSource returns a TokenSource for cred. An invalid option or a nil
// credential is reported, wrapping ErrInvalidOption, by the first Token,
// BeforeConnect or Connect.
func NewTokenSource(cred azcore.TokenCredential, opts ...Option) *TokenSource {
	ts := &TokenSource{cred: cred, set: newSettings(opts), now: time.Now, refreshJitter: rand.Float64()}
	if cred == nil && ts.set.err == nil {
		ts.set.err = fmt.Errorf("%w: nil credential; pass one from azidentity, such as azidentity.NewDefaultAzureCredential(nil)", ErrInvalidOption)
	}
	if ts.set.scope != "" {
		ts.scope.Store(&ts.set.scope)
	}
	rememberUserSource(ts.set.user, "entraauth.WithUser")
	if mp := ts.set.meterProvider; mp != nil && ts.set.err == nil {
		m, err := newMetrics(mp, ts)
		if err != nil {
			ts.set.err = fmt.Errorf("%w: WithMeterProvider: creating the metrics: %v", ErrInvalidOption, err)
		}
		ts.metrics = m
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
// cloud's. Calling Token before any connect does not choose the scope: a
// later connect to a server of another cloud fetches a token for it.
func (ts *TokenSource) Token(ctx context.Context) (Token, error) {
	if ts.set.err != nil {
		return Token{}, ts.set.err
	}
	scope := publicCloud.dbScope
	if p := ts.scope.Load(); p != nil {
		scope = *p
	}
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
	// The cached times carry no monotonic reading, so comparing them with
	// now uses the wall clock even though now carries one.
	now := ts.now()
	if c := ts.current.Load(); c != nil && c.scope == scope {
		if now.Before(c.refreshAt) {
			ts.countCacheHit(ctx)
			return c, nil
		}
		if now.Before(c.usableUntil) {
			ts.refreshInBackground(now.Round(0), scope)
			ts.countCacheHit(ctx)
			return c, nil
		}
	}
	return ts.waitForFetch(ctx, scope)
}

// countCacheHit records a token handed out from the cache, when metrics
// are on.
func (ts *TokenSource) countCacheHit(ctx context.Context) {
	if ts.metrics != nil {
		ts.metrics.cacheHits.Add(ctx, 1)
	}
}

// refreshInBackground starts one fetch unless one is running or the
// backoff says not yet.
func (ts *TokenSource) refreshInBackground(now time.Time, scope string) {
	if ts.inflight.Load() != nil {
		return
	}
	if wait, _ := ts.backingOff(now); wait {
		return
	}
	ts.set.logger.Debug("entraauth: refreshing token in the background", "scope", scope)
	ts.startFetch(scope)
}

// waitForFetch joins the fetch in flight, or starts one, and waits for it
// or for ctx. Within the backoff after a failed fetch, it returns that
// failure at once as a *BackoffError instead of asking the credential again.
func (ts *TokenSource) waitForFetch(ctx context.Context, scope string) (*cachedToken, error) {
	for {
		f := ts.inflight.Load()
		if f == nil {
			now := ts.now().Round(0)
			if c := ts.current.Load(); c != nil && c.scope == scope && now.Before(c.usableUntil) {
				return c, nil // a fetch finished since token looked
			}
			if wait, err := ts.backingOff(now); wait && err != nil {
				return nil, err
			}
			f = ts.startFetch(scope)
		}
		if ts.metrics != nil {
			ts.metrics.waits.Add(ctx, 1)
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("entraauth: waiting for an access token: %w", context.Cause(ctx))
		}
		if f.scope != scope {
			continue // joined a fetch for another scope; now fetch ours
		}
		if f.err != nil {
			return nil, f.err
		}
		if !ts.now().Round(0).Before(f.c.usableUntil) {
			return nil, &TokenExpiredError{ExpiresOn: f.c.token.ExpiresOn}
		}
		return f.c, nil
	}
}
