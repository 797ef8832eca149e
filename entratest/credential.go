package entratest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// defaultLifetime is the lifetime of tokens from a [Credential] and the fake
// az unless set otherwise.
const defaultLifetime = time.Hour

// Credential is a fake azcore.TokenCredential that mints tokens for one
// principal on an [Issuer], in process. It records what it is asked for and
// can be made slow, failing or hanging, to test how callers cope. It is safe
// for concurrent use; settings apply to calls that start after the change.
type Credential struct {
	iss *Issuer
	p   Principal

	calls atomic.Int64

	mu        sync.Mutex
	lifetime  time.Duration
	latency   time.Duration
	failErr   error
	hang      chan struct{} // non-nil while hanging; closed by Hang(false)
	refreshOn float64
	scopes    []string
	tenants   []string
}

var _ azcore.TokenCredential = (*Credential)(nil)

// NewCredential returns a credential minting tokens for p on iss, with a
// one-hour lifetime, no latency and no failure.
func NewCredential(iss *Issuer, p Principal) *Credential {
	return &Credential{iss: iss, p: p, lifetime: defaultLifetime}
}

// GetToken mints a token for the one scope in opts. It fails when opts does
// not have exactly one scope or names an unknown one. When opts.TenantID is
// set, the token is for that tenant (tid and iss), as a real credential
// would return; [Issuer.Verify] then rejects it unless it is the issuer's.
//
// In order: a hanging call blocks until ctx ends (returning ctx.Err()) or
// until Hang(false); the latency passes, unless ctx ends first; a failure
// set by FailWith is returned; then the token is minted.
func (c *Credential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls.Add(1)
	c.mu.Lock()
	c.scopes = append(c.scopes, opts.Scopes...)
	c.tenants = append(c.tenants, opts.TenantID)
	lifetime, latency, failErr, hang, refreshOn := c.lifetime, c.latency, c.failErr, c.hang, c.refreshOn
	c.mu.Unlock()

	if len(opts.Scopes) != 1 {
		return azcore.AccessToken{}, errors.New("entratest.Credential: GetToken requires exactly one scope")
	}
	if hang != nil {
		select {
		case <-ctx.Done():
			return azcore.AccessToken{}, ctx.Err()
		case <-hang:
		}
	}
	if err := sleepCtx(ctx, latency); err != nil {
		return azcore.AccessToken{}, err
	}
	if failErr != nil {
		return azcore.AccessToken{}, failErr
	}
	p := c.p
	if opts.TenantID != "" {
		p.TenantID = opts.TenantID
	}
	tok, err := c.iss.Mint(p, opts.Scopes[0], lifetime)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	if refreshOn > 0 {
		if refreshOn > 1 {
			refreshOn = 1
		}
		tok.RefreshOn = tok.ExpiresOn.Add(-time.Duration((1 - refreshOn) * float64(lifetime)))
	}
	return tok, nil
}

// sleepCtx waits for d or until ctx ends, whichever is first, and returns
// ctx.Err() in the second case. A zero d still reports an ended ctx.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// SetLifetime sets the lifetime of the tokens minted from now on (default
// one hour; at least one second, or GetToken fails).
func (c *Credential) SetLifetime(d time.Duration) {
	c.mu.Lock()
	c.lifetime = d
	c.mu.Unlock()
}

// SetLatency makes every later GetToken call take d before answering (or
// fail with ctx.Err() if its context ends first).
func (c *Credential) SetLatency(d time.Duration) {
	c.mu.Lock()
	c.latency = d
	c.mu.Unlock()
}

// FailWith makes every later GetToken call return err (after the latency),
// until FailWith(nil). The error is returned as is, so errors.Is and
// errors.As see it.
func (c *Credential) FailWith(err error) {
	c.mu.Lock()
	c.failErr = err
	c.mu.Unlock()
}

// Hang(true) makes later GetToken calls block until their context ends, then
// return ctx.Err(). Hang(false) releases the calls still blocked (they go on
// as usual) and stops hanging new ones.
func (c *Credential) Hang(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case on && c.hang == nil:
		c.hang = make(chan struct{})
	case !on && c.hang != nil:
		close(c.hang)
		c.hang = nil
	}
}

// SetRefreshOn makes later tokens carry AccessToken.RefreshOn at fraction
// (between 0 and 1) of their lifetime, counted from issue, as some
// azidentity credentials report it. 0, the default, leaves RefreshOn zero.
func (c *Credential) SetRefreshOn(fraction float64) {
	c.mu.Lock()
	c.refreshOn = fraction
	c.mu.Unlock()
}

// Calls returns how many GetToken calls have started, whatever their
// outcome.
func (c *Credential) Calls() int64 { return c.calls.Load() }

// Scopes returns a copy of the scopes GetToken was asked for, in order.
func (c *Credential) Scopes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.scopes...)
}

// Tenants returns a copy of the TenantID of each GetToken call, in order
// ("" where none was asked for).
func (c *Credential) Tenants() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.tenants...)
}
