package entraauth

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// userFor returns the database user for a connection: WithUser's, else the
// one the connection settings name, else the one derived from the token.
func (ts *TokenSource) userFor(ctx context.Context, cfg *pgx.ConnConfig, scope string, c *cachedToken) (string, error) {
	switch {
	case ts.set.user != "":
		return ts.set.user, nil
	case ts.userNamed(cfg):
		return cfg.User, nil
	}
	if r := ts.user.Load(); r != nil {
		return r.name, r.err
	}
	ch := ts.users.DoChan("user", func() (any, error) { return ts.deriveUser(scope, c.token.Value) })
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

// deriveUser finds the user name once per TokenSource: from the database
// token's name claims, else from the xms_mirid claim of one Azure Resource
// Manager token of the same cloud (managed identities).
func (ts *TokenSource) deriveUser(scope, token string) (string, error) {
	if r := ts.user.Load(); r != nil {
		return r.name, r.err
	}
	claims, err := parseClaims(token)
	if err != nil {
		return "", err
	}
	name, source := claims.userName(), "token claims"
	if name == "" {
		armScope := armScopeFor(scope)
		at, err := ts.getToken(armScope)
		if err != nil {
			ts.nFailed.Add(1)
			return "", fmt.Errorf("%w (the database token names no user, so entraauth asked for a Resource Manager token to find a managed identity's name; name the user with WithUser to skip this)", err)
		}
		armClaims, err := parseClaims(at.Token)
		if err != nil {
			return "", err
		}
		if name, source = armClaims.managedIdentityName(), "xms_mirid of a Resource Manager token"; name == "" {
			// Kept: asking again would give the same answer.
			err := errNoUsername()
			ts.user.Store(&userResult{err: err})
			ts.set.logger.Warn("entraauth: no user name in the tokens", "error", err.Error())
			return "", err
		}
	}
	ts.user.Store(&userResult{name: name})
	ts.set.logger.Info("entraauth: derived the database user name", "user", name, "from", source)
	return name, nil
}

// userResult is a derived user name, or the ErrNoUsername that deriving it
// gave: both are final for a TokenSource.
type userResult struct {
	name string
	err  error
}
