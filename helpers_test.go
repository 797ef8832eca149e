package entraauth

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/golang-jwt/jwt/v5"
)

// fakeCredential is a controllable azcore.TokenCredential: it mints
// unsigned-in-spirit (HS256, test key) JWTs shaped like Entra's, counts
// calls, and can be gated, failed or hung by the test.
type fakeCredential struct {
	mu        sync.Mutex
	clock     func() time.Time
	lifetime  time.Duration
	upn       string // database tokens carry it when set
	mirid     string // Resource Manager tokens carry it when set
	err       error
	gate      chan struct{} // when non-nil, GetToken waits for it to close (or ctx)
	onMint    func(token string)
	scopes    []string
	tenants   []string
	ctxErrs   []error // ctx.Err() seen when each call returned
	calls     atomic.Int64
	started   chan struct{} // receives one value per call start (buffered)
	returned  atomic.Int64
	minted    []string
	expiresOn func(now time.Time, lifetime time.Duration) time.Time // optional override
	refreshOn func(now time.Time) time.Time                         // optional RefreshOn
	latency   time.Duration
	oid       string        // the principal's object ID; a default when empty
	panicWith any           // when non-nil, GetToken panics with it
	stuck     chan struct{} // when non-nil, GetToken ignores its context and waits for this
	raw       string        // when non-empty, returned as the token instead of a JWT
}

type fakeCredError struct{ msg string }

func (e *fakeCredError) Error() string { return e.msg }

func newFakeCredential(upn string) *fakeCredential {
	return &fakeCredential{clock: time.Now, lifetime: time.Hour, upn: upn, started: make(chan struct{}, 1000)}
}

func (f *fakeCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	f.calls.Add(1)
	f.started <- struct{}{}
	defer f.returned.Add(1)
	f.mu.Lock()
	f.scopes = append(f.scopes, opts.Scopes...)
	f.tenants = append(f.tenants, opts.TenantID)
	gate, err, lifetime, latency, oid, panicWith, stuck, raw := f.gate, f.err, f.lifetime, f.latency, f.oid, f.panicWith, f.stuck, f.raw
	f.mu.Unlock()
	if panicWith != nil {
		panic(panicWith)
	}
	if stuck != nil {
		<-stuck // a credential that ignores its context
	}
	if oid == "" {
		oid = "00000000-0000-0000-0000-000000000001"
	}
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-ctx.Done():
			f.recordCtx(ctx)
			return azcore.AccessToken{}, ctx.Err()
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			f.recordCtx(ctx)
			return azcore.AccessToken{}, ctx.Err()
		}
	}
	f.recordCtx(ctx)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	if len(opts.Scopes) != 1 {
		return azcore.AccessToken{}, fmt.Errorf("want one scope, got %d", len(opts.Scopes))
	}
	now := f.clock()
	claims := jwt.MapClaims{"aud": opts.Scopes[0], "exp": now.Add(lifetime).Unix(), "iat": now.Unix(), "oid": oid}
	isARM := opts.Scopes[0] == publicCloud.armScope || opts.Scopes[0] == clouds[0].armScope || opts.Scopes[0] == clouds[1].armScope
	if isARM && f.mirid != "" {
		claims["xms_mirid"] = f.mirid
	}
	if !isARM && f.upn != "" {
		claims["upn"] = f.upn
	}
	claims["jti"] = fmt.Sprintf("%d", f.calls.Load()) // distinct tokens
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte("test key"))
	if err != nil {
		return azcore.AccessToken{}, err
	}
	if raw != "" {
		tok = raw
	}
	f.mu.Lock()
	onMint := f.onMint
	f.minted = append(f.minted, tok)
	f.mu.Unlock()
	if onMint != nil && !isARM {
		onMint(tok)
	}
	exp := now.Add(lifetime)
	if f.expiresOn != nil {
		exp = f.expiresOn(now, lifetime)
	}
	at := azcore.AccessToken{Token: tok, ExpiresOn: exp}
	if f.refreshOn != nil {
		at.RefreshOn = f.refreshOn(now)
	}
	return at, nil
}

// set runs fn under the credential's lock, for changing its behaviour while
// calls may be running.
func (f *fakeCredential) set(fn func(f *fakeCredential)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeCredential) recordCtx(ctx context.Context) {
	f.mu.Lock()
	f.ctxErrs = append(f.ctxErrs, ctx.Err())
	f.mu.Unlock()
}

// hold makes calls wait until release is called.
func (f *fakeCredential) hold() (release func()) {
	g := make(chan struct{})
	f.mu.Lock()
	f.gate = g
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.gate = nil
			f.mu.Unlock()
			close(g)
		})
	}
}

func (f *fakeCredential) failWith(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *fakeCredential) allMinted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.minted...)
}

func (f *fakeCredential) requestedScopes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.scopes...)
}

// waitStarted waits until n more calls have started.
func (f *fakeCredential) waitStarted(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-f.started:
		case <-time.After(10 * time.Second):
			t.Fatal("credential was not called")
		}
	}
}

// waitReturned waits until n calls have returned in all.
func (f *fakeCredential) waitReturned(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.returned.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("credential calls returned: %d, want %d", f.returned.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// testClock is a settable clock for TokenSource.now.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newClockedSource returns a TokenSource and credential sharing a test clock.
func newClockedSource(t *testing.T, lifetime time.Duration, opts ...Option) (*TokenSource, *fakeCredential, *testClock) {
	t.Helper()
	clock := newTestClock()
	cred := newFakeCredential("alice@contoso.com")
	cred.clock, cred.lifetime = clock.Now, lifetime
	ts := NewTokenSource(cred, opts...)
	ts.now = clock.Now
	ts.refreshJitter = 0 // refresh points at the margin, for exact times
	return ts, cred, clock
}

// waitIdle waits until no fetch is running.
func waitIdle(t *testing.T, ts *TokenSource) {
	t.Helper()
	for f := ts.inflight.Load(); f != nil; f = ts.inflight.Load() {
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Fatal("fetch still running")
		}
	}
}

var errBoom = &fakeCredError{msg: "identity service said no"}

func tokenRequest(scope string) policy.TokenRequestOptions {
	return policy.TokenRequestOptions{Scopes: []string{scope}}
}

func itoa(i int) string { return strconv.Itoa(i) }
