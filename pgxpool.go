package entraauth

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Hook returns a pgxpool.Config.BeforeConnect function that authenticates
// every new connection with an Entra access token from cred, cached and
// refreshed ahead of expiry. It is NewTokenSource(cred, opts...).BeforeConnect.
func Hook(cred azcore.TokenCredential, opts ...Option) func(context.Context, *pgx.ConnConfig) error {
	return NewTokenSource(cred, opts...).BeforeConnect
}

// BeforeConnect readies a connection config for Entra authentication: it
// drops plaintext fallbacks (refusing with ErrInsecureTransport a TCP
// connection that would carry the token without TLS), sets the password to
// the access token, sets pgconn's OAuthTokenProvider for servers that ask
// for OAUTHBEARER, and fills in the user name unless one is named. Use it as
// pgxpool.Config.BeforeConnect or with stdlib.OptionBeforeConnect.
func (ts *TokenSource) BeforeConnect(ctx context.Context, cfg *pgx.ConnConfig) error {
	if ts.set.err != nil {
		return ts.set.err
	}
	if err := ts.guardTransport(cfg); err != nil {
		return err
	}
	scope, err := ts.scopeForHost(cfg.Host)
	if err != nil {
		return err
	}
	c, err := ts.token(ctx, scope)
	if err != nil {
		return err
	}
	if cfg.User, err = ts.userFor(ctx, cfg, scope, c); err != nil {
		return err
	}
	cfg.Password = c.token.Value
	cfg.OAuthTokenProvider = ts.oauthProvider
	return nil
}

// guardTransport keeps the token off plaintext TCP. pgx tries the main
// host, then each fallback: those that would not use TLS (sslmode=prefer's
// and allow's plaintext attempts) are dropped, and if none is left the
// connection is refused before anything is sent. Unix sockets are local and
// allowed. cfg is a shallow copy shared with the pool, so the Fallbacks
// slice and its elements are never modified: a new slice replaces it.
func (ts *TokenSource) guardTransport(cfg *pgx.ConnConfig) error {
	if ts.set.allowPlaintext {
		return nil
	}
	mainOK := ts.transportOK(cfg.Host, cfg.TLSConfig)
	allOK := mainOK
	for _, fb := range cfg.Fallbacks {
		allOK = allOK && ts.transportOK(fb.Host, fb.TLSConfig)
	}
	if allOK {
		return nil
	}
	kept := make([]*pgconn.FallbackConfig, 0, 1+len(cfg.Fallbacks))
	if mainOK {
		kept = append(kept, &pgconn.FallbackConfig{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig})
	}
	for _, fb := range cfg.Fallbacks {
		if ts.transportOK(fb.Host, fb.TLSConfig) {
			kept = append(kept, fb)
		}
	}
	if len(kept) == 0 {
		return ts.insecureTransportError(cfg)
	}
	cfg.Host, cfg.Port, cfg.TLSConfig = kept[0].Host, kept[0].Port, kept[0].TLSConfig
	cfg.Fallbacks = kept[1:]
	return nil
}

// transportOK reports whether the token may be sent to host over a
// connection with this TLS config.
func (ts *TokenSource) transportOK(host string, tlsConfig *tls.Config) bool {
	switch {
	case isUnixSocket(host):
		return true
	case tlsConfig == nil:
		return false
	case ts.set.requireVerified:
		// sslmode=verify-full is the only mode in which pgx verifies both
		// the certificate chain and the host name with the standard checks.
		return !tlsConfig.InsecureSkipVerify
	}
	return true
}

func (ts *TokenSource) insecureTransportError(cfg *pgx.ConnConfig) error {
	addr := fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	if ts.set.requireVerified {
		return fmt.Errorf("%w: the connection to %s would not verify the server certificate and host name, "+
			"and WithRequireVerifiedTLS is set; use sslmode=verify-full (with sslrootcert= if the CA is not in the system pool)",
			ErrInsecureTransport, addr)
	}
	return fmt.Errorf("%w: the connection to %s would send the token in plaintext; "+
		"use sslmode=verify-full (recommended) or sslmode=require; for a local server without TLS only, see WithInsecurePlaintextForLocalDevelopment",
		ErrInsecureTransport, addr)
}

// isUnixSocket reports whether pgx treats host as a unix socket directory.
func isUnixSocket(host string) bool {
	return strings.HasPrefix(host, "/") || filepath.IsAbs(host)
}
