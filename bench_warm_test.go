package entraauth

// The warm hook's cost split into its parts, for BENCHMARKS.md. It lives
// in the root package, not in bench/, because it calls the unexported
// steps of BeforeConnect one by one.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkWarmHookParts measures, in one run: the clock read the hook
// needs (clock); the token cache's fast path (token: one atomic load, one
// clock read, compares); what BeforeConnect adds around it, step by step
// (facts: the connection string's cached facts; guard: the transport
// check of a one-host verify-full config; scope: the host's cached scope;
// user: the derived user's fast path); and the whole BeforeConnect with
// the user derived from the token (all). Each op of guard, user and all
// first restores the parsed config's TLS config and user, as each pool
// connect starts from them.
func BenchmarkWarmHookParts(b *testing.B) {
	b.Setenv("PGUSER", "")
	b.Setenv("PGSSLMODE", "")
	ctx := context.Background()
	ts := NewTokenSource(newFakeCredential("alice@contoso.com"))
	base, err := pgx.ParseConfig("host=srv.postgres.database.azure.com dbname=app sslmode=verify-full")
	if err != nil {
		b.Fatal(err)
	}
	cfg := *base
	if err := ts.BeforeConnect(ctx, &cfg); err != nil {
		b.Fatal(err)
	}
	f := ts.connFacts(base)
	c, err := ts.token(ctx, ScopePublic)
	if err != nil {
		b.Fatal(err)
	}
	var sink time.Time
	b.Run("part=clock", func(b *testing.B) {
		for b.Loop() {
			sink = time.Now()
		}
	})
	_ = sink
	b.Run("part=token", func(b *testing.B) {
		for b.Loop() {
			_, _ = ts.token(ctx, ScopePublic)
		}
	})
	b.Run("part=facts", func(b *testing.B) {
		for b.Loop() {
			_ = ts.connFacts(base)
		}
	})
	b.Run("part=guard", func(b *testing.B) {
		for b.Loop() {
			cfg.TLSConfig = base.TLSConfig
			if len(cfg.Fallbacks) > 0 || !ts.tlsAsIs(cfg.TLSConfig, f) {
				_ = ts.guardTransport(&cfg, f)
			}
		}
	})
	b.Run("part=scope", func(b *testing.B) {
		for b.Loop() {
			_, _ = ts.scopeFor(f, &cfg)
		}
	})
	b.Run("part=user", func(b *testing.B) {
		for b.Loop() {
			cfg.User = base.User
			if !userNamedBy(&cfg, f) {
				cfg.User = ""
			}
			cfg.User, _ = ts.userFor(ctx, cfg.User, ScopePublic, c)
		}
	})
	b.Run("part=all", func(b *testing.B) {
		for b.Loop() {
			cfg.TLSConfig, cfg.User = base.TLSConfig, base.User
			_ = ts.BeforeConnect(ctx, &cfg)
		}
	})
}
