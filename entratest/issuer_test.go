package entratest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[45][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// sharedIssuer avoids generating an RSA key per test where a test does not
// change the issuer.
var sharedIssuer = sync.OnceValues(NewIssuer)

func issuer(t testing.TB) *Issuer {
	t.Helper()
	iss, err := sharedIssuer()
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// freshIssuer returns an issuer of its own, for tests that move its clock.
func freshIssuer(t testing.TB) *Issuer {
	t.Helper()
	iss, err := NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func mustMint(t testing.TB, iss *Issuer, p Principal, scope string, lifetime time.Duration) string {
	t.Helper()
	tok, err := iss.Mint(p, scope, lifetime)
	if err != nil {
		t.Fatalf("Mint(%q): %v", scope, err)
	}
	return tok.Token
}

func mustVerify(t testing.TB, iss *Issuer, token, aud string) jwt.MapClaims {
	t.Helper()
	claims, err := iss.Verify(token, aud)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return claims
}

func TestIssuerIdentity(t *testing.T) {
	iss := issuer(t)
	if !uuidRE.MatchString(iss.TenantID()) {
		t.Errorf("TenantID %q is not a UUID", iss.TenantID())
	}
	if got, want := iss.IssuerURL(), "https://sts.windows.net/"+iss.TenantID()+"/"; got != want {
		t.Errorf("IssuerURL = %q, want %q", got, want)
	}
	if iss.PublicKey().N.BitLen() != 2048 {
		t.Errorf("key has %d bits, want 2048", iss.PublicKey().N.BitLen())
	}
	if iss.KeyID() == "" {
		t.Error("empty KeyID")
	}
	other := freshIssuer(t)
	if other.TenantID() == iss.TenantID() || other.KeyID() == iss.KeyID() {
		t.Error("two issuers share a tenant or key id")
	}
}

func TestMintVerifyRoundTrip(t *testing.T) {
	iss := issuer(t)
	p := User("alice@contoso.com")
	for _, scope := range []string{ScopePublic, ScopeChina, ScopeUSGov, ScopeARMPublic, ScopeARMChina, ScopeARMUSGov} {
		t.Run(scope, func(t *testing.T) {
			before := iss.Minted()
			tok, err := iss.Mint(p, scope, 90*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if iss.Minted() <= before {
				t.Errorf("Minted did not grow: %d then %d", before, iss.Minted())
			}
			resource := strings.TrimSuffix(scope, "/.default")
			for _, aud := range []string{scope, resource} {
				claims := mustVerify(t, iss, tok.Token, aud)
				if claims["aud"] != resource {
					t.Errorf("aud = %v, want %q", claims["aud"], resource)
				}
			}
			claims := mustVerify(t, iss, tok.Token, scope)
			for k, want := range map[string]any{
				"iss": iss.IssuerURL(), "tid": iss.TenantID(), "oid": p.ObjectID, "sub": p.ObjectID, "ver": "1.0",
			} {
				if claims[k] != want {
					t.Errorf("%s = %v, want %v", k, claims[k], want)
				}
			}
			iat, _ := claims.GetIssuedAt()
			nbf, _ := claims.GetNotBefore()
			exp, _ := claims.GetExpirationTime()
			if iat == nil || nbf == nil || exp == nil {
				t.Fatalf("missing iat/nbf/exp: %v %v %v", iat, nbf, exp)
			}
			if !nbf.Equal(iat.Time) {
				t.Errorf("nbf %v != iat %v", nbf, iat)
			}
			if d := exp.Sub(iat.Time); d < 90*time.Second || d > 91*time.Second {
				t.Errorf("exp - iat = %v, want 90s (give or take rounding to whole seconds)", d)
			}
			if !tok.ExpiresOn.Equal(exp.Time) {
				t.Errorf("ExpiresOn %v != exp %v", tok.ExpiresOn, exp.Time)
			}
			if !tok.RefreshOn.IsZero() {
				t.Errorf("RefreshOn = %v, want zero", tok.RefreshOn)
			}
			hdr := header(t, tok.Token)
			if hdr["kid"] != iss.KeyID() || hdr["alg"] != "RS256" {
				t.Errorf("header = %v, want alg RS256 and kid %q", hdr, iss.KeyID())
			}
		})
	}
}

func header(t *testing.T, token string) map[string]any {
	t.Helper()
	seg, _, _ := strings.Cut(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestMintRejects(t *testing.T) {
	iss := issuer(t)
	before := iss.Minted()
	for name, tc := range map[string]struct {
		p        Principal
		scope    string
		lifetime time.Duration
	}{
		"unknown scope":      {User("a@b.c"), "https://vault.azure.net/.default", time.Hour},
		"empty scope":        {User("a@b.c"), "", time.Hour},
		"sub-second":         {User("a@b.c"), ScopePublic, 999 * time.Millisecond},
		"negative":           {User("a@b.c"), ScopePublic, -time.Hour},
		"no object id":       {Principal{UPN: "a@b.c"}, ScopePublic, time.Hour},
		"double .default":    {User("a@b.c"), ScopePublic + "/.default", time.Hour},
		"scope with a slash": {User("a@b.c"), "https://ossrdbms-aad.database.windows.net//.default", time.Hour},
	} {
		if _, err := iss.Mint(tc.p, tc.scope, tc.lifetime); err == nil {
			t.Errorf("%s: Mint succeeded", name)
		}
	}
	if iss.Minted() != before {
		t.Errorf("failed mints were counted: %d -> %d", before, iss.Minted())
	}
	// The shortest lifetime works.
	tok := mustMint(t, iss, User("a@b.c"), ScopePublic, time.Second)
	mustVerify(t, iss, tok, ScopePublic)
}

func TestPrincipals(t *testing.T) {
	name := "app"
	if u1, u2 := User("alice@contoso.com"), User("ALICE@contoso.com"); u1.ObjectID != u2.ObjectID {
		t.Error("a user's object id depends on the upn's case")
	}
	if m1, m2 := ManagedIdentity(name), ManagedIdentity("app"); m1 != m2 {
		t.Error("ManagedIdentity is not deterministic")
	}
	if s1, s2 := ServicePrincipal(name), ServicePrincipal("app"); s1 != s2 {
		t.Error("ServicePrincipal is not deterministic")
	}
	// Pinned, so a change (which would change users' test fixtures) is seen.
	if got, want := User("alice@contoso.com").ObjectID, "1cab0c39-24d8-5d60-952a-702e21dd470b"; got != want {
		t.Errorf("User(alice).ObjectID = %s, was %s", got, want)
	}
	if User("alice@contoso.com").ObjectID == User("bob@contoso.com").ObjectID {
		t.Error("two users share an object id")
	}
	mi, sp := ManagedIdentity("app"), ServicePrincipal("app")
	if mi.ObjectID == sp.ObjectID || mi.ClientID == sp.ClientID || mi.ObjectID == mi.ClientID {
		t.Error("ids collide between kinds")
	}
	for _, id := range []string{User("x").ObjectID, mi.ObjectID, mi.ClientID, sp.ObjectID, sp.ClientID} {
		if !uuidRE.MatchString(id) {
			t.Errorf("%q is not uuid-shaped", id)
		}
	}
	re := regexp.MustCompile(`^/subscriptions/([^/]+)/resourcegroups/entratest/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/app$`)
	m := re.FindStringSubmatch(mi.ManagedIdentityResourceID)
	if m == nil || !uuidRE.MatchString(m[1]) {
		t.Errorf("resource id %q has the wrong shape", mi.ManagedIdentityResourceID)
	}
	if u := User("alice@contoso.com"); u.UPN != "alice@contoso.com" || u.ClientID != "" || u.ManagedIdentityResourceID != "" || u.TenantID != "" {
		t.Errorf("User = %+v", u)
	}
	if sp.UPN != "" || sp.ManagedIdentityResourceID != "" || mi.UPN != "" {
		t.Errorf("apps with names: %+v %+v", sp, mi)
	}
}

var nameClaims = []string{"upn", "preferred_username", "unique_name"}

func TestClaimShapes(t *testing.T) {
	iss := issuer(t)
	user, mi, sp := User("alice@contoso.com"), ManagedIdentity("app-identity"), ServicePrincipal("billing")
	claimsOf := func(p Principal, scope string) jwt.MapClaims {
		return mustVerify(t, iss, mustMint(t, iss, p, scope, time.Minute), scope)
	}

	for _, scope := range []string{ScopePublic, ScopeARMPublic} {
		c := claimsOf(user, scope)
		for _, k := range nameClaims {
			if c[k] != user.UPN {
				t.Errorf("user %s token: %s = %v, want %q", scope, k, c[k], user.UPN)
			}
		}
		for _, k := range []string{"appid", "azp", "idtyp", "xms_mirid"} {
			if _, ok := c[k]; ok {
				t.Errorf("user %s token has %s", scope, k)
			}
		}
	}

	db := claimsOf(mi, ScopePublic)
	for _, k := range append(nameClaims, "xms_mirid") {
		if _, ok := db[k]; ok {
			t.Errorf("managed identity database token has %s = %v", k, db[k])
		}
	}
	if db["appid"] != mi.ClientID || db["azp"] != mi.ClientID || db["oid"] != mi.ObjectID || db["idtyp"] != "app" {
		t.Errorf("managed identity database token: %v", db)
	}
	for _, scope := range []string{ScopeARMPublic, ScopeARMChina, ScopeARMUSGov} {
		arm := claimsOf(mi, scope)
		if arm["xms_mirid"] != mi.ManagedIdentityResourceID {
			t.Errorf("managed identity %s token: xms_mirid = %v, want %q", scope, arm["xms_mirid"], mi.ManagedIdentityResourceID)
		}
		mirid, _ := arm["xms_mirid"].(string)
		if name := mirid[strings.LastIndex(mirid, "/")+1:]; name != "app-identity" {
			t.Errorf("xms_mirid names %q, want app-identity", name)
		}
	}

	for _, scope := range []string{ScopePublic, ScopeARMPublic} {
		c := claimsOf(sp, scope)
		for _, k := range append(nameClaims, "xms_mirid") {
			if _, ok := c[k]; ok {
				t.Errorf("service principal %s token has %s", scope, k)
			}
		}
		if c["appid"] != sp.ClientID || c["oid"] != sp.ObjectID {
			t.Errorf("service principal %s token: %v", scope, c)
		}
	}
}

func TestOtherTenant(t *testing.T) {
	iss := issuer(t)
	p := User("guest@fabrikam.com")
	p.TenantID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	tok := mustMint(t, iss, p, ScopePublic, time.Minute)
	_, err := iss.Verify(tok, ScopePublic)
	assertKind(t, err, ErrWrongIssuer, tok)
	claims, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	c := claims.Claims.(jwt.MapClaims)
	if c["tid"] != p.TenantID || c["iss"] != "https://sts.windows.net/"+p.TenantID+"/" {
		t.Errorf("tid %v, iss %v; want tenant %s", c["tid"], c["iss"], p.TenantID)
	}
}

var kinds = []error{ErrMalformedToken, ErrBadSignature, ErrWrongIssuer, ErrWrongAudience, ErrTokenExpired, ErrTokenNotYetValid}

// assertKind checks that err is of kind want and of no other kind, and does
// not contain the token.
func assertKind(t *testing.T, err, want error, token string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	for _, k := range kinds {
		if errors.Is(err, k) != (k == want) {
			t.Errorf("errors.Is(%v, %v) = %v", err, k, !(k == want))
		}
	}
	if token != "" && strings.Contains(err.Error(), token) {
		t.Errorf("error contains the token")
	}
	for _, seg := range strings.Split(token, ".") {
		if len(seg) > 8 && strings.Contains(err.Error(), seg) {
			t.Errorf("error contains a token segment: %v", err)
		}
	}
}

func TestVerifyExpired(t *testing.T) {
	iss := freshIssuer(t)
	p := User("alice@contoso.com")

	// Minted with negative remaining life.
	old, err := iss.mintAt(p, ScopePublic, time.Now().Add(-time.Hour), 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = iss.Verify(old.Token, ScopePublic)
	assertKind(t, err, ErrTokenExpired, old.Token)

	// A one-second token, then the issuer's clock moves on.
	start := time.Now()
	tok := mustMint(t, iss, p, ScopePublic, time.Second)
	end := time.Now()
	mustVerify(t, iss, tok, ScopePublic)
	// exp >= start+1s, and Verify allows 1s of leeway.
	iss.now = func() time.Time { return start.Add(1900 * time.Millisecond) }
	mustVerify(t, iss, tok, ScopePublic)
	// exp <= end+2s (rounded up), so 1s of leeway later it is over.
	iss.now = func() time.Time { return end.Add(3100 * time.Millisecond) }
	_, err = iss.Verify(tok, ScopePublic)
	assertKind(t, err, ErrTokenExpired, tok)

	// Not valid yet: the clock goes back before nbf, beyond the leeway.
	iss.now = func() time.Time { return start.Add(-3 * time.Second) }
	_, err = iss.Verify(tok, ScopePublic)
	assertKind(t, err, ErrTokenNotYetValid, tok)

	// A token without exp counts as expired.
	noExp := signWith(t, iss, jwt.SigningMethodRS256, iss.key, jwt.MapClaims{"aud": strings.TrimSuffix(ScopePublic, "/.default"), "iss": iss.IssuerURL()})
	_, err = iss.Verify(noExp, ScopePublic)
	assertKind(t, err, ErrTokenExpired, noExp)
}

func signWith(t *testing.T, iss *Issuer, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	tok.Header["kid"] = iss.KeyID()
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerifyWrongAudience(t *testing.T) {
	iss := issuer(t)
	tok := mustMint(t, iss, User("alice@contoso.com"), ScopePublic, time.Minute)
	for _, aud := range []string{ScopeChina, ScopeARMPublic, "", "https://ossrdbms-aad.database.windows.net/"} {
		_, err := iss.Verify(tok, aud)
		assertKind(t, err, ErrWrongAudience, tok)
	}
	// An audience list is not accepted either.
	claims := mustVerify(t, iss, tok, ScopePublic)
	claims["aud"] = []string{"https://ossrdbms-aad.database.windows.net", "https://management.azure.com"}
	multi := signWith(t, iss, jwt.SigningMethodRS256, iss.key, claims)
	_, err := iss.Verify(multi, ScopePublic)
	assertKind(t, err, ErrWrongAudience, multi)
}

func TestVerifyBadSignature(t *testing.T) {
	iss := issuer(t)
	tok := mustMint(t, iss, User("alice@contoso.com"), ScopePublic, time.Minute)
	parts := strings.Split(tok, ".")

	// Flip a byte of the signature.
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	sig[10] ^= 0xff
	tampered := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)

	// Change the claims, keep the signature.
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	payload = []byte(strings.Replace(string(payload), `"alice@contoso.com"`, `"mallory@contoso.com"`, 1))
	forgedClaims := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]

	// Signed by another key under the same kid.
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	claims := mustVerify(t, iss, tok, ScopePublic)
	otherSigner := signWith(t, iss, jwt.SigningMethodRS256, otherKey, claims)

	// Another issuer's token (another kid).
	otherIssuer := mustMint(t, freshIssuer(t), User("alice@contoso.com"), ScopePublic, time.Minute)

	// HS256 keyed with the public key, and alg none.
	hs := signWith(t, iss, jwt.SigningMethodHS256, []byte(iss.KeyID()), claims)
	none := signWith(t, iss, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims)
	rs512 := signWith(t, iss, jwt.SigningMethodRS512, iss.key, claims)

	for name, bad := range map[string]string{
		"tampered signature": tampered, "tampered claims": forgedClaims, "other key": otherSigner,
		"other issuer": otherIssuer, "HS256": hs, "none": none, "RS512": rs512,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := iss.Verify(bad, ScopePublic)
			assertKind(t, err, ErrBadSignature, bad)
		})
	}
}

func TestVerifyMalformed(t *testing.T) {
	iss := issuer(t)
	tok := mustMint(t, iss, User("alice@contoso.com"), ScopePublic, time.Minute)
	parts := strings.Split(tok, ".")
	notJSON := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("not json at all")) + "." + parts[2]
	claims := mustVerify(t, iss, tok, ScopePublic)
	claims["exp"] = "tomorrow"
	stringExp := signWith(t, iss, jwt.SigningMethodRS256, iss.key, claims)
	for name, bad := range map[string]string{
		"empty": "", "one segment": "abc", "garbage segments": "a.b.c", "two segments": parts[0] + "." + parts[1],
		"four segments": tok + ".x", "payload not JSON": notJSON, "string exp": stringExp,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := iss.Verify(bad, ScopePublic)
			assertKind(t, err, ErrMalformedToken, bad)
		})
	}
}

func TestMintConcurrently(t *testing.T) {
	iss := freshIssuer(t)
	var wg sync.WaitGroup
	const n = 16
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := iss.Mint(ServicePrincipal("worker"), ScopePublic, time.Minute)
			if err == nil {
				_, err = iss.Verify(tok.Token, ScopePublic)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if iss.Minted() != n {
		t.Errorf("Minted = %d, want %d", iss.Minted(), n)
	}
}
