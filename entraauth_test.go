package entraauth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"go.uber.org/goleak"
)

func TestCachedTokenIsServedWithoutFetchOrAllocation(t *testing.T) {
	ts, cred, _ := newClockedSource(t, time.Hour)
	ctx := context.Background()
	first, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		tok, err := ts.Token(ctx)
		if err != nil || tok.Value != first.Value {
			t.Fatalf("Token = %v, %v; want the cached token", tok, err)
		}
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d, want 1", n)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := ts.token(ctx, ScopePublic); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("cached token path allocates %.1f times per call, want 0", allocs)
	}
}

func TestBeforeConnectWithCachedTokenDoesNotAllocate(t *testing.T) {
	t.Setenv("PGUSER", "")
	ts, _, _ := newClockedSource(t, time.Hour)
	for _, connString := range []string{
		"host=SRV.postgres.database.azure.com sslmode=verify-full user=app", // named user
		"host=srv.postgres.database.azure.com sslmode=verify-full",          // derived user
	} {
		shared := connConfig(t, connString)
		cfg := *shared
		if err := ts.BeforeConnect(context.Background(), &cfg); err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(1000, func() {
			cfg := *shared // what pgxpool and stdlib hand the hook: a shallow copy
			if err := ts.BeforeConnect(context.Background(), &cfg); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: BeforeConnect allocates %.1f times per call with a cached token, want 0", connString, allocs)
		}
	}
}

func TestRefreshAheadServesCachedTokenWhileOneBackgroundFetchRuns(t *testing.T) {
	ts, cred, clock := newClockedSource(t, 10*time.Second)
	ctx := context.Background()
	old, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cred.waitStarted(t, 1)

	release := cred.hold()
	defer release()
	clock.Advance(6 * time.Second) // past refreshAt (5s), before usableUntil (9s)

	// Many callers during the refresh: each gets the cached token at once,
	// even with a context that is already cancelled, and one fetch runs.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for range 50 {
		tok, err := ts.Token(cancelled)
		if err != nil || tok.Value != old.Value {
			t.Fatalf("during refresh: Token = %v, %v; want the cached token", tok, err)
		}
	}
	cred.waitStarted(t, 1)
	if n := cred.calls.Load(); n != 2 {
		t.Fatalf("credential calls = %d, want 2 (one background refresh)", n)
	}
	release()
	waitIdle(t, ts)
	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value == old.Value {
		t.Fatal("refreshed token not used")
	}
	if n := cred.calls.Load(); n != 2 {
		t.Fatalf("credential calls = %d, want 2", n)
	}
}

func TestConcurrentColdCallersShareOneFetch(t *testing.T) {
	ts, cred, _ := newClockedSource(t, time.Hour)
	release := cred.hold()
	var wg sync.WaitGroup
	tokens := make([]string, 50)
	errs := make([]error, 50)
	for i := range tokens {
		wg.Go(func() {
			tok, err := ts.Token(context.Background())
			tokens[i], errs[i] = tok.Value, err
		})
	}
	cred.waitStarted(t, 1)
	release()
	wg.Wait()
	for i := range tokens {
		if errs[i] != nil || tokens[i] != tokens[0] || tokens[0] == "" {
			t.Fatalf("caller %d: %q, %v", i, tokens[i], errs[i])
		}
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d, want 1", n)
	}
}

func TestCancelledCallerReturnsPromptlyWithoutFailingTheSharedFetch(t *testing.T) {
	ts, cred, _ := newClockedSource(t, time.Hour)
	release := cred.hold()
	defer release()

	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { _, err := ts.Token(ctxA); errA <- err }()
	cred.waitStarted(t, 1)

	resB := make(chan error, 1)
	go func() { _, err := ts.Token(context.Background()); resB <- err }()

	cancelA()
	select {
	case err := <-errA:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller: err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled caller did not return")
	}
	release()
	if err := <-resB; err != nil {
		t.Fatalf("other caller failed: %v", err)
	}
	cred.mu.Lock()
	defer cred.mu.Unlock()
	if cred.ctxErrs[0] != nil {
		t.Fatalf("the fetch's context ended with the caller's: %v", cred.ctxErrs[0])
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d, want 1", n)
	}
}

func TestFailedRefreshKeepsUsableTokenAndBacksOffWithJitter(t *testing.T) {
	ts, cred, clock := newClockedSource(t, 10*time.Minute)
	ctx := context.Background()
	old, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cred.failWith(errBoom)
	clock.Advance(6 * time.Minute) // past refreshAt (5m), usable until 9m

	var prevDelay time.Duration
	for attempt := 1; attempt <= 4; attempt++ {
		tok, err := ts.Token(ctx)
		if err != nil || tok.Value != old.Value {
			t.Fatalf("attempt %d: Token = %v, %v; want the still-usable token", attempt, tok, err)
		}
		cred.waitReturned(t, int64(attempt+1))
		waitIdle(t, ts)
		// Backing off: no new fetch until retryAt.
		for range 10 {
			if _, err := ts.Token(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if n := cred.calls.Load(); n != int64(attempt+1) {
			t.Fatalf("attempt %d: credential calls = %d, want %d (no retry before the backoff ends)", attempt, n, attempt+1)
		}
		ts.backoffMu.Lock()
		delay := ts.retryAt.Sub(clock.Now())
		ts.backoffMu.Unlock()
		base := minBackoff << (attempt - 1)
		if delay < base/2 || delay > base {
			t.Fatalf("attempt %d: backoff %s, want within [%s, %s]", attempt, delay, base/2, base)
		}
		if attempt > 1 && delay <= prevDelay/2 {
			t.Fatalf("attempt %d: backoff %s did not grow from %s", attempt, delay, prevDelay)
		}
		prevDelay = delay
		clock.Advance(delay)
	}
	if s := ts.Stats(); s.FailedFetches != 4 || s.Fetches != 5 {
		t.Fatalf("stats = %+v, want 5 fetches, 4 failed", s)
	}
}

func TestBackoffJitterVaries(t *testing.T) {
	ts, _, _ := newClockedSource(t, time.Hour)
	seen := map[time.Duration]bool{}
	for range 20 {
		ts.failures = 3
		seen[ts.backOff(errBoom)] = true
	}
	if len(seen) < 2 {
		t.Fatalf("backoff delays are not jittered: %v", seen)
	}
}

func TestFailedFetchWithoutUsableTokenReturnsAtOnceWrapped(t *testing.T) {
	ts, cred, clock := newClockedSource(t, time.Hour)
	cred.failWith(errBoom)
	// A generous deadline the fetch must not run out: no retry loop.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := ts.Token(ctx)
	var credErr *CredentialError
	var fake *fakeCredError
	if !errors.As(err, &credErr) || !errors.As(err, &fake) || credErr.Scope != ScopePublic {
		t.Fatalf("err = %v, want a CredentialError wrapping the credential's error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the failure ran out the caller's deadline")
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d, want 1", n)
	}
	// Once the backoff has passed, the next caller starts a new fetch.
	cred.failWith(nil)
	clock.Advance(minBackoff)
	if _, err := ts.Token(ctx); err != nil {
		t.Fatalf("after the credential recovered: %v", err)
	}
}

func TestExpiredTokenIsNeverHandedOut(t *testing.T) {
	ts, cred, clock := newClockedSource(t, 10*time.Second)
	ctx := context.Background()
	if _, err := ts.Token(ctx); err != nil {
		t.Fatal(err)
	}
	cred.failWith(errBoom)
	clock.Advance(9 * time.Second) // at usableUntil: 1s of life left is not enough
	tok, err := ts.Token(ctx)
	if err == nil || tok.Value != "" {
		t.Fatalf("Token = %v, %v; want an error and no token", tok, err)
	}

	// A credential that hands back an expired token gets a typed error.
	cred.failWith(nil)
	cred.expiresOn = func(now time.Time, _ time.Duration) time.Time { return now.Add(-time.Minute) }
	clock.Advance(minBackoff) // past the backoff of the failure above
	_, err = ts.Token(ctx)
	var expired *TokenExpiredError
	if !errors.As(err, &expired) {
		t.Fatalf("err = %v, want *TokenExpiredError", err)
	}
}

func TestTokenTimesComeFromTheToken(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	jwtExp := newFakeCredential("x")
	jwtExp.clock = func() time.Time { return now }
	at, err := jwtExp.GetToken(context.Background(), tokenRequest(ScopePublic))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                      string
		expires, refreshOn        time.Time
		token                     string
		wantRefresh, wantUsableTo time.Time
		wantErr                   error
	}{
		{"one hour", now.Add(time.Hour), time.Time{}, at.Token, now.Add(55 * time.Minute), now.Add(time.Hour - 30*time.Second), nil},
		{"ten seconds", now.Add(10 * time.Second), time.Time{}, at.Token, now.Add(5 * time.Second), now.Add(9 * time.Second), nil},
		{"sixty seconds", now.Add(time.Minute), time.Time{}, at.Token, now.Add(30 * time.Second), now.Add(54 * time.Second), nil},
		{"RefreshOn earlier wins", now.Add(time.Hour), now.Add(30 * time.Minute), at.Token, now.Add(30 * time.Minute), now.Add(time.Hour - 30*time.Second), nil},
		{"RefreshOn later ignored", now.Add(time.Hour), now.Add(58 * time.Minute), at.Token, now.Add(55 * time.Minute), now.Add(time.Hour - 30*time.Second), nil},
		{"exp claim when ExpiresOn is zero", time.Time{}, time.Time{}, at.Token, now.Add(55 * time.Minute), now.Add(time.Hour - 30*time.Second), nil},
		{"no expiry at all", time.Time{}, time.Time{}, "not-a-jwt", time.Time{}, time.Time{}, ErrMalformedToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newCachedToken(azcore.AccessToken{Token: tc.token, ExpiresOn: tc.expires, RefreshOn: tc.refreshOn}, ScopePublic, now, 0)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.refreshAt.Equal(tc.wantRefresh) || !c.usableUntil.Equal(tc.wantUsableTo) {
				t.Fatalf("refreshAt %s usableUntil %s, want %s %s", c.refreshAt, c.usableUntil, tc.wantRefresh, tc.wantUsableTo)
			}
		})
	}
}

func TestExpiryComparesWallClock(t *testing.T) {
	// time.Now carries a monotonic reading that does not advance while a
	// machine sleeps; the cached times must not carry it.
	now := time.Now()
	at, err := newFakeCredential("x").GetToken(context.Background(), tokenRequest(ScopePublic))
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCachedToken(azcore.AccessToken{Token: at.Token, ExpiresOn: now.Add(time.Hour), RefreshOn: now.Add(10 * time.Minute)}, ScopePublic, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, tm := range map[string]time.Time{"expires": c.token.ExpiresOn, "refreshAt": c.refreshAt, "usableUntil": c.usableUntil} {
		if strings.Contains(tm.String(), "m=") {
			t.Errorf("%s carries a monotonic clock reading: %s", name, tm)
		}
	}
}

func TestNoGoroutineOutlivesAFetch(t *testing.T) {
	before := goleak.IgnoreCurrent()
	ts, cred, clock := newClockedSource(t, 10*time.Second)
	if _, err := ts.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock.Advance(6 * time.Second)
	if _, err := ts.Token(context.Background()); err != nil { // starts a background refresh
		t.Fatal(err)
	}
	cred.waitReturned(t, 2)
	goleak.VerifyNone(t, before)
}
