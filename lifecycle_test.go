package entraauth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"sort"
)

// TestColdStartsMakeOneCredentialCall repeats a cold start of 32
// concurrent connects on a new TokenSource thousands of times: a caller
// that finds the cache empty but arrives after the fetch finished must
// not start a second one.
func TestColdStartsMakeOneCredentialCall(t *testing.T) {
	t.Setenv("PGUSER", "")
	trials := 3000
	if testing.Short() {
		trials = 300
	}
	for trial := range trials {
		cred := newFakeCredential("alice@contoso.com")
		ts := NewTokenSource(cred)
		var start, wg sync.WaitGroup
		start.Add(1)
		for range 32 {
			wg.Go(func() {
				start.Wait()
				cfg := connConfig(t, "host=srv.postgres.database.azure.com sslmode=require")
				if err := ts.BeforeConnect(context.Background(), cfg); err != nil {
					t.Error(err)
				}
			})
		}
		start.Done()
		wg.Wait()
		if n := cred.calls.Load(); n != 1 {
			t.Fatalf("trial %d: credential calls = %d for one cold start, want 1", trial, n)
		}
	}
}

// TestPastRefreshOnDoesNotRefetchOnEveryConnect: MSAL's managed identity
// client returns a valid token with a RefreshOn already past when its own
// proactive refresh fails. The backoff, not every connect, decides when to
// ask again.
func TestPastRefreshOnDoesNotRefetchOnEveryConnect(t *testing.T) {
	ts, cred, clock := newClockedSource(t, time.Hour)
	cred.refreshOn = func(now time.Time) time.Time { return now.Add(-time.Minute) }
	ctx := context.Background()
	for i := range 50 {
		cfg := connConfig(t, "host=srv.postgres.database.azure.com sslmode=require")
		if err := ts.BeforeConnect(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		waitIdle(t, ts)
		if i%10 == 9 {
			clock.Advance(100 * time.Millisecond)
		}
	}
	if n := cred.calls.Load(); n > 2 {
		t.Fatalf("credential calls = %d for 50 connects within 0.5s, want at most 2", n)
	}
	// Past the backoff, it is asked again, and backs off longer.
	clock.Advance(maxBackoff)
	if _, err := ts.Token(ctx); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ts)
	if n := cred.calls.Load(); n < 2 {
		t.Fatalf("credential calls = %d, want a retry once the backoff passed", n)
	}
}

// TestTokenBeforeConnectDoesNotPinTheScope: a warm-up Token call before
// any connect must not fix the public cloud's scope.
func TestTokenBeforeConnectDoesNotPinTheScope(t *testing.T) {
	for _, host := range []string{"srv.postgres.database.chinacloudapi.cn", "srv.postgres.database.usgovcloudapi.net"} {
		cred := newFakeCredential("alice@contoso.com")
		ts := NewTokenSource(cred)
		ctx := context.Background()
		if _, err := ts.Token(ctx); err != nil {
			t.Fatal(err)
		}
		cfg := connConfig(t, "host="+host+" sslmode=require")
		if err := ts.BeforeConnect(ctx, cfg); err != nil {
			t.Fatalf("%s: connect after a warm-up Token: %v", host, err)
		}
		scopes := cred.requestedScopes()
		if got, want := scopes[len(scopes)-1], ScopeForHost(host); got != want {
			t.Fatalf("%s: the connect's token was for %s, want %s", host, got, want)
		}
		// Token now follows the server's cloud.
		if _, err := ts.Token(ctx); err != nil {
			t.Fatal(err)
		}
		if n := len(cred.requestedScopes()); n != 2 {
			t.Fatalf("%s: scopes requested = %v, want the public one then the server's", host, cred.requestedScopes())
		}
	}
}

// TestNewPrincipalGetsItsOwnName: after someone runs az login as another
// user, new connections use the new principal's name, not the old one.
func TestNewPrincipalGetsItsOwnName(t *testing.T) {
	t.Setenv("PGUSER", "")
	ts, cred, clock := newClockedSource(t, 10*time.Minute)
	userOf := func() string { return connectedUser(t, ts) }
	if u := userOf(); u != "alice@contoso.com" {
		t.Fatalf("user = %q, want alice", u)
	}
	cred.set(func(f *fakeCredential) { f.upn, f.oid = "bob@contoso.com", "00000000-0000-0000-0000-00000000b0b0" })
	clock.Advance(10 * time.Minute) // alice's token expired
	if u := userOf(); u != "bob@contoso.com" {
		t.Fatalf("user after the principal changed = %q, want bob", u)
	}
}

// connectedUser returns the user BeforeConnect sets for a connection
// string naming none.
func connectedUser(t *testing.T, ts *TokenSource) string {
	t.Helper()
	cfg := connConfig(t, "host=srv.postgres.database.azure.com sslmode=require")
	if err := ts.BeforeConnect(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.User
}

// TestManagedIdentityNameIsLookedUpOncePerPrincipal: the Resource Manager
// lookup runs again only when a new token's oid differs.
func TestManagedIdentityNameIsLookedUpOncePerPrincipal(t *testing.T) {
	t.Setenv("PGUSER", "")
	ts, cred, clock := newClockedSource(t, 10*time.Minute)
	cred.upn, cred.mirid = "", testMIRID
	userOf := func() string { return connectedUser(t, ts) }
	armCalls := func() int {
		n := 0
		for _, s := range cred.requestedScopes() {
			if s == publicCloud.armScope {
				n++
			}
		}
		return n
	}
	for range 3 { // three tokens of one principal
		if u := userOf(); u != "orders-api" {
			t.Fatalf("user = %q", u)
		}
		clock.Advance(10 * time.Minute)
	}
	if n := armCalls(); n != 1 {
		t.Fatalf("Resource Manager tokens = %d over three tokens of one principal, want 1", n)
	}
	cred.set(func(f *fakeCredential) {
		f.oid, f.mirid = "00000000-0000-0000-0000-0000000000b2", "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/billing-api"
	})
	if u := userOf(); u != "billing-api" {
		t.Fatalf("user after the identity changed = %q, want billing-api", u)
	}
	if n := armCalls(); n != 2 {
		t.Fatalf("Resource Manager tokens = %d, want a second one for the new principal", n)
	}
}

// TestNonJWTIsRejectedEvenWithAnExpiry: a credential that gives an expiry
// and a token that is no JWT must not have it sent as the password.
func TestNonJWTIsRejectedEvenWithAnExpiry(t *testing.T) {
	ts, cred, _ := newClockedSource(t, time.Hour)
	cred.raw = "opaque-bearer-value-not-a-jwt"
	cfg := connConfig(t, "host=srv.postgres.database.azure.com sslmode=require user=alice")
	err := ts.BeforeConnect(context.Background(), cfg)
	if !errors.Is(err, ErrMalformedToken) {
		t.Fatalf("err = %v, want ErrMalformedToken", err)
	}
	if cfg.Password == cred.raw || strings.Contains(err.Error(), cred.raw) {
		t.Fatal("the non-JWT reached the config or the error")
	}
}

// TestPanickingCredentialIsContained: a credential is user code; its panic
// becomes a CredentialError and the process lives on.
func TestPanickingCredentialIsContained(t *testing.T) {
	t.Setenv("PGUSER", "")
	check := func(t *testing.T, err error) {
		t.Helper()
		var credErr *CredentialError
		if !errors.As(err, &credErr) {
			t.Fatalf("err = %v, want a *CredentialError", err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "panic") || !strings.Contains(msg, "credential exploded") || !strings.Contains(msg, "goroutine") {
			t.Fatalf("err = %q, want the panic value and a stack", msg)
		}
	}
	t.Run("Token", func(t *testing.T) {
		ts, cred, _ := newClockedSource(t, time.Hour)
		cred.panicWith = "credential exploded"
		_, err := ts.Token(context.Background())
		check(t, err)
	})
	t.Run("BeforeConnect", func(t *testing.T) {
		ts, cred, _ := newClockedSource(t, time.Hour)
		cred.panicWith = errors.New("credential exploded")
		err := ts.BeforeConnect(context.Background(), connConfig(t, "host=srv.postgres.database.azure.com sslmode=require"))
		check(t, err)
	})
	t.Run("pool", func(t *testing.T) {
		pg := testServer(t)
		cred := roleCredential(t, pg, "panic@contoso.com", "panic@contoso.com", "")
		cred.panicWith = "credential exploded"
		pool := newPool(t, pg.ConnString("", ""), Hook(cred), 4)
		_, err := pool.Exec(context.Background(), "select 1")
		check(t, err)
		// The pool lives on: once the credential behaves, it connects.
		cred.set(func(f *fakeCredential) { f.panicWith = nil })
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err = pool.Exec(context.Background(), "select 1")
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("after the credential recovered: %v", err)
		}
	})
}

// TestFetchTimeoutIsAHardBound: a credential that ignores its context
// cannot hold a caller past the fetch timeout, through Token and through a
// real pool.
func TestFetchTimeoutIsAHardBound(t *testing.T) {
	t.Setenv("PGUSER", "")
	stuck := make(chan struct{})
	defer close(stuck)
	t.Run("Token", func(t *testing.T) {
		ts, cred, _ := newClockedSource(t, time.Hour, WithFetchTimeout(200*time.Millisecond))
		cred.stuck = stuck
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := ts.Token(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the fetch timeout", err)
		}
		if ctx.Err() != nil {
			t.Fatal("the caller waited until its own deadline: the fetch timeout did not bound the wait")
		}
		var credErr *CredentialError
		if !errors.As(err, &credErr) || !strings.Contains(err.Error(), "200ms") {
			t.Fatalf("err = %v, want a CredentialError naming the fetch timeout", err)
		}
	})
	t.Run("pool", func(t *testing.T) {
		pg := testServer(t)
		cred := roleCredential(t, pg, "stuck@contoso.com", "stuck@contoso.com", "")
		cred.stuck = stuck
		pool := newPool(t, pg.ConnString("", ""), Hook(cred, WithFetchTimeout(200*time.Millisecond)), 4)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, "select 1")
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			t.Fatalf("err = %v (caller's ctx: %v), want the fetch timeout before the caller's deadline", err, ctx.Err())
		}
	})
}

// TestHungFetchDoesNotWedgeTheSource: after the fetch timeout, a later
// caller starts a fresh fetch although the hung call never returned.
func TestHungFetchDoesNotWedgeTheSource(t *testing.T) {
	t.Setenv("PGUSER", "")
	pg := testServer(t)
	cred := roleCredential(t, pg, "wedge@contoso.com", "wedge@contoso.com", "")
	stuck := make(chan struct{})
	defer close(stuck)
	cred.stuck = stuck
	clock := newTestClock()
	cred.clock = clock.Now
	ts := NewTokenSource(cred, WithFetchTimeout(200*time.Millisecond))
	ts.now = clock.Now
	pool := newPool(t, pg.ConnString("", ""), ts.BeforeConnect, 4)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "select 1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the fetch timeout", err)
	}
	cred.set(func(f *fakeCredential) { f.stuck = nil }) // recovers; the first call stays hung
	clock.Advance(maxBackoff)                           // past any backoff
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := pool.Exec(cctx, "select 1"); err != nil {
		t.Fatalf("after the credential recovered: %v", err)
	}
	if n := cred.calls.Load(); n != 2 {
		t.Fatalf("credential calls = %d, want 2 (the hung one and a fresh one)", n)
	}
}

// TestFailingCredentialIsNotStormed: with no usable token and a failing
// credential, connects inside the backoff window share the last failure
// at once instead of calling the credential each time.
func TestFailingCredentialIsNotStormed(t *testing.T) {
	t.Setenv("PGUSER", "")
	pg := testServer(t)
	cred := roleCredential(t, pg, "storm@contoso.com", "storm@contoso.com", "")
	cred.failWith(errBoom)
	clock := newTestClock()
	cred.clock = clock.Now
	ts := NewTokenSource(cred)
	ts.now = clock.Now
	pool := newPool(t, pg.ConnString("", ""), ts.BeforeConnect, 4)
	ctx := context.Background()

	for i := range 200 {
		_, err := pool.Exec(ctx, "select 1")
		var credErr *CredentialError
		if !errors.As(err, &credErr) || !errors.Is(err, errBoom) {
			t.Fatalf("connect %d: err = %v, want the credential's failure", i, err)
		}
		if i > 0 {
			var backoff *BackoffError
			if !errors.As(err, &backoff) || !backoff.RetryAt.After(clock.Now()) || !strings.Contains(err.Error(), "next attempt") {
				t.Fatalf("connect %d: err = %v, want a *BackoffError saying when the next attempt is", i, err)
			}
		}
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d for 200 connects in one backoff window, want 1", n)
	}
	// The window grows with each failure, and a success resets it.
	var windows []time.Duration
	for range 4 {
		ts.backoffMu.Lock()
		w := ts.retryAt.Sub(clock.Now())
		ts.backoffMu.Unlock()
		windows = append(windows, w)
		clock.Advance(w)
		if _, err := pool.Exec(ctx, "select 1"); err == nil {
			t.Fatal("connected with a failing credential")
		}
	}
	for i := 1; i < len(windows); i++ {
		if windows[i] <= windows[i-1]/2 || windows[i] > maxBackoff {
			t.Fatalf("backoff windows %v do not grow", windows)
		}
	}
	if n := cred.calls.Load(); n != 5 {
		t.Fatalf("credential calls = %d, want one per window (5)", n)
	}
	ts.backoffMu.Lock()
	clock.Advance(ts.retryAt.Sub(clock.Now()))
	ts.backoffMu.Unlock()
	cred.failWith(nil)
	if _, err := pool.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("after the credential recovered: %v", err)
	}
	ts.backoffMu.Lock()
	defer ts.backoffMu.Unlock()
	if ts.failures != 0 || !ts.retryAt.IsZero() {
		t.Fatalf("a success did not reset the backoff: failures %d, retryAt %s", ts.failures, ts.retryAt)
	}
}

// TestFleetRefreshIsSpread starts 10,000 TokenSources at the same instant
// on a fake clock, as a fleet deployed together would, and counts the
// credential calls of their refreshes per second over two token lifetimes.
// Each source is asked for a token the moment its refresh is due, as a busy
// service's next connect would. A tenth of the fleet without jitter is
// the baseline: every source refreshes in the same second.
func TestFleetRefreshIsSpread(t *testing.T) {
	const fleet = 10000
	unjittered := fleetBusiestSecond(t, fleet/10, func(*TokenSource) {})
	if unjittered != fleet/10 {
		t.Fatalf("without jitter the busiest second of %d sources has %d calls, want them all: the test cannot tell", fleet/10, unjittered)
	}
	busiest := fleetBusiestSecond(t, fleet, nil)
	t.Logf("%d sources started together: busiest refresh second %d calls with jitter (%.2f%% of the fleet); without jitter %d of %d sources (100%%)",
		fleet, busiest, 100*float64(busiest)/fleet, unjittered, fleet/10)
	if busiest > fleet/50 {
		t.Fatalf("busiest second has %d refresh calls of %d sources: refreshes are not spread", busiest, fleet)
	}
}

// fleetBusiestSecond runs the fleet for two refreshes and returns the most
// refresh calls in one second. configure, if not nil, adjusts each source.
func fleetBusiestSecond(t *testing.T, fleet int, configure func(*TokenSource)) int {
	t.Helper()
	clock := newTestClock()
	start := clock.Now()
	cred := newFakeCredential("alice@contoso.com")
	cred.clock = clock.Now
	cred.started = make(chan struct{}, 3*fleet)
	var mu sync.Mutex
	perSecond := map[int64]int{}
	cred.onMint = func(string) {
		mu.Lock()
		perSecond[clock.Now().Unix()]++
		mu.Unlock()
	}
	sources := make([]*TokenSource, fleet)
	ctx := context.Background()
	for i := range sources {
		ts := NewTokenSource(cred)
		ts.now = clock.Now
		if configure != nil {
			ts.refreshJitter = 0
		}
		if _, err := ts.Token(ctx); err != nil {
			t.Fatal(err)
		}
		sources[i] = ts
	}
	delete(perSecond, start.Unix()) // the deployment itself
	for round := range 2 {
		sort.Slice(sources, func(i, j int) bool { return sources[i].Stats().RefreshAt.Before(sources[j].Stats().RefreshAt) })
		for _, ts := range sources {
			if due := ts.Stats().RefreshAt; clock.Now().Before(due) {
				clock.Advance(due.Sub(clock.Now()))
			}
			before := ts.Stats().ExpiresOn
			if _, err := ts.Token(ctx); err != nil {
				t.Fatal(err)
			}
			waitIdle(t, ts)
			if !ts.Stats().ExpiresOn.After(before) {
				t.Fatalf("round %d: a due source did not refresh", round)
			}
		}
	}
	busiest, total := 0, 0
	for _, n := range perSecond {
		total += n
		busiest = max(busiest, n)
	}
	if total != 2*fleet {
		t.Fatalf("refresh calls = %d, want %d", total, 2*fleet)
	}
	return busiest
}

// TestNestedTokensAreRedactedInEveryEncoding: slog applies LogValue only
// to a top-level value; a Token inside a struct, slice, map or pointer is
// encoded by encoding/json or fmt, which must redact it too.
func TestNestedTokensAreRedactedInEveryEncoding(t *testing.T) {
	ts, _, _ := newClockedSource(t, time.Hour)
	tok, err := ts.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type wrapper struct {
		Tok   Token
		Ptr   *Token
		Stats Stats
	}
	shapes := map[string]any{
		"struct":  wrapper{Tok: tok, Ptr: &tok, Stats: ts.Stats()},
		"slice":   []Token{tok},
		"map":     map[string]Token{"t": tok},
		"pointer": &tok,
		"value":   tok,
	}
	for name, v := range shapes {
		var out bytes.Buffer
		slog.New(slog.NewJSONHandler(&out, nil)).Info("x", "v", v)
		slog.New(slog.NewTextHandler(&out, nil)).Info("x", "v", v)
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%s: json.Marshal: %v", name, err)
		}
		out.Write(b)
		if text, err := tok.MarshalText(); err != nil {
			t.Fatal(err)
		} else {
			out.Write(text)
		}
		if strings.Contains(out.String(), tok.Value) {
			t.Fatalf("%s: the token leaked: %s", name, out.String())
		}
		if !strings.Contains(out.String(), "REDACTED") {
			t.Fatalf("%s: no redaction marker in %s", name, out.String())
		}
	}
}
