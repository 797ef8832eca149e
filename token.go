package entraauth

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// Token is an access token and its expiry. Printing a Token with fmt or
// slog, or encoding it as JSON or text, shows its expiry, never its value.
type Token struct {
	// Value is the JWT to send as the password.
	Value string
	// ExpiresOn is when the token expires.
	ExpiresOn time.Time
}

const redacted = "[REDACTED]"

// String describes the token without its value.
func (t Token) String() string {
	if t.Value == "" {
		return "entraauth.Token{}"
	}
	return "entraauth.Token{Value:" + redacted + " ExpiresOn:" + t.ExpiresOn.UTC().Format(time.RFC3339) + "}"
}

// Format prints the token without its value, whatever the verb.
func (t Token) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(t.String())) }

// LogValue logs the token's expiry, never its value.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(slog.String("value", redacted), slog.Time("expires_on", t.ExpiresOn))
}

// MarshalJSON encodes the token's expiry, with its value redacted, so a
// Token nested in a value that slog's JSON handler or encoding/json encodes
// does not leak. To hand the token itself to a program, encode t.Value.
func (t Token) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Value     string    `json:"value"`
		ExpiresOn time.Time `json:"expires_on"`
	}{redacted, t.ExpiresOn})
}

// MarshalText encodes the token as String does, with its value redacted.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Stats counts a TokenSource's work. It holds no token.
type Stats struct {
	// Fetches counts token requests made to the credential, including the
	// one Resource Manager token a managed identity's user name may need.
	Fetches int64
	// FailedFetches counts the requests that failed.
	FailedFetches int64
	// ExpiresOn is the cached database token's expiry; zero with no token.
	ExpiresOn time.Time
	// RefreshAt is when the cached token will be refreshed in the
	// background; zero with no token.
	RefreshAt time.Time
}

// Refresh timing. Margins are scaled down for short-lived tokens: a token
// living 60 seconds is refreshed between 24 and 30 seconds (the jitter
// window is a tenth of its life) and used until 6 seconds before it
// expires; one living an hour is refreshed between 50 and 55 minutes.
const (
	maxRefreshMargin = 5 * time.Minute
	maxRefreshJitter = 5 * time.Minute
	maxExpirySkew    = 30 * time.Second
)

// cachedToken is a token with the times derived from it. It is immutable
// once cached.
type cachedToken struct {
	token       Token
	scope       string
	refreshAt   time.Time // after this, refresh in the background
	usableUntil time.Time // after this, never hand the token out
	principal   *principal
	claims      *tokenClaims // decoded when fetched; dropped once cached
}

// newCachedToken decodes a token the credential returned and derives its
// times. A token that is not a JWT is refused even when the credential gave
// an expiry: it would otherwise be sent as a password. jitter, in [0, 1),
// moves the refresh point earlier within the refresh window: at most
// maxRefreshJitter or a tenth of the token's life.
func newCachedToken(at azcore.AccessToken, scope string, now time.Time, jitter float64) (*cachedToken, error) {
	claims, err := parseClaims(at.Token)
	if err != nil {
		return nil, err
	}
	expires := at.ExpiresOn
	if expires.IsZero() {
		if expires = claims.expiry(); expires.IsZero() {
			return nil, fmt.Errorf("%w: the credential gave neither ExpiresOn nor an exp claim", ErrMalformedToken)
		}
	}
	// Wall clock only: after a laptop sleeps the monotonic clock has not
	// moved, but the token has expired.
	expires = expires.Round(0)
	life := expires.Sub(now)
	if life <= 0 {
		return nil, &TokenExpiredError{ExpiresOn: expires}
	}
	refreshAt := expires.Add(-min(maxRefreshMargin, life/2))
	if refreshOn := at.RefreshOn.Round(0); !refreshOn.IsZero() && refreshOn.Before(refreshAt) {
		refreshAt = refreshOn
	}
	window := min(maxRefreshJitter, life/10)
	return &cachedToken{
		token:       Token{Value: at.Token, ExpiresOn: expires},
		scope:       scope,
		refreshAt:   refreshAt.Add(-time.Duration(jitter * float64(window))),
		usableUntil: expires.Add(-min(maxExpirySkew, life/10)),
		claims:      claims,
	}, nil
}
