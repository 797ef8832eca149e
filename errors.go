package entraauth

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoUsername is returned when no database user name is named in the
// connection settings and none can be derived from the token. Name the user
// with the connection string's user, PGUSER or WithUser.
var ErrNoUsername = errors.New("entraauth: no database user name")

// ErrInsecureTransport is returned, before anything is sent, when a connection
// would carry the token over TCP without TLS (sslmode=disable, or only
// plaintext fallbacks left), or without a verified certificate when
// WithRequireVerifiedTLS is set.
var ErrInsecureTransport = errors.New("entraauth: refusing to send an access token without TLS")

// ErrMalformedToken is returned when a token is not a decodable JWT, or when a
// credential returns a token without a usable expiry.
var ErrMalformedToken = errors.New("entraauth: malformed access token")

// ErrScopeMismatch is returned when one TokenSource is used for servers of
// different Azure clouds, or one connection string names hosts of
// different clouds. Use one TokenSource (and connection string) per cloud,
// or WithScope.
var ErrScopeMismatch = errors.New("entraauth: token scope does not match the server's cloud")

// ErrInvalidOption is returned when options contradict each other or carry
// a value that cannot work. NewTokenSource reports it from Token, BeforeConnect
// and Connect, so a misconfiguration surfaces at the first connect.
var ErrInvalidOption = errors.New("entraauth: invalid option")

// CredentialError is a failure of the azcore.TokenCredential to produce a
// token. It unwraps to the credential's own error, so errors.As still reaches
// azidentity's error types (for example *azidentity.AuthenticationFailedError).
type CredentialError struct {
	// Scope is the scope the token was requested for.
	Scope string
	// Err is the credential's error.
	Err error
}

// Error describes the failure; it never contains a token.
func (e *CredentialError) Error() string {
	return fmt.Sprintf("entraauth: getting a token for %s: %v", e.Scope, e.Err)
}

// Unwrap returns the credential's error.
func (e *CredentialError) Unwrap() error { return e.Err }

// TokenExpiredError is returned when a credential hands back a token that is
// already expired, or expires too soon to be used (a clock far off, or a
// credential's cache serving a stale token). Retrying can help once the
// credential's cache or the machine's clock is corrected.
type TokenExpiredError struct {
	// ExpiresOn is when the token expired.
	ExpiresOn time.Time
}

// Error describes the expiry; it never contains a token.
func (e *TokenExpiredError) Error() string {
	return fmt.Sprintf("entraauth: the credential returned a token that expired at %s (check the machine's clock)",
		e.ExpiresOn.UTC().Format(time.RFC3339))
}

// BackoffError is returned, at once, to a caller that needs a token while
// the TokenSource backs off after a failed fetch: rather than asking the
// credential on every connect (an az process each time, or a storm on the
// managed identity endpoint), callers share the last failure until
// RetryAt. It unwraps to that failure, usually a *CredentialError, so
// errors.As still reaches the credential's own error. Retrying after
// RetryAt can help.
type BackoffError struct {
	// Err is the last fetch's failure.
	Err error
	// RetryAt is when the next fetch may start.
	RetryAt time.Time
}

// Error says when the next attempt is and why the last one failed; it never
// contains a token.
func (e *BackoffError) Error() string {
	return fmt.Sprintf("entraauth: no usable token; the next attempt is at %s (backing off after a failed fetch): %v",
		e.RetryAt.UTC().Format(time.RFC3339Nano), e.Err)
}

// Unwrap returns the last fetch's failure.
func (e *BackoffError) Unwrap() error { return e.Err }

// ErrServerNotVerified is returned, during the TLS handshake, when no
// sslmode is named (so entraauth verifies the server as sslmode=verify-full
// would) and the server's certificate is not trusted or not issued for the
// host connected to. The error says what to trust, or to name
// sslmode=require to connect without verification.
var ErrServerNotVerified = errors.New("entraauth: the server's TLS certificate could not be verified")

// ErrInvalidConnString is returned by the Connect of a Connector whose
// connection string pgx cannot parse. Its message never quotes the string.
var ErrInvalidConnString = errors.New("entraauth: invalid connection string")
