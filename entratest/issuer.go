package entratest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/golang-jwt/jwt/v5"
)

// Scopes the kit mints tokens for. A scope is a resource followed by
// "/.default"; the token's aud claim is the resource.
const (
	// ScopePublic is the Azure Database for PostgreSQL scope in Azure's
	// public cloud.
	ScopePublic = "https://ossrdbms-aad.database.windows.net/.default"
	// ScopeChina is the Azure Database for PostgreSQL scope in Azure China
	// (21Vianet).
	ScopeChina = "https://ossrdbms-aad.database.chinacloudapi.cn/.default"
	// ScopeUSGov is the Azure Database for PostgreSQL scope in Azure US
	// Government.
	ScopeUSGov = "https://ossrdbms-aad.database.usgovcloudapi.net/.default"
	// ScopeARMPublic is the Azure Resource Manager scope in Azure's public
	// cloud. Tokens for it carry xms_mirid for managed identities.
	ScopeARMPublic = "https://management.azure.com/.default"
	// ScopeARMChina is the Azure Resource Manager scope in Azure China.
	ScopeARMChina = "https://management.chinacloudapi.cn/.default"
	// ScopeARMUSGov is the Azure Resource Manager scope in Azure US
	// Government.
	ScopeARMUSGov = "https://management.usgovcloudapi.net/.default"
)

const defaultSuffix = "/.default"

// knownScopes maps each scope the kit knows to whether it is an Azure
// Resource Manager scope.
var knownScopes = map[string]bool{
	ScopePublic:    false,
	ScopeChina:     false,
	ScopeUSGov:     false,
	ScopeARMPublic: true,
	ScopeARMChina:  true,
	ScopeARMUSGov:  true,
}

// resourceOf returns the resource (the aud claim) of a known scope, given
// either as a scope ("…/.default") or as the bare resource, and whether the
// scope is an Azure Resource Manager one.
func resourceOf(scope string) (resource string, arm bool, err error) {
	s := scope
	if !strings.HasSuffix(s, defaultSuffix) {
		s += defaultSuffix
	}
	arm, ok := knownScopes[s]
	if !ok {
		return "", false, fmt.Errorf("entratest: unknown scope %q (known: the Scope… constants, with or without %q)", scope, defaultSuffix)
	}
	return strings.TrimSuffix(s, defaultSuffix), arm, nil
}

// Principal is an Entra identity tokens are minted for. Build one with
// [User], [ManagedIdentity] or [ServicePrincipal], or fill in the fields.
type Principal struct {
	// ObjectID is the oid (and sub) claim.
	ObjectID string
	// TenantID is the tid claim. It defaults to the issuer's tenant when
	// empty. A token for another tenant also names that tenant in its iss
	// claim, so [Issuer.Verify] rejects it with ErrWrongIssuer.
	TenantID string
	// UPN is the user principal name that upn, preferred_username and
	// unique_name carry. It is empty for managed identities and service
	// principals, whose tokens have no name claim.
	UPN string
	// ClientID is the appid and azp claim of managed identities and
	// service principals.
	ClientID string
	// ManagedIdentityResourceID is the Azure resource id of a managed
	// identity. It goes into the xms_mirid claim of tokens for the Azure
	// Resource Manager scopes only.
	ManagedIdentityResourceID string
}

// subscriptionID is the made-up Azure subscription that the resource ids of
// [ManagedIdentity] principals live in.
var subscriptionID = deterministicUUID("entratest subscription")

// User returns a user principal with the given user principal name (say,
// "alice@contoso.com"). Its object id is derived from the upn, so the same
// upn always gives the same principal.
func User(upn string) Principal {
	return Principal{
		ObjectID: deterministicUUID("user oid " + strings.ToLower(upn)),
		UPN:      upn,
	}
}

// ManagedIdentity returns a user-assigned managed identity named name. Its
// resource id is
// "/subscriptions/<uuid>/resourcegroups/entratest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>",
// and its object id and client id are derived from the name. Its database
// tokens carry no name claim; its Azure Resource Manager tokens carry the
// resource id in xms_mirid, whose last segment is the name Azure Database
// for PostgreSQL knows the identity by.
func ManagedIdentity(name string) Principal {
	return Principal{
		ObjectID: deterministicUUID("managed identity oid " + name),
		ClientID: deterministicUUID("managed identity client " + name),
		ManagedIdentityResourceID: "/subscriptions/" + subscriptionID +
			"/resourcegroups/entratest/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name,
	}
}

// ServicePrincipal returns the service principal of an application named
// appName, with object id and client id derived from the name. Its tokens
// carry no name claim and no xms_mirid.
func ServicePrincipal(appName string) Principal {
	return Principal{
		ObjectID: deterministicUUID("service principal oid " + appName),
		ClientID: deterministicUUID("service principal client " + appName),
	}
}

// deterministicUUID formats a hash of name as a name-based (version 5
// style) UUID.
func deterministicUUID(name string) string {
	sum := sha256.Sum256([]byte("entratest\x00" + name))
	return formatUUID(sum[:16], 5)
}

// randomUUID returns a random version 4 UUID.
func randomUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return formatUUID(b[:], 4), nil
}

// formatUUID sets the version and RFC 4122 variant bits in the 16 bytes b
// and formats them the usual way.
func formatUUID(b []byte, version byte) string {
	var u [16]byte
	copy(u[:], b)
	u[6] = u[6]&0x0f | version<<4
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Errors [Issuer.Verify] wraps, so a caller can tell why a token was
// rejected with errors.Is. None of them ever contains the token.
var (
	// ErrMalformedToken: not a JWT, or a claim has the wrong type.
	ErrMalformedToken = errors.New("entratest: malformed token")
	// ErrBadSignature: not RS256, an unknown key id, or a signature the
	// issuer's key does not verify.
	ErrBadSignature = errors.New("entratest: bad token signature")
	// ErrWrongIssuer: the iss claim is not the issuer's URL (for example a
	// token for another tenant).
	ErrWrongIssuer = errors.New("entratest: wrong token issuer")
	// ErrWrongAudience: the aud claim is not the audience asked for.
	ErrWrongAudience = errors.New("entratest: wrong token audience")
	// ErrTokenExpired: the exp claim has passed (or is missing).
	ErrTokenExpired = errors.New("entratest: token expired")
	// ErrTokenNotYetValid: the nbf or iat claim is in the future.
	ErrTokenNotYetValid = errors.New("entratest: token not yet valid")
)

// clockSkew is all the leeway Verify allows on exp, nbf and iat.
const clockSkew = time.Second

// Issuer mints and verifies Entra-shaped access tokens: RS256 JWTs signed
// by its own RSA-2048 key, for its own made-up tenant. It is safe for
// concurrent use.
type Issuer struct {
	key      *rsa.PrivateKey
	keyID    string
	tenantID string
	minted   atomic.Int64
	// now is the issuer's clock; tests replace it before first use.
	now func() time.Time
}

// NewIssuer returns an issuer with a fresh RSA-2048 key and a random tenant
// id.
func NewIssuer() (*Issuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("entratest: generating key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("entratest: encoding key: %w", err)
	}
	thumb := sha256.Sum256(der)
	tenant, err := randomUUID()
	if err != nil {
		return nil, fmt.Errorf("entratest: tenant id: %w", err)
	}
	return &Issuer{
		key:      key,
		keyID:    base64.RawURLEncoding.EncodeToString(thumb[:20]),
		tenantID: tenant,
		now:      time.Now,
	}, nil
}

// TenantID returns the issuer's tenant id, the tid claim of its tokens
// unless a [Principal] names another tenant.
func (i *Issuer) TenantID() string { return i.tenantID }

// PublicKey returns the public half of the signing key.
func (i *Issuer) PublicKey() *rsa.PublicKey { return &i.key.PublicKey }

// KeyID returns the key id, the kid header of every token.
func (i *Issuer) KeyID() string { return i.keyID }

// IssuerURL returns the iss claim of the issuer's tokens,
// "https://sts.windows.net/<tenant>/" (the Entra v1 form that database
// tokens have).
func (i *Issuer) IssuerURL() string { return issuerURL(i.tenantID) }

func issuerURL(tenant string) string { return "https://sts.windows.net/" + tenant + "/" }

// Minted returns how many tokens the issuer has minted.
func (i *Issuer) Minted() int64 { return i.minted.Load() }

// Mint returns a signed token for p and scope, valid from now for lifetime
// (at least one second; iat is now rounded down to whole seconds, exp is now
// plus lifetime rounded up, so the token lives at least lifetime). scope is one of
// the Scope constants, with or without "/.default"; any other scope is an
// error.
//
// The claims are aud (the scope without "/.default"), iss, tid, oid, sub,
// iat, nbf (= iat), exp, ver ("1.0"); upn, preferred_username and
// unique_name for users; appid, azp and idtyp ("app") for principals with a
// client id; and xms_mirid for managed identities in Azure Resource Manager
// tokens only. The header has kid. AccessToken.ExpiresOn is exp.
func (i *Issuer) Mint(p Principal, scope string, lifetime time.Duration) (azcore.AccessToken, error) {
	if lifetime < time.Second {
		return azcore.AccessToken{}, fmt.Errorf("entratest: token lifetime %v is shorter than one second", lifetime)
	}
	return i.mintAt(p, scope, i.now(), lifetime)
}

// mintAt mints a token issued at iat. Tests use it for tokens that are
// already expired (iat far enough in the past).
func (i *Issuer) mintAt(p Principal, scope string, iat time.Time, lifetime time.Duration) (azcore.AccessToken, error) {
	resource, arm, err := resourceOf(scope)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	if p.ObjectID == "" {
		return azcore.AccessToken{}, errors.New("entratest: principal has no object id")
	}
	tenant := p.TenantID
	if tenant == "" {
		tenant = i.tenantID
	}
	issued := iat.Unix()
	end := iat.Add(lifetime)
	exp := end.Unix()
	if end.After(time.Unix(exp, 0)) {
		exp++ // round up: the token lives at least lifetime
	}
	claims := jwt.MapClaims{
		"aud": resource,
		"iss": issuerURL(tenant),
		"tid": tenant,
		"oid": p.ObjectID,
		"sub": p.ObjectID,
		"iat": issued,
		"nbf": issued,
		"exp": exp,
		"ver": "1.0",
	}
	if p.UPN != "" {
		claims["upn"] = p.UPN
		claims["preferred_username"] = p.UPN
		claims["unique_name"] = p.UPN
	}
	if p.ClientID != "" {
		claims["appid"] = p.ClientID
		claims["azp"] = p.ClientID
		if p.UPN == "" {
			claims["idtyp"] = "app"
		}
	}
	if arm && p.ManagedIdentityResourceID != "" {
		claims["xms_mirid"] = p.ManagedIdentityResourceID
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = i.keyID
	signed, err := tok.SignedString(i.key)
	if err != nil {
		return azcore.AccessToken{}, fmt.Errorf("entratest: signing token: %w", err)
	}
	i.minted.Add(1)
	return azcore.AccessToken{Token: signed, ExpiresOn: time.Unix(exp, 0).UTC()}, nil
}

// Verify checks a token the way a resource server does and returns its
// claims: an RS256 signature by the issuer's key (kid must match), iss equal
// to [Issuer.IssuerURL], aud equal to wantAudience (a resource, or a scope
// whose "/.default" is ignored), and exp, nbf and iat against the clock with
// at most one second of leeway. A rejection wraps one of ErrMalformedToken,
// ErrBadSignature, ErrWrongIssuer, ErrWrongAudience, ErrTokenExpired or
// ErrTokenNotYetValid, checked in that order, and never contains the token.
func (i *Issuer) Verify(token, wantAudience string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	parser := jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}), jwt.WithoutClaimsValidation())
	_, err := parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != i.keyID {
			return nil, errors.New("unknown key id")
		}
		return &i.key.PublicKey, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, fmt.Errorf("%w: not a well-formed JWT", ErrMalformedToken)
	case errors.Is(err, jwt.ErrTokenUnverifiable), errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, fmt.Errorf("%w: not signed with the issuer's RS256 key (alg, kid or signature)", ErrBadSignature)
	default:
		return nil, fmt.Errorf("%w: unparseable token", ErrMalformedToken)
	}

	iss, err := claims.GetIssuer()
	if err != nil {
		return nil, fmt.Errorf("%w: iss claim is not a string", ErrMalformedToken)
	}
	if iss != i.IssuerURL() {
		return nil, fmt.Errorf("%w: iss is %q, want %q", ErrWrongIssuer, iss, i.IssuerURL())
	}
	aud, err := claims.GetAudience()
	if err != nil {
		return nil, fmt.Errorf("%w: aud claim is not a string", ErrMalformedToken)
	}
	want := strings.TrimSuffix(wantAudience, defaultSuffix)
	if len(aud) != 1 || aud[0] != want {
		return nil, fmt.Errorf("%w: aud is %q, want %q", ErrWrongAudience, strings.Join(aud, ","), want)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil {
		return nil, fmt.Errorf("%w: exp claim is not a number", ErrMalformedToken)
	}
	nbf, err := claims.GetNotBefore()
	if err != nil {
		return nil, fmt.Errorf("%w: nbf claim is not a number", ErrMalformedToken)
	}
	iat, err := claims.GetIssuedAt()
	if err != nil {
		return nil, fmt.Errorf("%w: iat claim is not a number", ErrMalformedToken)
	}
	now := i.now()
	if exp == nil {
		return nil, fmt.Errorf("%w: no exp claim", ErrTokenExpired)
	}
	if !now.Before(exp.Add(clockSkew)) {
		return nil, fmt.Errorf("%w: expired at %s, now %s", ErrTokenExpired, exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	for name, t := range map[string]*jwt.NumericDate{"nbf": nbf, "iat": iat} {
		if t != nil && now.Add(clockSkew).Before(t.Time) {
			return nil, fmt.Errorf("%w: %s is %s, now %s", ErrTokenNotYetValid, name, t.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	return claims, nil
}
