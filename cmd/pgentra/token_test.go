package main

import (
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

func TestTokenFailure(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	az.FailWith("ERROR: Please run 'az login' to setup account.")
	r := pgentra(t, childEnv(pathWith(az.Dir())), "token", "--credential", "cli")
	if r.code == 0 || r.stdout != "" {
		t.Errorf("exit %d, stdout %q; want a failure and nothing on stdout", r.code, r.stdout)
	}
	if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "pgentra token: ") || !strings.Contains(r.stderr, "az login") {
		t.Errorf("stderr %q; want one line giving the reason", r.stderr)
	}

	// A credential that never answers: --timeout ends it.
	az.FailWith("")
	az.SetLatency(time.Minute)
	r = pgentra(t, childEnv(pathWith(az.Dir())), "token", "--credential", "cli", "--timeout", "1s")
	if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "deadline exceeded") {
		t.Errorf("with a hanging az and --timeout 1s: %+v; want exit 1 and one line on stderr", r)
	}
	az.SetLatency(0)

	// A managed identity the endpoint does not know.
	mi := f.mi(t, identity)
	r = pgentra(t, childEnv(miEnv(mi)...), "token", "--credential", "managed-identity", "--client-id", entratest.ManagedIdentity("nobody").ClientID)
	if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("with an unknown client ID: %+v; want exit 1 and one line on stderr", r)
	}
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
