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
// connection that would carry the token without TLS), verifies the server
// as sslmode=verify-full does when no sslmode is named, sets the password
// to the access token, sets pgconn's OAuthTokenProvider for servers that
// ask for OAUTHBEARER, and fills in the user name unless one is named. A
// password written in the connection string is refused with
// ErrInvalidOption. Use it as pgxpool.Config.BeforeConnect or with
// stdlib.OptionBeforeConnect.
func (ts *TokenSource) BeforeConnect(ctx context.Context, cfg *pgx.ConnConfig) error {
	if ts.set.err != nil {
		return ts.set.err
	}
	facts := ts.connFacts(cfg)
	if facts.passwordWritten && cfg.Password != "" {
		return errPasswordWritten
	}
	if len(cfg.Fallbacks) > 0 || !ts.tlsAsIs(cfg.TLSConfig, facts) {
		if err := ts.guardTransport(cfg, facts); err != nil {
			return err
		}
	}
	scope, err := ts.scopeFor(facts, cfg)
	if err != nil {
		return err
	}
	if !userNamedBy(cfg, facts) {
		cfg.User = "" // pgx's default, the OS user: the name comes from the token
	}
	c, err := ts.token(ctx, scope)
	if err != nil {
		return err
	}
	if cfg.User, err = ts.userFor(ctx, cfg.User, scope, c); err != nil {
		return err
	}
	cfg.Password = c.token.Value
	cfg.OAuthTokenProvider = ts.oauthProvider
	return nil
}

// hostsOfOneCloud refuses a multi-host connection string whose hosts are
// in different Azure clouds: pgx sends the one password (token) to every
// host it tries, and a token is for one cloud's scope, so another cloud's
// server would be sent a token it must refuse.
func hostsOfOneCloud(cfg *pgx.ConnConfig) error {
	first := cloudForHost(cfg.Host)
	for _, fb := range cfg.Fallbacks {
		if c := cloudForHost(fb.Host); c != first {
			return fmt.Errorf("%w: the connection string's hosts %q and %q are in different Azure clouds, whose tokens have different scopes (%s and %s), "+
				"and one token goes to every host pgx tries; list the hosts of one cloud only, with one connection string (and pool) per cloud",
				ErrScopeMismatch, cfg.Host, fb.Host, first.dbScope, c.dbScope)
		}
	}
	return nil
}

// errPasswordWritten refuses a password written in the connection string,
// which the token would silently replace.
var errPasswordWritten = fmt.Errorf("%w: the connection string sets a password, which entraauth would replace with an Entra access token; "+
	"remove the password from the connection string, or, for password authentication, connect with pgx alone, without entraauth", ErrInvalidOption)

// guardTransport keeps the token off plaintext TCP and, when no sslmode is
// named, away from unverified servers. pgx tries the main host, then each
// fallback: those that would not use TLS (sslmode=prefer's and allow's
// plaintext attempts) are dropped, an unverified TLS config is replaced by
// a verifying one (see tls_default.go), and if no target is left the
// connection is refused before anything is sent. Unix sockets are local
// and allowed. cfg may share its TLS configs and its Fallbacks slice and
// elements with other connects' configs, so none of them is modified: new
// ones replace them.
func (ts *TokenSource) guardTransport(cfg *pgx.ConnConfig, facts *connFacts) error {
	if ts.set.allowPlaintext {
		return nil
	}
	verify := !facts.sslModeNamed
	if len(cfg.Fallbacks) == 0 || onlyPlaintextRetry(cfg) { // one host, the usual case
		out, ok := ts.checkTarget(facts.key, cfg.Host, cfg.TLSConfig, verify)
		if !ok {
			return ts.insecureTransportError(cfg)
		}
		cfg.TLSConfig, cfg.Fallbacks = out, nil
		return nil
	}
	var buf [4]target
	targets := append(buf[:0], target{host: cfg.Host, port: cfg.Port, in: cfg.TLSConfig})
	for _, fb := range cfg.Fallbacks {
		targets = append(targets, target{host: fb.Host, port: fb.Port, in: fb.TLSConfig})
	}
	same, kept := true, 0
	for i := range targets {
		t := &targets[i]
		t.out, t.ok = ts.checkTarget(facts.key, t.host, t.in, verify)
		same = same && t.ok && t.out == t.in
		if t.ok {
			kept++
		}
	}
	switch {
	case same:
		return nil
	case kept == 0:
		return ts.insecureTransportError(cfg)
	}
	var fallbacks []*pgconn.FallbackConfig
	if kept > 1 {
		fallbacks = make([]*pgconn.FallbackConfig, 0, kept-1)
	}
	first := true
	for i, t := range targets {
		switch {
		case !t.ok:
		case first:
			cfg.Host, cfg.Port, cfg.TLSConfig = t.host, t.port, t.out
			first = false
		case i > 0 && t.out == t.in:
			fallbacks = append(fallbacks, cfg.Fallbacks[i-1])
		default:
			fallbacks = append(fallbacks, &pgconn.FallbackConfig{Host: t.host, Port: t.port, TLSConfig: t.out})
		}
	}
	cfg.Fallbacks = fallbacks
	return nil
}

// onlyPlaintextRetry reports whether cfg's one fallback is the plaintext
// retry of its TLS attempt, as sslmode=prefer (pgx's default) makes for one
// host over TCP.
func onlyPlaintextRetry(cfg *pgx.ConnConfig) bool {
	if len(cfg.Fallbacks) != 1 || cfg.TLSConfig == nil {
		return false
	}
	fb := cfg.Fallbacks[0]
	return fb.TLSConfig == nil && fb.Host == cfg.Host && fb.Port == cfg.Port
}

// tlsAsIs reports, cheaply, whether a TLS config may be used as it is:
// the usual case of one host and a TLS config the guard would keep.
func (ts *TokenSource) tlsAsIs(c *tls.Config, facts *connFacts) bool {
	return c != nil && !ts.set.allowPlaintext && !ts.set.requireVerified && (facts.sslModeNamed || !unverified(c))
}

// target is one host pgx would try, with the TLS config it would use and
// the one the guard gives it.
type target struct {
	host    string
	port    uint16
	in, out *tls.Config
	ok      bool
}

// checkTarget returns the TLS config to use for host, and whether the token
// may be sent there: over a unix socket, or over TLS (verifying the host
// when WithRequireVerifiedTLS is set). With verify set, an unverified TLS
// config is replaced by one verifying the server as sslmode=verify-full.
func (ts *TokenSource) checkTarget(k connKey, host string, in *tls.Config, verify bool) (*tls.Config, bool) {
	switch {
	case isUnixSocket(host):
		return in, true
	case in == nil:
		return nil, false
	}
	out := in
	if verify && unverified(in) {
		out = ts.verifiedTLSFor(k, host, in)
	}
	// sslmode=verify-full is the only mode in which pgx verifies both the
	// certificate chain and the host name with the standard checks.
	return out, !ts.set.requireVerified || verifiesHost(out)
}

// transportOK reports whether a secret may be sent to host over this TLS
// config as it is (env.go's password mode checks with it).
func (ts *TokenSource) transportOK(host string, tlsConfig *tls.Config) bool {
	_, ok := ts.checkTarget(connKey{}, host, tlsConfig, false)
	return ok
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
