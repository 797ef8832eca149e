package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/proxy"
)

// newHealth is a health for a proxy.Server (not serving) whose upstream
// is addr, with az's identity, and the given window.
func (f *fixture) newHealth(t *testing.T, addr, user string, window time.Duration) *health {
	t.Helper()
	cred, err := azidentity.NewAzureCLICredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := proxy.New(proxy.Config{
		Upstream:    connString("host", host, "port", port, "sslmode", "verify-full", "sslrootcert", f.srv.CAFile(), "dbname", "postgres"),
		TokenSource: entraauth.NewTokenSource(cred), User: user,
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &health{srv: srv, log: log, window: window, ctx: ctx}
	h.started.Store(true)
	t.Cleanup(func() {
		cancel()
		h.wait()
		_ = srv.Close()
	})
	return h
}

// Concurrent probes share one readiness login: however many ask while it
// runs, one login goes upstream.
func TestReadinessOneLoginAtATime(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	az.Setenv(t)
	const rounds, probes = 200, 50
	for round := range rounds {
		g := newGate(t, f.srv.Addr())
		h := f.newHealth(t, g.l.Addr().String(), "", time.Nanosecond)
		checks := make([]*readyCheck, probes)
		var wg sync.WaitGroup
		for i := range probes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				checks[i] = h.readyCheck(time.Now())
			}()
		}
		wg.Wait()
		for i, c := range checks {
			if c != checks[0] {
				t.Fatalf("round %d: probe %d got a login of its own", round, i)
			}
		}
		waitUntil(t, "the login to reach the gate", func() bool { return g.accepted.Load() >= 1 })
		g.opened()
		<-checks[0].done
		if checks[0].err != nil {
			t.Fatalf("round %d: %v", round, checks[0].err)
		}
		if n := g.accepted.Load(); n != 1 {
			t.Fatalf("round %d: %d upstream connections; want 1", round, n)
		}
		if reason := h.notReady(context.Background()); reason != "" {
			t.Fatalf("round %d: not ready: %s", round, reason)
		}
	}
}

// Within the window, the sessions' (or the last check's) login answers
// readiness with no login; a failed login is reused for readinessRetry,
// then tried again.
func TestReadinessCache(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	az.Setenv(t)
	h := f.newHealth(t, f.srv.Addr(), "", time.Minute)
	for range 100 {
		if reason := h.notReady(context.Background()); reason != "" {
			t.Fatalf("not ready: %s", reason)
		}
	}
	if n := f.srv.Stats().Accepted; n != 1 {
		t.Errorf("%d logins for 100 probes within the window; want 1", n)
	}

	// A user the token is not for: refused, and the refusal is reused.
	h = f.newHealth(t, f.srv.Addr(), "cli-identity", time.Minute)
	for range 100 {
		if reason := h.notReady(context.Background()); reason != "the upstream server refused the login: SQLSTATE 28P01 (the proxy's log has the error)" {
			t.Fatalf("notReady: %q", reason)
		}
	}
	if n := f.srv.Stats().TotalRejected(); n != 1 {
		t.Errorf("%d refused logins for 100 probes; want 1", n)
	}
	c := h.readyCheck(time.Now().Add(readinessRetry + time.Second))
	<-c.done
	if n := f.srv.Stats().TotalRejected(); n != 2 {
		t.Errorf("%d refused logins after readinessRetry; want 2", n)
	}

	// Draining, and not started.
	h.draining.Store(true)
	if reason := h.notReady(context.Background()); reason != "shutting down" {
		t.Errorf("draining: %q", reason)
	}
	h.draining.Store(false)
	h.started.Store(false)
	if reason := h.notReady(context.Background()); reason != "starting" {
		t.Errorf("before the start: %q", reason)
	}
}
