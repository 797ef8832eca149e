package entratest

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// App Service managed identity protocol, as MSAL Go's
// apps/managedidentity speaks it (source "AppService", chosen when both
// IDENTITY_ENDPOINT and IDENTITY_HEADER are set and
// IDENTITY_SERVER_THUMBPRINT is not).
const (
	miPath          = "/msi/token"
	miAPIVersion    = "2019-08-01"
	miSecretHeader  = "X-IDENTITY-HEADER"
	miEnvEndpoint   = "IDENTITY_ENDPOINT"
	miEnvHeader     = "IDENTITY_HEADER"
	miDefaultExpiry = 4 * time.Minute
)

// miInterferingEnv are variables that would make MSAL pick another managed
// identity source than App Service.
var miInterferingEnv = []string{"IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"}

// ManagedIdentityEndpoint emulates the managed identity endpoint of Azure
// App Service and Azure Functions (the one IDENTITY_ENDPOINT and
// IDENTITY_HEADER point to) on a loopback port, serving tokens for one
// principal. The real azidentity.ManagedIdentityCredential, alone or in
// azidentity.DefaultAzureCredential, gets its tokens from it after
// [ManagedIdentityEndpoint.Setenv].
//
// It answers like the real endpoint: GET
// <URL>?api-version=2019-08-01&resource=<resource>[&client_id=…|&mi_res_id=…|&object_id=…]
// with the X-IDENTITY-HEADER header gives 200 and JSON with access_token,
// expires_on (Unix seconds, as a string), resource, token_type and
// client_id. A missing header gives 400, a wrong one 401, another api-version
// or an unknown resource 400, and an identity selector (client_id, mi_res_id,
// object_id, principal_id) that does not match the principal 400. A request
// without a selector (system-assigned) gets the principal's token.
//
// Tokens live 4 minutes unless [ManagedIdentityEndpoint.SetLifetime] says
// otherwise. That is on purpose: MSAL Go caches managed identity tokens in a
// process-wide cache keyed only by the identity's client id (or "system
// assigned") and the resource, and serves a cached token only while it has
// more than 5 minutes left. With longer tokens, a second endpoint in the same
// test binary may never be asked, and the caller gets the first endpoint's
// token, signed by another issuer.
type ManagedIdentityEndpoint struct {
	iss    *Issuer
	p      Principal
	header string
	url    string

	srv      *http.Server
	served   chan struct{}
	done     chan struct{}
	closeOne sync.Once

	requests atomic.Int64

	mu         sync.Mutex
	lifetime   time.Duration
	latency    time.Duration
	failStatus int
	failMsg    string
}

// NewManagedIdentityEndpoint starts an endpoint on 127.0.0.1 serving tokens
// for p, minted by iss. Close it when done.
func NewManagedIdentityEndpoint(iss *Issuer, p Principal) (*ManagedIdentityEndpoint, error) {
	var secret [16]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("entratest: identity header: %w", err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("entratest: managed identity endpoint: %w", err)
	}
	m := &ManagedIdentityEndpoint{
		iss:      iss,
		p:        p,
		header:   hex.EncodeToString(secret[:]),
		url:      "http://" + ln.Addr().String() + miPath,
		served:   make(chan struct{}),
		done:     make(chan struct{}),
		lifetime: miDefaultExpiry,
	}
	m.srv = &http.Server{Handler: http.HandlerFunc(m.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(m.served)
		_ = m.srv.Serve(ln)
	}()
	return m, nil
}

// URL returns the endpoint's URL, the value for IDENTITY_ENDPOINT.
func (m *ManagedIdentityEndpoint) URL() string { return m.url }

// Header returns the random secret the endpoint expects in the
// X-IDENTITY-HEADER request header, the value for IDENTITY_HEADER.
func (m *ManagedIdentityEndpoint) Header() string { return m.header }

// Setenv points managed identity credentials at the endpoint for the rest
// of the test: it sets IDENTITY_ENDPOINT and IDENTITY_HEADER and unsets
// IDENTITY_SERVER_THUMBPRINT, MSI_ENDPOINT, MSI_SECRET and IMDS_ENDPOINT,
// which would make MSAL use another source, all with t.Setenv (so the test
// must not be parallel, and everything is restored at its end). It leaves
// AZURE_CLIENT_ID alone: DefaultAzureCredential asks for that user-assigned
// identity, which the endpoint rejects unless it is the principal's.
func (m *ManagedIdentityEndpoint) Setenv(t testing.TB) {
	t.Helper()
	t.Setenv(miEnvEndpoint, m.url)
	t.Setenv(miEnvHeader, m.header)
	for _, k := range miInterferingEnv {
		unsetenv(t, k)
	}
}

// unsetenv unsets key for the rest of the test; t.Setenv restores it
// afterwards.
func unsetenv(t testing.TB, key string) {
	t.Setenv(key, "")
	if err := os.Unsetenv(key); err != nil {
		t.Fatalf("entratest: unsetenv %s: %v", key, err)
	}
}

// SetLifetime sets the lifetime of the tokens served from now on (default 4
// minutes, see [ManagedIdentityEndpoint]; at least one second).
func (m *ManagedIdentityEndpoint) SetLifetime(d time.Duration) {
	m.mu.Lock()
	m.lifetime = d
	m.mu.Unlock()
}

// SetLatency makes the endpoint wait d before answering each request (it
// stops waiting when the client goes away or the endpoint closes).
func (m *ManagedIdentityEndpoint) SetLatency(d time.Duration) {
	m.mu.Lock()
	m.latency = d
	m.mu.Unlock()
}

// FailWith makes the endpoint answer every valid token request with HTTP
// status and a JSON error carrying message, until FailWith(0, ""). Note
// that azidentity retries 408, 429, 500, 502, 503 and 504 a few times, with
// delays, before giving up, so each GetToken then makes several requests.
func (m *ManagedIdentityEndpoint) FailWith(status int, message string) {
	m.mu.Lock()
	m.failStatus, m.failMsg = status, message
	m.mu.Unlock()
}

// Requests returns how many HTTP requests the endpoint has received,
// rejected ones included.
func (m *ManagedIdentityEndpoint) Requests() int64 { return m.requests.Load() }

// Close stops the endpoint, ending requests in flight, and waits until it
// has stopped. It is safe to call more than once.
func (m *ManagedIdentityEndpoint) Close() {
	m.closeOne.Do(func() {
		close(m.done)
		_ = m.srv.Close()
		<-m.served
	})
}

func (m *ManagedIdentityEndpoint) serveHTTP(w http.ResponseWriter, r *http.Request) {
	m.requests.Add(1)
	m.mu.Lock()
	lifetime, latency, failStatus, failMsg := m.lifetime, m.latency, m.failStatus, m.failMsg
	m.mu.Unlock()

	if r.URL.Path != miPath {
		miError(w, http.StatusNotFound, "not found")
		return
	}
	if r.Method != http.MethodGet {
		miError(w, http.StatusMethodNotAllowed, "only GET is supported")
		return
	}
	got, ok := r.Header[http.CanonicalHeaderKey(miSecretHeader)]
	if !ok || len(got) == 0 || got[0] == "" {
		miError(w, http.StatusBadRequest, "The request is missing the "+miSecretHeader+" header.")
		return
	}
	if len(got) != 1 || subtle.ConstantTimeCompare([]byte(got[0]), []byte(m.header)) != 1 {
		miError(w, http.StatusUnauthorized, "The "+miSecretHeader+" header is not valid.")
		return
	}
	q := r.URL.Query()
	if v := q.Get("api-version"); v != miAPIVersion {
		miError(w, http.StatusBadRequest, fmt.Sprintf("Unsupported api-version %q; this endpoint speaks %s.", v, miAPIVersion))
		return
	}
	resource := q.Get("resource")
	if resource == "" {
		miError(w, http.StatusBadRequest, "The resource parameter is missing.")
		return
	}
	if _, _, err := resourceOf(resource); err != nil || strings.HasSuffix(resource, defaultSuffix) {
		miError(w, http.StatusBadRequest, fmt.Sprintf("AADSTS500011: The resource principal named %s was not found in the tenant.", resource))
		return
	}
	if msg := m.selectorMismatch(q); msg != "" {
		miError(w, http.StatusBadRequest, msg)
		return
	}

	select {
	case <-r.Context().Done():
		return
	case <-m.done:
		return
	case <-time.After(latency):
	}
	if failStatus != 0 {
		miError(w, failStatus, failMsg)
		return
	}
	tok, err := m.iss.Mint(m.p, resource, lifetime)
	if err != nil {
		miError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(map[string]string{
		"access_token": tok.Token,
		"expires_on":   strconv.FormatInt(tok.ExpiresOn.Unix(), 10),
		"resource":     resource,
		"token_type":   "Bearer",
		"client_id":    m.p.ClientID,
	})
}

// selectorMismatch checks the user-assigned identity selector, if any, and
// returns why it does not name the principal ("" when it does).
func (m *ManagedIdentityEndpoint) selectorMismatch(q map[string][]string) string {
	selectors := []struct{ param, want string }{
		{"client_id", m.p.ClientID},
		{"mi_res_id", m.p.ManagedIdentityResourceID},
		{"object_id", m.p.ObjectID},
		{"principal_id", m.p.ObjectID},
	}
	n := 0
	for _, s := range selectors {
		vals, ok := q[s.param]
		if !ok {
			continue
		}
		n++
		if len(vals) != 1 || s.want == "" || !strings.EqualFold(vals[0], s.want) {
			return fmt.Sprintf("Unable to load the proper Managed Identity: no identity with %s %q is assigned to this resource.", s.param, strings.Join(vals, ","))
		}
	}
	if n > 1 {
		return "Only one of client_id, mi_res_id, object_id and principal_id may be given."
	}
	return ""
}

// miError writes an error the way App Service's endpoint does.
func miError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		StatusCode int    `json:"statusCode"`
		Message    string `json:"message"`
	}{status, message})
}
