package entratest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func newAzureCLI(t *testing.T, p Principal) (*Issuer, *AzureCLI) {
	t.Helper()
	iss := issuer(t)
	a, err := NewAzureCLI(iss, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return iss, a
}

// runAz runs the fake az directly and returns its exit status, stdout and
// stderr.
func runAz(t *testing.T, a *AzureCLI, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(a.Dir(), "az"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	default:
		t.Fatalf("running az: %v", err)
		return 0, "", ""
	}
}

func TestAzureCLIScript(t *testing.T) {
	p := User("alice@contoso.com")
	iss, a := newAzureCLI(t, p)

	code, stdout, stderr := runAz(t, a, "account", "get-access-token", "-o", "json", "--resource", "https://ossrdbms-aad.database.windows.net")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var out struct {
		AccessToken  string `json:"accessToken"`
		ExpiresOn    string `json:"expiresOn"`
		ExpiresOnSec int64  `json:"expires_on"`
		Subscription string `json:"subscription"`
		Tenant       string `json:"tenant"`
		TokenType    string `json:"tokenType"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("stdout is not JSON: %v", err)
	}
	claims := mustVerify(t, iss, out.AccessToken, ScopePublic)
	exp, _ := claims.GetExpirationTime()
	local, err := time.ParseInLocation("2006-01-02 15:04:05.999999", out.ExpiresOn, time.Local)
	if err != nil {
		t.Fatal(err)
	}
	if out.ExpiresOnSec != exp.Unix() || !local.Equal(exp.Time) {
		t.Errorf("expires_on %d, expiresOn %q; exp %v", out.ExpiresOnSec, out.ExpiresOn, exp.Time)
	}
	if d := time.Until(exp.Time); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("default lifetime: expires in %v, want an hour", d)
	}
	if out.Tenant != iss.TenantID() || out.TokenType != "Bearer" || !uuidRE.MatchString(out.Subscription) {
		t.Errorf("output = %+v", out)
	}
	if claims["upn"] != p.UPN {
		t.Errorf("upn = %v", claims["upn"])
	}

	// Without --resource, az gives an Azure Resource Manager token; --scope works too.
	code, stdout, _ = runAz(t, a, "account", "get-access-token")
	if code != 0 || !strings.Contains(stdout, `"accessToken"`) {
		t.Fatalf("no --resource: exit %d", code)
	}
	json.Unmarshal([]byte(stdout), &out)
	mustVerify(t, iss, out.AccessToken, ScopeARMPublic)
	code, stdout, _ = runAz(t, a, "account", "get-access-token", "--scope", ScopeChina, "--output", "json")
	json.Unmarshal([]byte(stdout), &out)
	if code != 0 {
		t.Fatalf("--scope: exit %d", code)
	}
	mustVerify(t, iss, out.AccessToken, ScopeChina)

	// Arguments with spaces and odd characters survive the trip.
	odd := []string{"account", "get-access-token", "--subscription", "my sub 'quoted' \"twice\" $HOME *", "--resource", "https://management.azure.com"}
	if code, stdout, stderr := runAz(t, a, odd...); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	} else {
		json.Unmarshal([]byte(stdout), &out)
		if out.Subscription != odd[3] {
			t.Errorf("subscription = %q, want %q", out.Subscription, odd[3])
		}
	}
	if args := a.Args(); !slices.Equal(args[len(args)-1], odd) {
		t.Errorf("last Args = %q, want %q", args[len(args)-1], odd)
	}

	minted := iss.Minted()
	for name, tc := range map[string]struct {
		args []string
		code int
		msg  string
	}{
		"other command":    {[]string{"login"}, 2, "only knows"},
		"unknown resource": {[]string{"account", "get-access-token", "--resource", "https://vault.azure.net"}, 1, "AADSTS500011"},
		"tsv":              {[]string{"account", "get-access-token", "-o", "tsv"}, 2, "json"},
		"unknown flag":     {[]string{"account", "get-access-token", "--bogus", "x"}, 2, "unrecognized arguments"},
		"missing value":    {[]string{"account", "get-access-token", "--resource"}, 2, "expected one argument"},
	} {
		code, stdout, stderr := runAz(t, a, tc.args...)
		if code != tc.code || stdout != "" || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d and %q", name, code, stdout, stderr, tc.code, tc.msg)
		}
	}
	if iss.Minted() != minted {
		t.Error("a failed invocation minted a token")
	}
	if got := a.Invocations(); got != 9 || int64(len(a.Args())) != got {
		t.Errorf("Invocations = %d, Args = %d, want 9", got, len(a.Args()))
	}
}

// TestAzureCLICredential drives the real azidentity.AzureCLICredential
// through the fake az.
func TestAzureCLICredential(t *testing.T) {
	clearAzureEnv(t)
	p := User("alice@contoso.com")
	iss, a := newAzureCLI(t, p)
	a.Setenv(t)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()

	cred, err := azidentity.NewAzureCLICredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := getToken(ctx, cred, ScopePublic)
	if err != nil {
		t.Fatal(err)
	}
	claims := mustVerify(t, iss, tok.Token, ScopePublic)
	exp, _ := claims.GetExpirationTime()
	if !tok.ExpiresOn.Equal(exp.Time) || claims["upn"] != p.UPN {
		t.Errorf("ExpiresOn %v, exp %v, upn %v", tok.ExpiresOn, exp.Time, claims["upn"])
	}
	if a.Invocations() != 1 {
		t.Errorf("Invocations = %d, want 1", a.Invocations())
	}
	want := []string{"account", "get-access-token", "-o", "json", "--resource", "https://ossrdbms-aad.database.windows.net"}
	if got := a.Args(); len(got) != 1 || !slices.Equal(got[0], want) {
		t.Errorf("Args = %q, want [%q]", got, want)
	}

	// The credential does not cache: each call runs az.
	a.SetLifetime(time.Minute)
	tok, err = getToken(ctx, cred, ScopeARMPublic)
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, iss, tok.Token, ScopeARMPublic)
	if d := time.Until(tok.ExpiresOn); d > time.Minute+time.Second {
		t.Errorf("expires in %v, want at most a minute", d)
	}
	if a.Invocations() != 2 {
		t.Errorf("Invocations = %d, want 2", a.Invocations())
	}

	// A tenant is passed on and shows in the token.
	const tenant = "8c3dad1d-b6bc-4f8b-939b-8263372eced6"
	tok, err = cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{ScopePublic}, TenantID: tenant})
	if err != nil {
		t.Fatal(err)
	}
	args := a.Args()
	if last := args[len(args)-1]; !slices.Contains(last, "--tenant") || last[len(last)-1] != tenant {
		t.Errorf("Args = %q, want --tenant %s", last, tenant)
	}
	_, err = iss.Verify(tok.Token, ScopePublic)
	assertKind(t, err, ErrWrongIssuer, tok.Token)
}

func TestAzureCLILatencyAndFailure(t *testing.T) {
	clearAzureEnv(t)
	iss, a := newAzureCLI(t, User("alice@contoso.com"))
	a.Setenv(t)
	cred, err := azidentity.NewAzureCLICredential(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()

	const latency = 300 * time.Millisecond
	a.SetLatency(latency)
	start := time.Now()
	tok, err := getToken(ctx, cred, ScopePublic)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < latency {
		t.Errorf("GetToken took %v, less than the latency %v", d, latency)
	}
	mustVerify(t, iss, tok.Token, ScopePublic)

	// A caller's deadline shorter than the latency ends the call.
	a.SetLatency(time.Hour)
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := getToken(short, cred, ScopePublic); err == nil {
		t.Error("GetToken succeeded despite an hour of latency")
	}
	a.SetLatency(0)

	const msg = "ERROR: Please run 'az login' to setup account."
	a.FailWith(msg)
	_, err = getToken(ctx, cred, ScopePublic)
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || !strings.Contains(err.Error(), msg) {
		t.Errorf("err = %v, want an AuthenticationFailedError carrying %q", err, msg)
	}
	a.FailWith("")
	if _, err := getToken(ctx, cred, ScopePublic); err != nil {
		t.Errorf("after FailWith(\"\"): %v", err)
	}
	if a.Invocations() != 4 {
		t.Errorf("Invocations = %d, want 4", a.Invocations())
	}
}

// TestDefaultAzureCredentialAzureCLI drives the real DefaultAzureCredential
// to the fake az, as a developer machine does.
func TestDefaultAzureCredentialAzureCLI(t *testing.T) {
	for _, selector := range []string{"dev", "AzureCLICredential"} {
		t.Run(selector, func(t *testing.T) {
			clearAzureEnv(t)
			t.Setenv("AZURE_TOKEN_CREDENTIALS", selector)
			p := User("alice@contoso.com")
			iss, a := newAzureCLI(t, p)
			a.Setenv(t)
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
			if c := mustVerify(t, iss, tok.Token, ScopePublic); c["upn"] != p.UPN {
				t.Errorf("upn = %v", c["upn"])
			}
			if a.Invocations() != 1 {
				t.Errorf("Invocations = %d, want 1", a.Invocations())
			}

			a.FailWith("ERROR: Please run 'az login' to setup account.")
			if _, err := getToken(ctx, cred, ScopePublic); err == nil {
				t.Error("GetToken succeeded while az fails")
			}
		})
	}
}

func TestAzureCLIClose(t *testing.T) {
	_, a := newAzureCLI(t, User("alice@contoso.com"))
	a.SetLatency(time.Hour)
	type result struct {
		code   int
		stderr string
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	go func() {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, filepath.Join(a.Dir(), "az"), "account", "get-access-token")
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		done <- result{code, stderr.String()}
	}()
	waitFor(t, func() bool { return a.Invocations() == 1 })
	dir := a.Dir()
	a.Close() // ends the invocation waiting out its latency
	a.Close()
	select {
	case r := <-done:
		if r.code != 1 || !strings.Contains(r.stderr, "no answer") {
			t.Errorf("az in flight at Close: exit %d, stderr %q", r.code, r.stderr)
		}
	case <-time.After(hangGuard):
		t.Fatal("az in flight survived Close")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("script directory left behind: %v", err)
	}
}

func TestAzureCLIGone(t *testing.T) {
	// A script whose kit is gone fails cleanly rather than hanging.
	_, a := newAzureCLI(t, User("alice@contoso.com"))
	script, err := os.ReadFile(filepath.Join(a.Dir(), "az"))
	if err != nil {
		t.Fatal(err)
	}
	copyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(copyDir, "az"), script, 0o700); err != nil {
		t.Fatal(err)
	}
	a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(copyDir, "az"), "account", "get-access-token").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "is gone") {
		t.Errorf("err %v, output %q; want exit 1 saying the kit is gone", err, out)
	}
}
