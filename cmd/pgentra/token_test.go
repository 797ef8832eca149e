package main

import (
	"encoding/json"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgentra/entraauth/entratest"
)

var jwtLine = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$`)

// checkToken checks r printed exactly one line holding a JWT that the
// issuer verifies for scope, and nothing on stderr, and returns the token.
func checkToken(t *testing.T, f *fixture, r result, scope string) string {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing", r.code, r.stderr)
	}
	if !jwtLine.MatchString(r.stdout) {
		t.Fatalf("stdout is not exactly one line holding a JWT (%d bytes, %d lines)", len(r.stdout), strings.Count(r.stdout, "\n"))
	}
	tok := strings.TrimSuffix(r.stdout, "\n")
	if _, err := f.iss.Verify(tok, scope); err != nil {
		t.Errorf("the token does not verify for %s: %v", scope, err)
	}
	return tok
}

func TestTokenPrintsOneJWT(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	env := childEnv(pathWith(az.Dir()))

	checkToken(t, f, pgentra(t, env, "token", "--credential", "cli"), entratest.ScopePublic)
	// The host picks the cloud's scope; --scope wins over it.
	checkToken(t, f, pgentra(t, env, "token", "--credential=cli", "--host", "mysrv.postgres.database.chinacloudapi.cn"), entratest.ScopeChina)
	checkToken(t, f, pgentra(t, env, "token", "-credential", "cli", "--host", "mysrv.postgres.database.chinacloudapi.cn",
		"--scope", entratest.ScopeUSGov), entratest.ScopeUSGov)

	// From the managed identity endpoint, and through DefaultAzureCredential.
	mi := f.mi(t, identity)
	checkToken(t, f, pgentra(t, childEnv(miEnv(mi)...), "token", "--credential", "managed-identity", "--client-id", identity.ClientID), entratest.ScopePublic)
	checkToken(t, f, pgentra(t, childEnv(miEnv(mi)...), "token"), entratest.ScopePublic)
}

// checkFailure checks r is a failure of pgentra cmd with exit status 1,
// nothing on stdout, and the reason on stderr: a first line naming the
// command, and any further lines indented under it.
func checkFailure(t *testing.T, what string, r result, cmd string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if r.code != 1 || r.stdout != "" || !strings.HasSuffix(r.stderr, "\n") || !strings.HasPrefix(lines[0], "pgentra "+cmd+": ") {
		t.Errorf("%s: %+v; want exit status 1 and the reason on stderr", what, r)
		return
	}
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "  ") {
			t.Errorf("%s: line %q of stderr is not indented", what, l)
		}
	}
}

func TestTokenFailure(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	az.FailWith("ERROR: Please run 'az login' to setup account.")
	r := pgentra(t, childEnv(pathWith(az.Dir())), "token", "--credential", "cli")
	checkFailure(t, "az not logged in", r, "token")
	if !strings.Contains(r.stderr, "az login") {
		t.Errorf("stderr %q; want the reason", r.stderr)
	}

	// A credential that never answers: --timeout ends it.
	az.FailWith("")
	az.SetLatency(time.Minute)
	r = pgentra(t, childEnv(pathWith(az.Dir())), "token", "--credential", "cli", "--timeout", "1s")
	checkFailure(t, "with a hanging az and --timeout 1s", r, "token")
	if !strings.Contains(r.stderr, "deadline exceeded") {
		t.Errorf("with a hanging az and --timeout 1s: stderr %q", r.stderr)
	}
	az.SetLatency(0)

	// A managed identity the endpoint does not know.
	mi := f.mi(t, identity)
	r = pgentra(t, childEnv(miEnv(mi)...), "token", "--credential", "managed-identity", "--client-id", entratest.ManagedIdentity("nobody").ClientID)
	checkFailure(t, "with an unknown client ID", r, "token")
}

func TestTokenUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"token", "--credential", "psychic"},
		{"token", "--credential", "cli", "--client-id", "x"},
		{"token", "--credential", "managed-identity", "--tenant", "x"},
		{"token", "--timeout", "0s"},
		{"token", "extra"},
		{"token", "--bogus"},
		{"frobnicate"},
		{},
	} {
		r := pgentra(t, childEnv(), args...)
		if r.code != 2 || r.stdout != "" || r.stderr == "" {
			t.Errorf("pgentra %q: %+v; want exit 2 and a message on stderr only", args, r)
		}
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"token", "--help"}, {"user", "-h"}, {"psql", "--help"}} {
		r := pgentra(t, childEnv(), args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || !strings.Contains(r.stdout, "--credential") || r.stderr != "" {
			t.Errorf("pgentra %q: %+v; want help on stdout", args, r)
		}
	}
}

// TestTokenJSON: pgentra token --output json prints the token, its
// expiry, the database user and the scope, for scripts that cache it.
func TestTokenJSON(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	mi := f.mi(t, identity)
	osUser, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name        string
		env         []string
		args        []string
		user, scope string
	}{
		{"az", childEnv(pathWith(az.Dir())), []string{"--credential", "cli"}, alice.UPN, entratest.ScopePublic},
		{"managed identity, China's cloud", childEnv(miEnv(mi)...), []string{"--credential", "managed-identity", "--client-id", identity.ClientID,
			"--host", "srv.postgres.database.chinacloudapi.cn"}, "cli-identity", entratest.ScopeChina},
		// --user goes through WithUser: the OS user's name is kept, not
		// taken for "no user named".
		{"--user, the OS user's name", childEnv(pathWith(az.Dir())), []string{"--credential", "cli", "--user", osUser.Username}, osUser.Username, entratest.ScopePublic},
		{"Service Connector variables' user", childEnv(append(miEnv(mi), "AZURE_POSTGRESQL_CONNECTIONSTRING="+f.srv.ConnString("user=aad_named"),
			"AZURE_POSTGRESQL_CLIENTID="+identity.ClientID)...), nil, "aad_named", entratest.ScopePublic},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			r := pgentra(t, tt.env, append([]string{"token", "--output", "json"}, tt.args...)...)
			if r.code != 0 || r.stderr != "" || strings.Count(r.stdout, "\n") != 1 {
				t.Fatalf("%+v; want one line of JSON", r)
			}
			var got struct {
				Token     string `json:"token"`
				ExpiresOn int64  `json:"expires_on"`
				User      string `json:"user"`
				Scope     string `json:"scope"`
			}
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatal(err)
			}
			claims, err := f.iss.Verify(got.Token, tt.scope)
			if err != nil {
				t.Fatalf("the token does not verify for %s: %v", tt.scope, err)
			}
			if exp, _ := claims.GetExpirationTime(); exp == nil || exp.Unix() != got.ExpiresOn || exp.Before(before) {
				t.Errorf("expires_on %d; want the token's exp, %v", got.ExpiresOn, exp)
			}
			if got.User != tt.user || got.Scope != tt.scope {
				t.Errorf("user %q, scope %q; want %q, %q", got.User, got.Scope, tt.user, tt.scope)
			}
		})
	}
	for _, args := range [][]string{{"token", "--output", "yaml"}, {"token", "--user", "x"}} {
		if r := pgentra(t, childEnv(), args...); r.code != 2 || r.stdout != "" {
			t.Errorf("pgentra %q: %+v; want exit status 2", args, r)
		}
	}
}

// fakeAz writes an az that answers every request with accessToken.
func fakeAz(t *testing.T, accessToken string) string {
	t.Helper()
	dir := t.TempDir()
	exp := time.Now().Add(time.Hour)
	answer, err := json.Marshal(map[string]any{"accessToken": accessToken, "expiresOn": exp.Format("2006-01-02 15:04:05.000000"),
		"expires_on": exp.Unix(), "tokenType": "Bearer", "tenant": "00000000-0000-0000-0000-000000000001", "subscription": "x"})
	if err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\ncat <<'EOF'\n" + string(answer) + "\nEOF\n"
	if err := os.WriteFile(filepath.Join(dir, "az"), []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestTokenRefusesNonJWT: a credential's answer that is not a JWT is
// refused by pgentra token as by pgentra user, with the same message.
func TestTokenRefusesNonJWT(t *testing.T) {
	env := childEnv(pathWith(fakeAz(t, "not-a-jwt-but-s3cret")))
	var messages []string
	for _, cmd := range [][]string{{"token"}, {"token", "--output", "json"}, {"user"}} {
		r := pgentra(t, env, append(cmd, "--credential", "cli")...)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "malformed access token") || strings.Contains(r.stderr, "s3cret") {
			t.Errorf("pgentra %q: %+v; want exit status 1 and the reason, without the token", cmd, r)
		}
		_, msg, _ := strings.Cut(r.stderr, ": ")
		messages = append(messages, msg)
	}
	if messages[0] != messages[2] {
		t.Errorf("pgentra token says %q, pgentra user %q; want the same", messages[0], messages[2])
	}
}
