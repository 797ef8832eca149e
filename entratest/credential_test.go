package entratest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// hangGuard bounds waits that only a bug would make long.
const hangGuard = 30 * time.Second

func getToken(ctx context.Context, c azcore.TokenCredential, scopes ...string) (azcore.AccessToken, error) {
	return c.GetToken(ctx, policy.TokenRequestOptions{Scopes: scopes})
}

func TestCredentialGetToken(t *testing.T) {
	iss := issuer(t)
	p := User("alice@contoso.com")
	c := NewCredential(iss, p)
	ctx := context.Background()

	tok, err := getToken(ctx, c, ScopePublic)
	if err != nil {
		t.Fatal(err)
	}
	claims := mustVerify(t, iss, tok.Token, ScopePublic)
	if claims["upn"] != p.UPN || claims["oid"] != p.ObjectID {
		t.Errorf("claims = %v", claims)
	}
	if d := time.Until(tok.ExpiresOn); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("default lifetime: expires in %v, want about an hour", d)
	}
	if !tok.RefreshOn.IsZero() {
		t.Errorf("RefreshOn = %v by default, want zero", tok.RefreshOn)
	}

	c.SetLifetime(10 * time.Second)
	c.SetRefreshOn(0.5)
	tok, err = getToken(ctx, c, ScopeARMPublic)
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, iss, tok.Token, ScopeARMPublic)
	if d := time.Until(tok.ExpiresOn); d > 11*time.Second {
		t.Errorf("expires in %v, want at most 10s", d)
	}
	if got, want := tok.ExpiresOn.Sub(tok.RefreshOn), 5*time.Second; got != want {
		t.Errorf("RefreshOn is %v before expiry, want %v", got, want)
	}

	if got := c.Calls(); got != 2 {
		t.Errorf("Calls = %d, want 2", got)
	}
	scopes := c.Scopes()
	if want := []string{ScopePublic, ScopeARMPublic}; !slices.Equal(scopes, want) {
		t.Errorf("Scopes = %v, want %v", scopes, want)
	}
	scopes[0] = "changed"
	if c.Scopes()[0] != ScopePublic {
		t.Error("Scopes does not return a copy")
	}
}

func TestCredentialScopeCount(t *testing.T) {
	iss := issuer(t)
	c := NewCredential(iss, User("alice@contoso.com"))
	before := iss.Minted()
	for _, scopes := range [][]string{nil, {ScopePublic, ScopeARMPublic}} {
		if _, err := getToken(context.Background(), c, scopes...); err == nil {
			t.Errorf("GetToken(%v) succeeded", scopes)
		}
	}
	if _, err := getToken(context.Background(), c, "https://vault.azure.net/.default"); err == nil {
		t.Error("GetToken with an unknown scope succeeded")
	}
	if c.Calls() != 3 || iss.Minted() != before {
		t.Errorf("Calls = %d (want 3), minted %d (want 0)", c.Calls(), iss.Minted()-before)
	}
}

func TestCredentialTenant(t *testing.T) {
	iss := issuer(t)
	c := NewCredential(iss, User("alice@contoso.com"))
	const other = "8c3dad1d-b6bc-4f8b-939b-8263372eced6"
	tok, err := c.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{ScopePublic}, TenantID: other})
	if err != nil {
		t.Fatal(err)
	}
	_, err = iss.Verify(tok.Token, ScopePublic)
	assertKind(t, err, ErrWrongIssuer, tok.Token)
	if _, err := getToken(context.Background(), c, ScopePublic); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Tenants(), []string{other, ""}; !slices.Equal(got, want) {
		t.Errorf("Tenants = %q, want %q", got, want)
	}
}

func TestCredentialLatency(t *testing.T) {
	c := NewCredential(issuer(t), User("alice@contoso.com"))
	const latency = 200 * time.Millisecond
	c.SetLatency(latency)
	start := time.Now()
	if _, err := getToken(context.Background(), c, ScopePublic); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < latency {
		t.Errorf("GetToken took %v, less than the latency %v", d, latency)
	}

	// A context ending during the latency ends the call.
	c.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := getToken(ctx, c, ScopePublic)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
}

func TestCredentialFailWith(t *testing.T) {
	iss := issuer(t)
	c := NewCredential(iss, User("alice@contoso.com"))
	boom := errors.New("AADSTS50076: multi-factor authentication required")
	c.FailWith(boom)
	before := iss.Minted()
	for i := 0; i < 2; i++ {
		tok, err := getToken(context.Background(), c, ScopePublic)
		if !errors.Is(err, boom) || tok.Token != "" {
			t.Errorf("call %d: token %t, err %v; want %v", i, tok.Token != "", err, boom)
		}
	}
	if iss.Minted() != before {
		t.Error("a failing call minted a token")
	}
	c.FailWith(nil)
	if _, err := getToken(context.Background(), c, ScopePublic); err != nil {
		t.Errorf("after FailWith(nil): %v", err)
	}
	if c.Calls() != 3 {
		t.Errorf("Calls = %d, want 3", c.Calls())
	}
}

func TestCredentialHang(t *testing.T) {
	c := NewCredential(issuer(t), User("alice@contoso.com"))
	c.Hang(true)
	c.Hang(true) // idempotent

	// A hanging call ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := getToken(ctx, c, ScopePublic)
		errc <- err
	}()
	waitFor(t, func() bool { return c.Calls() == 1 })
	select {
	case err := <-errc:
		t.Fatalf("hanging call returned early: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("hanging call did not end with its context")
	}

	// Hang(false) releases calls still blocked, which then succeed.
	var wg sync.WaitGroup
	results := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := getToken(context.Background(), c, ScopePublic)
			results <- err
		}()
	}
	waitFor(t, func() bool { return c.Calls() == 4 })
	c.Hang(false)
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("released call: %v", err)
		}
	}
	if _, err := getToken(context.Background(), c, ScopePublic); err != nil {
		t.Errorf("after Hang(false): %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after hangGuard.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCredentialConcurrentUse(t *testing.T) {
	iss := issuer(t)
	c := NewCredential(iss, ServicePrincipal("worker"))
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			tok, err := getToken(context.Background(), c, ScopePublic)
			if err == nil {
				_, err = iss.Verify(tok.Token, ScopePublic)
			}
			if err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			c.SetLifetime(time.Minute)
			c.SetLatency(0)
			c.SetRefreshOn(0.5)
			_ = c.Scopes()
		}()
	}
	wg.Wait()
	if c.Calls() != 8 || len(c.Scopes()) != 8 {
		t.Errorf("Calls = %d, Scopes = %d, want 8", c.Calls(), len(c.Scopes()))
	}
}
