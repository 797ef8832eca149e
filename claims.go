package entraauth

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// userNameClaims are the claims that carry a user principal's name, in the
// order Azure's own samples try them.
var userNameClaims = []string{"upn", "preferred_username", "unique_name"}

// tokenClaims are the claims entraauth reads from an access token. They are
// decoded without verifying the signature: the token came from the
// credential over TLS and the server verifies it; we only read names and
// times from it.
type tokenClaims struct {
	jwt.RegisteredClaims
	UPN               string `json:"upn"`
	PreferredUsername string `json:"preferred_username"`
	UniqueName        string `json:"unique_name"`
	// ObjectID (oid) identifies the principal across its tokens.
	ObjectID string `json:"oid"`
	// TenantID (tid), AppID (appid), AuthorizedParty (azp) and
	// IdentityType (idtyp: "user" or "app") are only read to explain a
	// failed login (InspectToken).
	TenantID        string `json:"tid"`
	AppID           string `json:"appid"`
	AuthorizedParty string `json:"azp"`
	IdentityType    string `json:"idtyp"`
	// ManagedIdentityResourceID (xms_mirid) is in Azure Resource Manager
	// tokens of managed identities: the identity's Azure resource ID.
	ManagedIdentityResourceID string `json:"xms_mirid"`
}

var unverifiedParser = jwt.NewParser()

// parseClaims decodes a JWT's claims without verifying its signature. Its
// errors wrap ErrMalformedToken and never contain the token.
func parseClaims(token string) (*tokenClaims, error) {
	claims := new(tokenClaims)
	_, _, err := unverifiedParser.ParseUnverified(token, claims)
	// An unknown or missing "alg" only matters to signature checks, which
	// are the server's job; every other failure means we cannot read it.
	if err != nil && !errors.Is(err, jwt.ErrTokenUnverifiable) {
		reason := "header or claims are not base64url-encoded JSON objects"
		if strings.Count(token, ".") != 2 {
			reason = "not a JWT (want three dot-separated segments)"
		}
		return nil, fmt.Errorf("%w: %s", ErrMalformedToken, reason)
	}
	return claims, nil
}

// userName returns the first non-empty user name claim.
func (c *tokenClaims) userName() string {
	for _, v := range []string{c.UPN, c.PreferredUsername, c.UniqueName} {
		if v != "" {
			return v
		}
	}
	return ""
}

// managedIdentityName returns the name of the managed identity whose Azure
// resource ID is in xms_mirid: its last path segment, which is the name of
// a user-assigned identity and the resource name (the identity's name) of a
// system-assigned one.
func (c *tokenClaims) managedIdentityName() string {
	id := strings.TrimRight(c.ManagedIdentityResourceID, "/")
	if id == "" {
		return ""
	}
	return id[strings.LastIndexByte(id, '/')+1:]
}

// expiry returns the exp claim, or the zero time when there is none.
func (c *tokenClaims) expiry() time.Time {
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// UsernameFromToken returns the database user name an Entra access token
// maps to: its upn, preferred_username or unique_name claim, or, for an Azure
// Resource Manager token of a managed identity, the identity's name from the
// xms_mirid claim. The signature is not verified.
//
// It returns an error wrapping ErrMalformedToken when the token is not a JWT,
// and one wrapping ErrNoUsername when no claim names the principal (database
// tokens of managed identities and service principals carry no name: a
// TokenSource then asks for a Resource Manager token, see WithUser).
func UsernameFromToken(token string) (string, error) {
	claims, err := parseClaims(token)
	if err != nil {
		return "", err
	}
	if name := claims.userName(); name != "" {
		return name, nil
	}
	if name := claims.managedIdentityName(); name != "" {
		return name, nil
	}
	return "", errNoUsername()
}

func errNoUsername() error {
	return fmt.Errorf("%w: the token has none of the claims %s, nor xms_mirid; "+
		"name the database user in the connection string (user=...), in PGUSER, or with entraauth.WithUser",
		ErrNoUsername, strings.Join(userNameClaims, ", "))
}
