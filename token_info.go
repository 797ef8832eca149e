package entraauth

import (
	"strings"
	"time"
)

// Principal types TokenInfo.Type names.
const (
	PrincipalUser            = "user"
	PrincipalManagedIdentity = "managed identity"
	// PrincipalApp is an application's identity that the token does not
	// tell apart: a service principal or a managed identity (whose
	// database tokens carry no xms_mirid).
	PrincipalApp = "service principal or managed identity"
)

// TokenInfo is what an access token says about who it is for and when it
// is valid: the claims that decide an Azure Database for PostgreSQL login.
// It never holds the token.
type TokenInfo struct {
	// Name is the user name claim (upn, preferred_username or
	// unique_name, the first set), and NameClaim which one it is; both
	// empty for service principals and managed identities.
	Name, NameClaim string
	// ObjectID (oid) is the principal's object ID, which Azure matches to
	// the role created by pgaadauth_create_principal.
	ObjectID string
	// TenantID (tid) is the tenant that issued the token.
	TenantID string
	// AppID (appid or azp) is the client ID of an application or managed
	// identity.
	AppID string
	// Type is the principal's type: PrincipalUser, PrincipalManagedIdentity
	// (a token with xms_mirid; a LoginError also says it of a principal
	// whose name entraauth found as a managed identity's), or
	// PrincipalApp.
	Type string
	// Audience (aud) is the resource the token is for; Azure Database for
	// PostgreSQL wants https://ossrdbms-aad.database.windows.net (or its
	// national clouds').
	Audience string
	// Issuer (iss) is the token's issuer URL.
	Issuer string
	// IssuedAt (iat), NotBefore (nbf) and ExpiresOn (exp) are the token's
	// times; zero when absent.
	IssuedAt, NotBefore, ExpiresOn time.Time
}

// InspectToken decodes an access token's claims, without verifying its
// signature (the server does that), and returns what they say. Its errors
// wrap ErrMalformedToken and never contain the token.
func InspectToken(token string) (TokenInfo, error) {
	c, err := parseClaims(token)
	if err != nil {
		return TokenInfo{}, err
	}
	info := TokenInfo{
		ObjectID: c.ObjectID,
		TenantID: c.TenantID,
		AppID:    c.AppID,
		Issuer:   c.Issuer,
	}
	if info.AppID == "" {
		info.AppID = c.AuthorizedParty
	}
	for i, v := range []string{c.UPN, c.PreferredUsername, c.UniqueName} {
		if v != "" {
			info.Name, info.NameClaim = v, userNameClaims[i]
			break
		}
	}
	if len(c.Audience) > 0 {
		info.Audience = strings.Join(c.Audience, " ")
	}
	if c.IssuedAt != nil {
		info.IssuedAt = c.IssuedAt.Time
	}
	if c.NotBefore != nil {
		info.NotBefore = c.NotBefore.Time
	}
	info.ExpiresOn = c.expiry()
	switch {
	case c.ManagedIdentityResourceID != "":
		info.Type = PrincipalManagedIdentity
	case c.IdentityType == "user" || (c.IdentityType == "" && info.Name != ""):
		info.Type = PrincipalUser
	default:
		info.Type = PrincipalApp
	}
	return info, nil
}

// principalLabel describes the principal in a few words, such as
// `user alice@contoso.com` or `managed identity (oid 1234…)`.
func (i TokenInfo) principalLabel() string {
	var b strings.Builder
	b.WriteString(i.Type)
	if i.Name != "" {
		b.WriteString(" " + i.Name)
	}
	var ids []string
	if i.ObjectID != "" {
		ids = append(ids, "oid "+i.ObjectID)
	}
	if i.AppID != "" && i.Type != PrincipalUser {
		ids = append(ids, "appid "+i.AppID)
	}
	if i.TenantID != "" {
		ids = append(ids, "tenant "+i.TenantID)
	}
	if len(ids) > 0 {
		b.WriteString(" (" + strings.Join(ids, ", ") + ")")
	}
	return b.String()
}
