package entraauth

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// Backoff after failed fetches: exponential from minBackoff to maxBackoff,
// each delay drawn from its upper half.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// flight is one database token fetch. Its result fields are written before
// done is closed and only read after.
type flight struct {
	scope string
	done  chan struct{}
	c     *cachedToken
	err   error
}

// startFetch returns the fetch in flight, or starts one for scope. The
// flight is registered before its goroutine starts, so a caller that sees
// none running knows that none is.
func (ts *TokenSource) startFetch(scope string) *flight {
	for {
		if f := ts.inflight.Load(); f != nil {
			return f
		}
		f := &flight{scope: scope, done: make(chan struct{})}
		if ts.inflight.CompareAndSwap(nil, f) {
			go ts.run(f)
			return f
		}
	}
}

// run fetches a token for f, caches it, and ends the flight. It re-checks
// the cache first: a caller that found the cache empty just before another
// fetch filled it must not make a second call.
func (ts *TokenSource) run(f *flight) {
	defer func() {
		ts.inflight.Store(nil)
		close(f.done)
	}()
	now := ts.now().Round(0)
	if c := ts.current.Load(); c != nil && c.scope == f.scope && now.Before(c.refreshAt) {
		f.c = c
		return
	}
	f.c, f.err = ts.fetch(f.scope)
}

// fetch gets a token from the credential, caches it and updates the
// backoff. The user name's principal carries over from the cached token
// when the new token is for the same principal (oid).
func (ts *TokenSource) fetch(scope string) (*cachedToken, error) {
	at, err := ts.getToken(scope)
	var c *cachedToken
	now := ts.now().Round(0)
	if err == nil {
		if c, err = newCachedToken(at, scope, now, ts.refreshJitter); err != nil {
			ts.nFailed.Add(1)
		}
	}
	if err != nil {
		delay := ts.backOff(err)
		ts.set.logger.Warn("entraauth: token fetch failed", "scope", scope, "error", err.Error(), "retry_in", delay)
		return nil, err
	}
	prev := ts.current.Load()
	c.principal = newPrincipal(c.claims, prev)
	c.claims = nil
	if prev == nil || prev.principal != c.principal {
		ts.set.logger.Info("entraauth: new token principal", "oid", c.principal.oid, "user_claim", c.principal.claimName)
	}
	ts.current.Store(c)
	if !now.Before(c.refreshAt) {
		// Already due (a RefreshOn in the past): usable, but asking again
		// at once would give the same answer. The backoff decides when.
		delay := ts.backOff(nil)
		ts.set.logger.Warn("entraauth: the credential returned a token already due for refresh", "scope", scope,
			"expires_on", c.token.ExpiresOn, "retry_in", delay)
		return c, nil
	}
	ts.backoffMu.Lock()
	ts.failures, ts.retryAt, ts.lastErr = 0, time.Time{}, nil
	ts.backoffMu.Unlock()
	ts.set.logger.Info("entraauth: token fetched", "scope", scope, "expires_on", c.token.ExpiresOn, "refresh_at", c.refreshAt)
	return c, nil
}

// getToken asks the credential for one token and waits at most the fetch
// timeout, whatever the credential does with its context: a call still
// running then is left to finish on its own, and its result is dropped.
// A panic in the credential becomes a *CredentialError.
func (ts *TokenSource) getToken(scope string) (azcore.AccessToken, error) {
	ts.nFetches.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), ts.set.fetchTimeout)
	defer cancel()
	type result struct {
		at       azcore.AccessToken
		err      error
		panicked bool
	}
	start := time.Now()
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("the credential panicked: %v\n%s", p, debug.Stack()), panicked: true}
			}
		}()
		at, err := ts.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}, TenantID: ts.set.tenantID})
		done <- result{at: at, err: err}
	}()
	var r result
	outcome := outcomeSuccess
	select {
	case r = <-done:
		if r.panicked {
			outcome = outcomePanic
		} else if r.err != nil {
			outcome = outcomeFailure
		}
	case <-ctx.Done():
		r.err = fmt.Errorf("the credential did not answer within the fetch timeout (%s; see WithFetchTimeout): %w",
			ts.set.fetchTimeout, ctx.Err())
		outcome = outcomeTimeout
	}
	if ts.metrics != nil {
		ts.metrics.recordFetch(scope, outcome, time.Since(start))
	}
	if r.err != nil {
		ts.nFailed.Add(1)
		return azcore.AccessToken{}, &CredentialError{Scope: scope, Err: r.err}
	}
	return r.at, nil
}

// backOff records a failed (or premature) fetch and returns the jittered
// delay before the next one may start.
func (ts *TokenSource) backOff(err error) time.Duration {
	ts.backoffMu.Lock()
	defer ts.backoffMu.Unlock()
	d := min(minBackoff<<min(ts.failures, 16), maxBackoff)
	ts.failures++
	d = d/2 + rand.N(d/2+1)
	ts.retryAt = ts.now().Round(0).Add(d)
	ts.lastErr = err
	return d
}

// backingOff reports whether now is inside the backoff, and the failure to
// share until it ends (nil after a premature, not a failed, fetch).
func (ts *TokenSource) backingOff(now time.Time) (bool, error) {
	ts.backoffMu.Lock()
	defer ts.backoffMu.Unlock()
	if !now.Before(ts.retryAt) {
		return false, nil
	}
	if ts.lastErr == nil {
		return true, nil
	}
	return true, &BackoffError{Err: ts.lastErr, RetryAt: ts.retryAt}
}
