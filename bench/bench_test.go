package bench

// Each benchmark runs its variants as sub-benchmarks named auth=<variant>,
// the static-password floor first, so that
//
//	benchstat -col /auth results.txt
//
// prints every variant as a ratio against the floor of the same run.
// Custom figures go through b.ReportMetric (cred-calls/op, max-connect-ms,
// …). See BENCHMARKS.md for the commands and the figures.

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// BenchmarkWarmHook measures one call of each BeforeConnect with a token
// already cached: what a connection pays before it dials. No server is
// involved. Each call starts from the parsed config's host, TLS config,
// fallbacks and user, as each pool connect does (pgxpool hands the hook a
// copy of the parsed config; the copying is pgx's, not measured here).
//
// Variants: static, the floor of any hook; atomic-pointer, the least a
// cached-token hook can do (one atomic load, one clock read, one compare);
// entraauth with the user named, with it derived from the token, with no
// sslmode named (so entraauth verifies as verify-full would, with a TLS
// config it made once), and two-pools: two connection strings, users
// derived from the token, sharing one TokenSource and connecting in turn,
// as the README's shared-cache pattern does; per-connection, a credential
// call per connect.
func BenchmarkWarmHook(b *testing.B) {
	unsetenv(b, "PGUSER")
	unsetenv(b, "PGSSLMODE")
	iss, err := entratest.NewIssuer()
	if err != nil {
		b.Fatal(err)
	}
	const host = "host=bench.postgres.database.azure.com dbname=app"
	named := parseConfig(b, host+" sslmode=verify-full user="+relayUser.UPN)
	unnamed := parseConfig(b, host+" sslmode=verify-full") // pgx fills in the OS user: entraauth takes the name from the token
	noSSLMode := parseConfig(b, host+" user="+relayUser.UPN)
	reports := parseConfig(b, "host=bench.postgres.database.azure.com dbname=reports sslmode=verify-full")

	run := func(name string, bases []*pgx.ConnConfig, hook Hook, calls func() int64) {
		b.Run("auth="+name, func(b *testing.B) {
			ctx := context.Background()
			cfgs := make([]*pgx.ConnConfig, len(bases))
			for i, base := range bases {
				cfgs[i] = base.Copy()
				if err := hook(ctx, cfgs[i]); err != nil { // warm: fetch and cache the token
					b.Fatal(err)
				}
			}
			c0 := calls()
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				base, cfg := bases[i], cfgs[i]
				if i++; i == len(bases) {
					i = 0
				}
				// as each pool connect starts from the parsed config
				cfg.Host, cfg.Port, cfg.TLSConfig, cfg.Fallbacks, cfg.User = base.Host, base.Port, base.TLSConfig, base.Fallbacks, base.User
				if err := hook(ctx, cfg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(calls()-c0)/float64(b.N), "cred-calls/op")
		})
	}
	none := func() int64 { return 0 }
	one := []*pgx.ConnConfig{named}

	run("static", one, staticHook(longTokenFor(b, iss, relayUser)), none)
	run("atomic-pointer", one, atomicPointerHook(longTokenFor(b, iss, relayUser)), none)

	cred := entratest.NewCredential(iss, relayUser)
	run("entraauth", one, entraauth.Hook(cred), cred.Calls)

	derived := entratest.NewCredential(iss, relayUser)
	run("entraauth-derived-user", []*pgx.ConnConfig{unnamed}, entraauth.Hook(derived), derived.Calls)

	verifying := entratest.NewCredential(iss, relayUser)
	run("entraauth-no-sslmode", []*pgx.ConnConfig{noSSLMode}, entraauth.Hook(verifying), verifying.Calls)

	shared := entratest.NewCredential(iss, relayUser)
	run("entraauth-two-pools", []*pgx.ConnConfig{unnamed, reports}, entraauth.Hook(shared), shared.Calls)

	// The fake credential has no latency here: each call costs what
	// minting a token costs (an RS256 signature), the least a real
	// identity service round trip could cost.
	per := entratest.NewCredential(iss, relayUser)
	run("per-connection", one, perConnectionHook(per), per.Calls)
}

// atomicPointerHook is the least a hook caching a token can do: load the
// cached token from an atomic pointer, read the clock once, compare it
// with the refresh point, and set the password. It never refreshes.
func atomicPointerHook(token string) Hook {
	type cached struct {
		value     string
		refreshAt time.Time
	}
	var p atomic.Pointer[cached]
	p.Store(&cached{value: token, refreshAt: time.Now().Add(time.Hour)})
	return func(_ context.Context, cfg *pgx.ConnConfig) error {
		c := p.Load()
		if !time.Now().Before(c.refreshAt) {
			return errors.New("token due for refresh")
		}
		cfg.Password = c.value
		return nil
	}
}

// BenchmarkClockRead measures time.Now, which the warm hook must call
// once to compare the cached token's refresh point with the wall clock:
// on virtual machines it can be most of the hook's cost.
func BenchmarkClockRead(b *testing.B) {
	var t time.Time
	for b.Loop() {
		t = time.Now()
	}
	_ = t
}

func longTokenFor(tb testing.TB, iss *entratest.Issuer, p entratest.Principal) string {
	tb.Helper()
	at, err := iss.Mint(p, entratest.ScopePublic, 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return at.Token
}

// coldPoolSize is MinConns and MaxConns of the cold pool.
const coldPoolSize = 32

// coldPoolLatency is the credential's latency in BenchmarkColdPool.
const coldPoolLatency = 300 * time.Millisecond

// BenchmarkColdPool measures the time from pgxpool.NewWithConfig until a
// pool with MinConns = MaxConns = 32 holds 32 idle connections (the
// warm-up pgxpool runs in the background), and how many credential calls
// that took. ns/op is that time. Each op starts from a new hook (a new
// TokenSource, nothing cached) and a new credential.
func BenchmarkColdPool(b *testing.B) {
	e := startEnv(b)

	b.Run("path=direct", func(b *testing.B) {
		password := e.directStaticPassword(b)
		b.Run("auth=static", func(b *testing.B) {
			coldPool(b, e.directConnString(), func() (Hook, func() int64) {
				return staticHook(password), func() int64 { return 0 }
			})
		})
		b.Run("auth=entraauth", func(b *testing.B) {
			coldPool(b, e.directConnString(), func() (Hook, func() int64) {
				cred := newRoleCredential(e, coldPoolLatency)
				return entraauth.Hook(cred), cred.calls.Load
			})
		})
	})

	b.Run("path=relay", func(b *testing.B) {
		password := e.longToken(b, relayUser)
		b.Run("auth=static", func(b *testing.B) {
			coldPool(b, e.relayConnString(), func() (Hook, func() int64) {
				return staticHook(password), func() int64 { return 0 }
			})
		})
		b.Run("auth=entraauth", func(b *testing.B) {
			coldPool(b, e.relayConnString(), func() (Hook, func() int64) {
				cred := entratest.NewCredential(e.iss, relayUser)
				cred.SetLatency(coldPoolLatency)
				return entraauth.Hook(cred), cred.Calls
			})
		})
		b.Run("auth=entraauth-azcli", func(b *testing.B) {
			// The real azidentity.AzureCLICredential running the fake az:
			// each call starts /bin/sh and the az script, then waits the
			// latency.
			az, err := entratest.NewAzureCLI(e.iss, relayUser)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(az.Close)
			az.SetLatency(coldPoolLatency)
			az.Setenv(b)
			coldPool(b, e.relayConnString(), func() (Hook, func() int64) {
				cred, err := azidentity.NewAzureCLICredential(nil)
				if err != nil {
					b.Fatal(err)
				}
				start := az.Invocations()
				return entraauth.Hook(cred), func() int64 { return az.Invocations() - start }
			})
		})
		b.Run("auth=per-connection", func(b *testing.B) {
			coldPool(b, e.relayConnString(), func() (Hook, func() int64) {
				cred := entratest.NewCredential(e.iss, relayUser)
				cred.SetLatency(coldPoolLatency)
				return perConnectionHook(cred), cred.Calls
			})
		})
	})
}

// coldPool runs b.N cold starts of a pool; newHook returns a fresh hook
// and a count of the credential calls it has made.
func coldPool(b *testing.B, connString string, newHook func() (Hook, func() int64)) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MinConns, cfg.MaxConns = coldPoolSize, coldPoolSize
	var calls int64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		hook, callCount := newHook()
		c := cfg.Copy()
		c.BeforeConnect = hook
		b.StartTimer()

		pool, err := pgxpool.NewWithConfig(context.Background(), c)
		if err != nil {
			b.Fatal(err)
		}
		waitIdle(b, pool, coldPoolSize)

		b.StopTimer()
		calls += callCount()
		pool.Close()
		time.Sleep(100 * time.Millisecond) // let the server reap the sessions before the next op
		b.StartTimer()
	}
	b.ReportMetric(float64(calls)/float64(b.N), "cred-calls/op")
}

// waitIdle waits until pool holds n idle connections.
func waitIdle(b *testing.B, pool *pgxpool.Pool, n int32) {
	deadline := time.Now().Add(30 * time.Second)
	for pool.Stat().IdleConns() < n {
		if time.Now().After(deadline) {
			s := pool.Stat()
			pool.Close()
			b.Fatalf("pool not ready after 30 s: %d idle, %d total, %d constructing (did the connections fail? try the test TestVariantsAuthenticate)",
				s.IdleConns(), s.TotalConns(), s.ConstructingConns())
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// Refresh stall settings: tokens live a few seconds, so each window of
// connects crosses the refresh point (half-life) more than once, and the
// credential takes a second to answer.
const (
	stallTokenLife = 6 * time.Second
	stallLatency   = time.Second
	stallWindow    = 8 * time.Second
	stallWorkers   = 2
)

// BenchmarkRefreshStall runs connects without pause from stallWorkers
// goroutines for stallWindow per op, through the relay path, while the
// token crosses its refresh point, and reports the slowest connect
// (max-connect-ms: hook plus pgx.ConnectConfig) and the slowest hook
// (max-hook-ms: the time a connect spent waiting for a token), with the
// median and 99th percentile connect for context. It also splits the
// connects into those that overlapped a credential call and those that did
// not (max-connect-in-fetch-ms, max-connect-no-fetch-ms, and the same for
// hooks): within one variant, that tells a stall caused by the refresh
// from the machine's noise. ns/op is the window and means nothing. Run it with -benchtime 1x.
func BenchmarkRefreshStall(b *testing.B) {
	e := startEnv(b)
	base := parseConfig(b, e.relayConnString())

	b.Run("auth=static", func(b *testing.B) {
		refreshStall(b, base, staticHook(e.longToken(b, relayUser)), &spanCredential{})
	})
	b.Run("auth=entraauth", func(b *testing.B) {
		cred := entratest.NewCredential(e.iss, relayUser)
		cred.SetLifetime(stallTokenLife)
		cred.SetLatency(stallLatency)
		spans := &spanCredential{inner: cred}
		ts := entraauth.NewTokenSource(spans)
		if _, err := ts.Token(context.Background()); err != nil { // the cold fetch is BenchmarkColdPool's business
			b.Fatal(err)
		}
		refreshStall(b, base, ts.BeforeConnect, spans)
	})
	b.Run("auth=per-connection", func(b *testing.B) {
		cred := entratest.NewCredential(e.iss, relayUser)
		cred.SetLifetime(stallTokenLife)
		cred.SetLatency(stallLatency)
		spans := &spanCredential{inner: cred}
		refreshStall(b, base, perConnectionHook(spans), spans)
	})
}

// span is a time interval.
type span struct{ start, end time.Time }

func (s span) overlaps(o span) bool { return s.start.Before(o.end) && o.start.Before(s.end) }

// spanCredential records when each call of its inner credential ran. With
// no inner credential it is never called.
type spanCredential struct {
	inner azcore.TokenCredential
	mu    sync.Mutex
	spans []span
}

// GetToken implements azcore.TokenCredential.
func (c *spanCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	i := len(c.spans)
	c.spans = append(c.spans, span{start: time.Now()})
	c.mu.Unlock()
	at, err := c.inner.GetToken(ctx, opts)
	c.mu.Lock()
	c.spans[i].end = time.Now()
	c.mu.Unlock()
	return at, err
}

// since returns a copy of the spans that started at or after t; a call
// still running ends at now.
func (c *spanCredential) since(t, now time.Time) []span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []span
	for _, s := range c.spans {
		if !s.start.Before(t) {
			if s.end.IsZero() {
				s.end = now
			}
			out = append(out, s)
		}
	}
	return out
}

func refreshStall(b *testing.B, base *pgx.ConnConfig, hook Hook, cred *spanCredential) {
	ctx := context.Background()
	var (
		mu                       sync.Mutex
		connects, hooks          []time.Duration
		inFetch, noFetch         time.Duration // slowest connects
		hookInFetch, hookNoFetch time.Duration // slowest hooks
		credCalls                int
	)
	b.ResetTimer()
	for range b.N {
		begin := time.Now()
		end := begin.Add(stallWindow)
		type record struct {
			span
			hook time.Duration
		}
		var done []record // connects of this window
		var wg sync.WaitGroup
		for range stallWorkers {
			wg.Go(func() {
				for time.Now().Before(end) {
					start := time.Now()
					conn, inHook, err := connect(ctx, base, hook)
					took := time.Since(start)
					if err != nil {
						b.Error(err)
						return
					}
					_ = conn.Close(ctx)
					mu.Lock()
					connects, hooks = append(connects, took), append(hooks, inHook)
					done = append(done, record{span{start, start.Add(took)}, inHook})
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		fetches := cred.since(begin, time.Now())
		credCalls += len(fetches)
		for _, c := range done {
			took := c.end.Sub(c.start)
			if slices.ContainsFunc(fetches, c.overlaps) {
				inFetch, hookInFetch = max(inFetch, took), max(hookInFetch, c.hook)
			} else {
				noFetch, hookNoFetch = max(noFetch, took), max(hookNoFetch, c.hook)
			}
		}
	}
	b.StopTimer()
	if len(connects) == 0 {
		b.Fatal("no connects")
	}
	slices.Sort(connects)
	b.ReportMetric(ms(connects[len(connects)-1]), "max-connect-ms")
	b.ReportMetric(ms(connects[len(connects)/2]), "p50-connect-ms")
	b.ReportMetric(ms(connects[len(connects)*99/100]), "p99-connect-ms")
	b.ReportMetric(ms(slices.Max(hooks)), "max-hook-ms")
	b.ReportMetric(ms(inFetch), "max-connect-in-fetch-ms")
	b.ReportMetric(ms(noFetch), "max-connect-no-fetch-ms")
	b.ReportMetric(ms(hookInFetch), "max-hook-in-fetch-ms")
	b.ReportMetric(ms(hookNoFetch), "max-hook-no-fetch-ms")
	b.ReportMetric(float64(len(connects))/float64(b.N), "connects/op")
	b.ReportMetric(float64(credCalls)/float64(b.N), "cred-calls/op")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkConnect measures sequential connect and close over verified TLS
// to PostgreSQL itself (the direct path), token already cached: ns/op is
// the inverse of connect throughput.
func BenchmarkConnect(b *testing.B) {
	e := startEnv(b)
	base := parseConfig(b, e.directConnString())
	run := func(name string, hook Hook) {
		b.Run("auth="+name, func(b *testing.B) {
			ctx := context.Background()
			conn, _, err := connect(ctx, base, hook) // warm: fetch and cache the token
			if err != nil {
				b.Fatal(err)
			}
			_ = conn.Close(ctx)
			b.ResetTimer()
			for b.Loop() {
				conn, _, err := connect(ctx, base, hook)
				if err != nil {
					b.Fatal(err)
				}
				if err := conn.Close(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("static", staticHook(e.directStaticPassword(b)))
	run("entraauth", entraauth.Hook(newRoleCredential(e, 0)))
}

// TestVariantsAuthenticate checks that every variant the benchmarks
// compare logs in, on its path, as the role it is meant to, over TLS:
// a benchmark of connects that fail would measure nothing.
func TestVariantsAuthenticate(t *testing.T) {
	e := startEnv(t)
	az, err := entratest.NewAzureCLI(e.iss, relayUser)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Close)
	az.Setenv(t)
	azCred, err := azidentity.NewAzureCLICredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	roleCred := newRoleCredential(e, 0)
	relayCred := entratest.NewCredential(e.iss, relayUser)
	perCred := entratest.NewCredential(e.iss, relayUser)

	for _, tc := range []struct {
		name, connString, user string
		hook                   func() Hook
		calls                  func() int64
		wantCalls              int64
	}{
		{"direct/static", e.directConnString(), directUser.UPN,
			func() Hook { return staticHook(e.directStaticPassword(t)) }, nil, 0},
		{"direct/entraauth", e.directConnString(), directUser.UPN,
			func() Hook { return entraauth.Hook(roleCred) }, roleCred.calls.Load, 1},
		{"relay/static", e.relayConnString(), relayUser.UPN,
			func() Hook { return staticHook(e.longToken(t, relayUser)) }, nil, 0},
		{"relay/entraauth", e.relayConnString(), relayUser.UPN,
			func() Hook { return entraauth.Hook(relayCred) }, relayCred.Calls, 1},
		{"relay/entraauth-azcli", e.relayConnString(), relayUser.UPN,
			func() Hook { return entraauth.Hook(azCred) }, az.Invocations, 1},
		{"relay/per-connection", e.relayConnString(), relayUser.UPN,
			func() Hook { return perConnectionHook(perCred) }, perCred.Calls, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			base := parseConfig(t, tc.connString)
			hook := tc.hook()
			for range 3 {
				conn, _, err := connect(ctx, base, hook)
				if err != nil {
					t.Fatal(err)
				}
				_, overTLS := conn.PgConn().Conn().(*tls.Conn)
				var user string
				err = conn.QueryRow(ctx, "select current_user").Scan(&user)
				_ = conn.Close(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if user != tc.user || !overTLS {
					t.Fatalf("current_user = %q, TLS = %v; want %q over TLS", user, overTLS, tc.user)
				}
			}
			if tc.calls != nil {
				if got := tc.calls(); got != tc.wantCalls {
					t.Errorf("credential calls for 3 connects = %d, want %d", got, tc.wantCalls)
				}
			}
		})
	}
}
