package entraauth

import (
	"context"
	"fmt"
	"sync/atomic"
)

// principal is who a token is for, and its database user name once known.
// Tokens of one principal (one oid) share it, so a managed identity's name
// is looked up once per principal; a token for another principal (after az
// login as someone else) gets a principal of its own.
type principal struct {
	oid       string
	claimName string                     // from the token's name claims; empty for most service identities
	derived   atomic.Pointer[userResult] // the Resource Manager lookup's final result, once known
}

// newPrincipal returns the principal of a freshly fetched token: the
// cached token's when the oid is the same, else a new one.
func newPrincipal(claims *tokenClaims, prev *cachedToken) *principal {
	if prev != nil && prev.principal.oid == claims.ObjectID {
		return prev.principal
	}
	return &principal{oid: claims.ObjectID, claimName: claims.userName()}
}

// userResult is a derived user name, or the ErrNoUsername that deriving it
// gave: both are final for a principal.
type userResult struct {
	name string
	err  error
}

// userFor returns the database user for a connection: WithUser's, else
// named, the user the connection settings name (empty when they name none),
// else the token principal's.
func (ts *TokenSource) userFor(ctx context.Context, named, scope string, c *cachedToken) (string, error) {
	switch {
	case ts.set.user != "":
		return ts.set.user, nil
	case named != "":
		return named, nil
	}
	p := c.principal
	if p.claimName != "" {
		return p.claimName, nil
	}
	if r := p.derived.Load(); r != nil {
		return r.name, r.err
	}
	ch := ts.users.DoChan(p.oid, func() (any, error) { return ts.lookUpManagedIdentityName(scope, p) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", fmt.Errorf("entraauth: waiting for the user name: %w", context.Cause(ctx))
	}
}

// lookUpManagedIdentityName finds the name of a principal whose database
// token names no user: the xms_mirid claim of one Azure Resource Manager
// token of the same cloud (managed identities). The result is kept for
// the principal, unless the credential failed.
func (ts *TokenSource) lookUpManagedIdentityName(scope string, p *principal) (string, error) {
	if r := p.derived.Load(); r != nil {
		return r.name, r.err
	}
	at, err := ts.getToken(armScopeFor(scope))
	if err != nil {
		return "", fmt.Errorf("%w (the database token names no user, so entraauth asked for a Resource Manager token to find a managed identity's name; name the user with WithUser to skip this)", err)
	}
	armClaims, err := parseClaims(at.Token)
	if err != nil {
		return "", err
	}
	name := armClaims.managedIdentityName()
	if name == "" {
		// Kept: asking again would give the same answer.
		err := errNoUsername()
		p.derived.Store(&userResult{err: err})
		ts.set.logger.Warn("entraauth: no user name in the tokens", "error", err.Error())
		return "", err
	}
	p.derived.Store(&userResult{name: name})
	rememberManagedIdentity(p.oid, name)
	ts.set.logger.Info("entraauth: derived the database user name", "user", name, "from", "xms_mirid of a Resource Manager token")
	return name, nil
}
