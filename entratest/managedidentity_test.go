package entratest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// azureEnv are the variables that steer azidentity's credentials.
var azureEnv = []string{
	"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
	"AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE",
	"AZURE_TOKEN_CREDENTIALS", "AZURE_ADDITIONALLY_ALLOWED_TENANTS", "AZURE_AUTHORITY_HOST",
	"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
}

// clearAzureEnv unsets azureEnv for the rest of the test.
func clearAzureEnv(t *testing.T) {
	t.Helper()
	for _, k := range azureEnv {
		unsetenv(t, k)
	}
}

func newEndpoint(t *testing.T, p Principal) (*Issuer, *ManagedIdentityEndpoint) {
	t.Helper()
	iss := issuer(t)
	m, err := NewManagedIdentityEndpoint(iss, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return iss, m
}

// miGet sends a token request to the endpoint and returns the status and
// the decoded JSON body.
func miGet(t *testing.T, m *ManagedIdentityEndpoint, method string, query url.Values, header *string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, m.URL()+"?"+query.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if header != nil {
		req.Header.Set("X-IDENTITY-HEADER", *header)
	}
	client := &http.Client{Timeout: hangGuard, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("status %d, body %q is not JSON: %v", resp.StatusCode, b, err)
	}
	return resp.StatusCode, body
}

func TestManagedIdentityEndpointProtocol(t *testing.T) {
	p := ManagedIdentity("app-identity")
	iss, m := newEndpoint(t, p)
	secret := m.Header()
	wrong := "not-the-secret"
	db := strings.TrimSuffix(ScopePublic, "/.default")
	arm := strings.TrimSuffix(ScopeARMPublic, "/.default")
	q := func(kv ...string) url.Values {
		v := url.Values{"api-version": {"2019-08-01"}}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v
	}

	status, body := miGet(t, m, http.MethodGet, q("resource", db), &secret)
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, body)
	}
	tok, _ := body["access_token"].(string)
	claims := mustVerify(t, iss, tok, ScopePublic)
	exp, _ := claims.GetExpirationTime()
	if body["expires_on"] != strconv.FormatInt(exp.Unix(), 10) {
		t.Errorf("expires_on = %#v, want the string %d", body["expires_on"], exp.Unix())
	}
	if d := time.Until(exp.Time); d < 3*time.Minute || d > 5*time.Minute {
		t.Errorf("default lifetime: expires in %v, want 4 minutes", d)
	}
	if body["resource"] != db || body["token_type"] != "Bearer" || body["client_id"] != p.ClientID {
		t.Errorf("body = %v", body)
	}
	if claims["oid"] != p.ObjectID {
		t.Errorf("oid = %v, want %s", claims["oid"], p.ObjectID)
	}

	for name, sel := range map[string][]string{
		"client_id": {"client_id", strings.ToUpper(p.ClientID)}, "mi_res_id": {"mi_res_id", p.ManagedIdentityResourceID},
		"object_id": {"object_id", p.ObjectID}, "principal_id": {"principal_id", p.ObjectID},
	} {
		status, body := miGet(t, m, http.MethodGet, q(append([]string{"resource", arm}, sel...)...), &secret)
		if status != http.StatusOK {
			t.Errorf("%s: status %d: %v", name, status, body)
			continue
		}
		tok, _ := body["access_token"].(string)
		if c := mustVerify(t, iss, tok, ScopeARMPublic); c["xms_mirid"] != p.ManagedIdentityResourceID {
			t.Errorf("%s: xms_mirid = %v", name, c["xms_mirid"])
		}
	}

	before := m.Requests()
	minted := iss.Minted()
	for name, tc := range map[string]struct {
		method string
		query  url.Values
		header *string
		want   int
	}{
		"no header":           {http.MethodGet, q("resource", db), nil, http.StatusBadRequest},
		"empty header":        {http.MethodGet, q("resource", db), new(string), http.StatusBadRequest},
		"wrong header":        {http.MethodGet, q("resource", db), &wrong, http.StatusUnauthorized},
		"no api-version":      {http.MethodGet, url.Values{"resource": {db}}, &secret, http.StatusBadRequest},
		"old api-version":     {http.MethodGet, url.Values{"resource": {db}, "api-version": {"2017-09-01"}}, &secret, http.StatusBadRequest},
		"no resource":         {http.MethodGet, q(), &secret, http.StatusBadRequest},
		"unknown resource":    {http.MethodGet, q("resource", "https://vault.azure.net"), &secret, http.StatusBadRequest},
		"scope, not resource": {http.MethodGet, q("resource", ScopePublic), &secret, http.StatusBadRequest},
		"other client_id":     {http.MethodGet, q("resource", db, "client_id", ServicePrincipal("x").ClientID), &secret, http.StatusBadRequest},
		"other mi_res_id":     {http.MethodGet, q("resource", db, "mi_res_id", ManagedIdentity("x").ManagedIdentityResourceID), &secret, http.StatusBadRequest},
		"other object_id":     {http.MethodGet, q("resource", db, "object_id", ManagedIdentity("x").ObjectID), &secret, http.StatusBadRequest},
		"two selectors":       {http.MethodGet, q("resource", db, "client_id", p.ClientID, "object_id", p.ObjectID), &secret, http.StatusBadRequest},
		"POST":                {http.MethodPost, q("resource", db), &secret, http.StatusMethodNotAllowed},
	} {
		status, body := miGet(t, m, tc.method, tc.query, tc.header)
		if status != tc.want {
			t.Errorf("%s: status %d, want %d (%v)", name, status, tc.want, body)
		}
		if body["statusCode"] != float64(status) || body["message"] == "" || body["access_token"] != nil {
			t.Errorf("%s: body %v", name, body)
		}
	}
	if got := m.Requests() - before; got != 13 {
		t.Errorf("Requests grew by %d, want 13", got)
	}
	if iss.Minted() != minted {
		t.Error("a rejected request minted a token")
	}

	// Another path is not the endpoint.
	resp, err := http.Get(strings.TrimSuffix(m.URL(), "/msi/token") + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("other path: status %d", resp.StatusCode)
	}
}

func TestManagedIdentityEndpointSetenv(t *testing.T) {
	_, m := newEndpoint(t, ManagedIdentity("app-identity"))
	t.Run("inner", func(t *testing.T) {
		t.Setenv("MSI_ENDPOINT", "http://127.0.0.1:1/should-go")
		t.Setenv("IDENTITY_SERVER_THUMBPRINT", "abc")
		m.Setenv(t)
		if os.Getenv("IDENTITY_ENDPOINT") != m.URL() || os.Getenv("IDENTITY_HEADER") != m.Header() {
			t.Error("IDENTITY_ENDPOINT/IDENTITY_HEADER not set")
		}
		for _, k := range []string{"MSI_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "MSI_SECRET", "IMDS_ENDPOINT"} {
			if _, ok := os.LookupEnv(k); ok {
				t.Errorf("%s still set", k)
			}
		}
	})
	if os.Getenv("IDENTITY_ENDPOINT") == m.URL() {
		t.Error("IDENTITY_ENDPOINT not restored after the test")
	}
}

// TestManagedIdentityCredential drives the real
// azidentity.ManagedIdentityCredential against the endpoint.
func TestManagedIdentityCredential(t *testing.T) {
	clearAzureEnv(t)
	p := ManagedIdentity("app-identity")
	iss, m := newEndpoint(t, p)
	m.Setenv(t)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()

	t.Run("system-assigned", func(t *testing.T) {
		before := m.Requests()
		cred, err := azidentity.NewManagedIdentityCredential(nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := getToken(ctx, cred, ScopePublic)
		if err != nil {
			t.Fatal(err)
		}
		checkMIToken(t, iss, tok, p, ScopePublic)
		if got := m.Requests() - before; got != 1 {
			t.Errorf("endpoint saw %d requests, want 1", got)
		}
	})

	t.Run("fresh credentials each ask", func(t *testing.T) {
		// Tokens shorter than 5 minutes stay out of MSAL's process-wide
		// cache, so every fresh credential reaches the endpoint.
		for i := 0; i < 2; i++ {
			before := m.Requests()
			cred, err := azidentity.NewManagedIdentityCredential(nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := getToken(ctx, cred, ScopePublic); err != nil {
				t.Fatal(err)
			}
			if got := m.Requests() - before; got != 1 {
				t.Errorf("credential %d: endpoint saw %d requests, want 1", i, got)
			}
		}
	})

	for name, id := range map[string]azidentity.ManagedIDKind{
		"client id":   azidentity.ClientID(p.ClientID),
		"resource id": azidentity.ResourceID(p.ManagedIdentityResourceID),
		"object id":   azidentity.ObjectID(p.ObjectID),
	} {
		t.Run("user-assigned by "+name, func(t *testing.T) {
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: id})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := getToken(ctx, cred, ScopeARMPublic)
			if err != nil {
				t.Fatal(err)
			}
			checkMIToken(t, iss, tok, p, ScopeARMPublic)
		})
	}

	t.Run("another identity", func(t *testing.T) {
		before := m.Requests()
		cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
			ID: azidentity.ClientID(ManagedIdentity("someone-else").ClientID),
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = getToken(ctx, cred, ScopePublic)
		var afe *azidentity.AuthenticationFailedError
		if !errors.As(err, &afe) || afe.RawResponse == nil || afe.RawResponse.StatusCode != http.StatusBadRequest {
			t.Errorf("err = %v, want an AuthenticationFailedError with status 400", err)
		}
		if got := m.Requests() - before; got != 1 {
			t.Errorf("endpoint saw %d requests, want 1 (400 is not retried)", got)
		}
	})

	t.Run("wrong header", func(t *testing.T) {
		t.Setenv("IDENTITY_HEADER", "wrong")
		cred, err := azidentity.NewManagedIdentityCredential(nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = getToken(ctx, cred, ScopePublic)
		var afe *azidentity.AuthenticationFailedError
		if !errors.As(err, &afe) || afe.RawResponse == nil || afe.RawResponse.StatusCode != http.StatusUnauthorized {
			t.Errorf("err = %v, want an AuthenticationFailedError with status 401", err)
		}
	})
}

// checkMIToken verifies a managed identity token from the endpoint.
func checkMIToken(t *testing.T, iss *Issuer, tok azcore.AccessToken, p Principal, scope string) {
	t.Helper()
	claims := mustVerify(t, iss, tok.Token, scope)
	exp, _ := claims.GetExpirationTime()
	if !tok.ExpiresOn.Equal(exp.Time) {
		t.Errorf("ExpiresOn %v, exp %v", tok.ExpiresOn, exp.Time)
	}
	if claims["oid"] != p.ObjectID || claims["appid"] != p.ClientID {
		t.Errorf("claims = %v", claims)
	}
	for _, k := range nameClaims {
		if _, ok := claims[k]; ok {
			t.Errorf("managed identity token has %s", k)
		}
	}
	_, hasMirid := claims["xms_mirid"]
	if arm := scope == ScopeARMPublic; hasMirid != arm {
		t.Errorf("%s token: has xms_mirid %v", scope, hasMirid)
	}
}

// TestDefaultAzureCredentialManagedIdentity drives the real
// DefaultAzureCredential, whose chain reaches managed identity.
func TestDefaultAzureCredentialManagedIdentity(t *testing.T) {
	p := ManagedIdentity("app-identity")
	for _, selector := range []string{"", "prod", "ManagedIdentityCredential"} {
		t.Run("AZURE_TOKEN_CREDENTIALS="+selector, func(t *testing.T) {
			clearAzureEnv(t)
			if selector != "" {
				t.Setenv("AZURE_TOKEN_CREDENTIALS", selector)
			}
			iss, m := newEndpoint(t, p)
			m.Setenv(t)
			cred, err := azidentity.NewDefaultAzureCredential(nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			tok, err := getToken(ctx, cred, ScopePublic)
			if err != nil {
				t.Fatal(err)
			}
			checkMIToken(t, iss, tok, p, ScopePublic)
			if m.Requests() != 1 {
				t.Errorf("endpoint saw %d requests, want 1", m.Requests())
			}
		})
	}

	t.Run("AZURE_CLIENT_ID", func(t *testing.T) {
		clearAzureEnv(t)
		iss, m := newEndpoint(t, p)
		m.Setenv(t)
		t.Setenv("AZURE_CLIENT_ID", p.ClientID)
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		tok, err := getToken(ctx, cred, ScopeARMPublic)
		if err != nil {
			t.Fatal(err)
		}
		checkMIToken(t, iss, tok, p, ScopeARMPublic)
	})
}

func TestManagedIdentityEndpointFailWithAndLatency(t *testing.T) {
	clearAzureEnv(t)
	p := ManagedIdentity("app-identity")
	_, m := newEndpoint(t, p)
	m.Setenv(t)
	cred, err := azidentity.NewManagedIdentityCredential(nil)
	if err != nil {
		t.Fatal(err)
	}

	m.FailWith(http.StatusBadRequest, "Unable to load the proper Managed Identity.")
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	_, err = getToken(ctx, cred, ScopePublic)
	if err == nil || !strings.Contains(err.Error(), "Unable to load the proper Managed Identity.") {
		t.Errorf("err = %v, want the endpoint's message", err)
	}
	m.FailWith(0, "")

	const latency = 200 * time.Millisecond
	m.SetLatency(latency)
	m.SetLifetime(2 * time.Minute)
	start := time.Now()
	tok, err := getToken(ctx, cred, ScopePublic)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < latency {
		t.Errorf("GetToken took %v, less than the latency %v", d, latency)
	}
	if d := time.Until(tok.ExpiresOn); d > 2*time.Minute+time.Second {
		t.Errorf("token expires in %v, want at most 2 minutes", d)
	}

	m.SetLatency(time.Hour)
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if _, err := getToken(short, cred, ScopePublic); err == nil {
		t.Error("GetToken succeeded despite an hour of latency")
	}
}

func TestManagedIdentityEndpointClose(t *testing.T) {
	_, m := newEndpoint(t, ManagedIdentity("app-identity"))
	m.SetLatency(time.Hour)
	secret := m.Header()
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest(http.MethodGet, m.URL()+"?api-version=2019-08-01&resource=https://ossrdbms-aad.database.windows.net", nil)
		req.Header.Set("X-IDENTITY-HEADER", secret)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, func() bool { return m.Requests() == 1 })
	m.Close() // ends the request waiting out its latency
	m.Close()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("request in flight survived Close")
	}
	if _, err := http.Get(m.URL()); err == nil {
		t.Error("endpoint still answers after Close")
	}
}

// TestMSALCachesLongManagedIdentityTokens pins down the MSAL behaviour the
// endpoint's short default lifetime works around: tokens with more than 5
// minutes left are served to fresh credentials from a process-wide cache,
// even once another endpoint (and issuer) has taken over.
func TestMSALCachesLongManagedIdentityTokens(t *testing.T) {
	clearAzureEnv(t)
	// An identity no other test (or run, with -count) uses, so its cache
	// entry disturbs nothing.
	name, err := randomUUID()
	if err != nil {
		t.Fatal(err)
	}
	p := ManagedIdentity("msal-cache-probe-" + name)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	fetch := func(m *ManagedIdentityEndpoint) string {
		t.Helper()
		m.Setenv(t)
		m.SetLifetime(time.Hour)
		cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(p.ClientID)})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := getToken(ctx, cred, ScopePublic)
		if err != nil {
			t.Fatal(err)
		}
		return tok.Token
	}

	first, err := NewManagedIdentityEndpoint(freshIssuer(t), p)
	if err != nil {
		t.Fatal(err)
	}
	firstToken := fetch(first)
	first.Close()
	if first.Requests() != 1 {
		t.Fatalf("first endpoint saw %d requests, want 1", first.Requests())
	}

	iss, second := newEndpoint(t, p)
	secondToken := fetch(second)
	if second.Requests() != 0 || secondToken != firstToken {
		t.Errorf("second endpoint saw %d requests; MSAL no longer caches hour-long tokens across credentials, revisit the 4-minute default", second.Requests())
	}
	_, err = iss.Verify(secondToken, ScopePublic)
	assertKind(t, err, ErrBadSignature, secondToken)
}
