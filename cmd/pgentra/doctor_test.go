package main

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/pgentra/entraauth/entratest"
)

// doctorSteps are the steps pgentra doctor prints, in order.
var doctorSteps = []string{"credential", "token", "user", "dns", "tcp", "tls", "login"}

// doctorLines returns the status of each step in doctor's text output, by
// the marker of its line.
func doctorLines(t *testing.T, out string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		for mark, status := range map[string]string{"✓ ": statusPass, "✗ ": statusFail, "· ": statusSkip} {
			if rest, ok := strings.CutPrefix(l, mark); ok {
				name, _, _ := strings.Cut(rest, " ")
				got[name] = status
			}
		}
	}
	return got
}

// doctorRun runs pgentra doctor and checks that no token is in its output.
func doctorRun(t *testing.T, env []string, tokens []string, args ...string) result {
	t.Helper()
	r := pgentra(t, env, append([]string{"doctor"}, args...)...)
	if strings.Contains(r.stdout, "eyJ") {
		t.Errorf("doctor printed something like a token: %s", r.stdout)
	}
	for _, tok := range tokens {
		if tok != "" && strings.Contains(r.stdout+r.stderr, tok) {
			t.Errorf("doctor printed the token")
		}
	}
	return r
}

// expiredAz writes an az that prints an already expired token of p's, and
// returns its directory.
func expiredAz(t *testing.T, f *fixture, p entratest.Principal) (dir, token string) {
	t.Helper()
	tok, err := f.iss.Mint(p, entratest.ScopePublic, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for now := time.Now(); !now.After(tok.ExpiresOn); now = time.Now() {
		<-time.After(tok.ExpiresOn.Sub(now) + 10*time.Millisecond) // the clock passing exp is the condition
	}
	b, err := json.Marshal(map[string]any{
		"accessToken": tok.Token, "expiresOn": tok.ExpiresOn.Local().Format("2006-01-02 15:04:05.000000"),
		"expires_on": tok.ExpiresOn.Unix(), "tenant": f.iss.TenantID(), "tokenType": "Bearer",
	})
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\ncat '" + filepath.Join(dir, "token.json") + "'\n"
	if err := os.WriteFile(filepath.Join(dir, "az"), []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, tok.Token
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// doctorEnv points doctor at f's server by the name its certificate
// carries, with az (or another az directory) on PATH.
func (f *fixture) doctorEnv(azDir string, extra ...string) []string {
	return childEnv(append([]string{"PGHOST=localhost", fmt.Sprintf("PGPORT=%d", f.srv.Port()), "PGDATABASE=postgres",
		"PGSSLROOTCERT=" + f.srv.CAFile(), pathWith(azDir)}, extra...)...)
}

func TestDoctor(t *testing.T) {
	f := newFixture(t)
	azAlice := f.az(t, alice)
	azLoggedOut := f.az(t, alice)
	azLoggedOut.FailWith("ERROR: Please run 'az login' to setup account.")
	azApp := f.az(t, entratest.ServicePrincipal("cli-doctor-app"))
	azNobody := f.az(t, entratest.User("cli-nobody@contoso.com"))
	mi := f.mi(t, identity)
	expiredDir, expiredTok := expiredAz(t, f, alice)
	cli := []string{"--credential", "cli"}

	for _, tt := range []struct {
		name     string
		env      []string
		args     []string
		failStep string // "" for a healthy setup
		want     []string
	}{
		{name: "healthy, az", env: f.doctorEnv(azAlice.Dir()), args: cli,
			want: []string{"AzureCLICredential answered", alice.UPN + ", from the token's upn claim", "localhost resolves to 127.0.0.1 (loopback)", "addresses: not public",
				"root: other: CN=entratest server CA", "host name: localhost verifies", "logged in as " + alice.UPN}},
		{name: "healthy, managed identity through DefaultAzureCredential",
			env:  childEnv(append(miEnv(mi), "PGHOST=localhost", fmt.Sprintf("PGPORT=%d", f.srv.Port()), "PGDATABASE=postgres", "PGSSLROOTCERT="+f.srv.CAFile())...),
			args: []string{"--client-id", identity.ClientID},
			want: []string{"ManagedIdentityCredential (in DefaultAzureCredential's chain) answered", "✓ token      managed identity (no name claim)", "    type: managed identity\n",
				"cli-identity, from the managed identity's name", "logged in as cli-identity"}},
		{name: "healthy, az through DefaultAzureCredential", env: f.doctorEnv(azAlice.Dir(), "AZURE_TOKEN_CREDENTIALS=dev"),
			want: []string{"AzureCLICredential (in DefaultAzureCredential's chain) answered", "from: --credential default", "logged in as " + alice.UPN}},
		{name: "healthy, Service Connector variables naming the user",
			env: childEnv(append(miEnv(mi), "PGSSLROOTCERT="+f.srv.CAFile(),
				"AZURE_POSTGRESQL_CONNECTIONSTRING="+f.srv.ConnString("user=cli-identity"), "AZURE_POSTGRESQL_CLIENTID="+identity.ClientID)...),
			want: []string{"from: the Service Connector variables (AZURE_POSTGRESQL_…)", "cli-identity, from the Service Connector variables",
				"not looked up: the host is an IP address", "host name: 127.0.0.1 verifies", "logged in as cli-identity"}},
		{name: "no credential", env: f.doctorEnv(azLoggedOut.Dir()), args: cli, failStep: "credential",
			want: []string{"az login", "· token", "· login"}},
		{name: "no az on PATH", env: f.doctorEnv(azAlice.Dir(), "PATH="+t.TempDir()), args: cli, failStep: "credential",
			want: []string{"executable not found", "fix: install the Azure CLI (az)"}},
		{name: "wrong audience", env: f.doctorEnv(azAlice.Dir()), args: append(cli, "--scope", "https://management.azure.com/.default"), failStep: "token",
			want: []string{"the token is for https://management.azure.com, not for Azure Database for PostgreSQL", "fix: ask for a token for https://ossrdbms-aad.database.windows.net/.default: drop --scope"}},
		{name: "expired token", env: f.doctorEnv(expiredDir), args: cli, failStep: "token",
			want: []string{"the token expired", "fix: the credential handed out an expired token"}},
		{name: "no name claim", env: f.doctorEnv(azApp.Dir()), args: cli, failStep: "user",
			want: []string{"service principal or managed identity (no name claim)", "fix: name the role with -U NAME, PGUSER or --user"}},
		{name: "role missing", env: f.doctorEnv(azNobody.Dir()), args: cli, failStep: "login",
			want: []string{`password authentication failed for user "cli-nobody@contoso.com"`, "sqlstate: 28P01", "cannot be told from outside",
				"create the role: select * from pgaadauth_create_principal('cli-nobody@contoso.com', false, false);",
				"fix: Ask an Entra administrator of the server to create the role for this principal"}},
		{name: "PGUSER naming another role", env: f.doctorEnv(azAlice.Dir(), "PGUSER=cli-identity"), args: cli, failStep: "login",
			want: []string{"cli-identity, from PGUSER", "The user name came from PGUSER, but the token is for " + alice.UPN, "fix: Remove the user name from PGUSER",
				"role exists?: cannot be told from outside"}},
		{name: "untrusted CA", env: f.doctorEnv(azAlice.Dir(), "PGSSLROOTCERT="+f.pg.CAFile), args: cli, failStep: "tls",
			want: []string{"does not chain to sslrootcert " + f.pg.CAFile, "fix: give sslrootcert= or PGSSLROOTCERT the CA", "· login"}},
		{name: "host name mismatch", env: f.doctorEnv(azAlice.Dir(), "PGHOST=not-the-cert-name.example", "PGHOSTADDR=127.0.0.1"), args: cli, failStep: "tls",
			want: []string{"the certificate is not for not-the-cert-name.example", "fix: connect by a name the certificate carries (localhost, 127.0.0.1, ::1)"}},
		{name: "closed port", env: f.doctorEnv(azAlice.Dir(), fmt.Sprintf("PGPORT=%d", closedPort(t))), args: cli, failStep: "tcp",
			want: []string{"nothing accepts connections at localhost:", "fix: check the port", "· tls", "· login"}},
		{name: "name that does not resolve", env: f.doctorEnv(azAlice.Dir(), "PGHOST=no-such-server.invalid"), args: cli, failStep: "dns",
			want: []string{"no-such-server.invalid does not resolve", "fix: check the host name", "· tcp"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := doctorRun(t, tt.env, []string{expiredTok}, tt.args...)
			steps := doctorLines(t, r.stdout)
			wantCode := 0
			if tt.failStep != "" {
				wantCode = 1
			}
			if r.code != wantCode || r.stderr != "" {
				t.Errorf("exit %d, stderr %q; want %d and nothing\n%s", r.code, r.stderr, wantCode, r.stdout)
			}
			for _, name := range doctorSteps {
				want := statusPass
				switch {
				case name == tt.failStep:
					want = statusFail
				case steps[name] == statusSkip && tt.failStep != "":
					want = statusSkip // a step after the failure, or one it needs
				}
				if steps[name] != want {
					t.Errorf("step %s: %q, want %q\n%s", name, steps[name], want, r.stdout)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("output lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// doctorJSON is pgentra doctor --output json.
type doctorJSON struct {
	OK    bool `json:"ok"`
	Steps []struct {
		Name    string            `json:"name"`
		OK      bool              `json:"ok"`
		Status  string            `json:"status"`
		Summary string            `json:"summary"`
		Facts   map[string]string `json:"facts"`
		Fix     string            `json:"fix"`
	} `json:"steps"`
}

func TestDoctorJSON(t *testing.T) {
	f := newFixture(t)
	azAlice := f.az(t, alice)
	azNobody := f.az(t, entratest.User("cli-nobody@contoso.com"))
	for _, tt := range []struct {
		name     string
		az       *entratest.AzureCLI
		failStep string
	}{
		{"healthy", azAlice, ""},
		{"role missing", azNobody, "login"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := doctorRun(t, f.doctorEnv(tt.az.Dir()), nil, "--credential", "cli", "--output", "json")
			var got doctorJSON
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("%v: %+v", err, r)
			}
			if got.OK != (tt.failStep == "") || (r.code == 0) != got.OK {
				t.Errorf("ok %v, exit %d; want ok only without a failed step", got.OK, r.code)
			}
			if len(got.Steps) != len(doctorSteps) {
				t.Fatalf("%d steps, want %d: %s", len(got.Steps), len(doctorSteps), r.stdout)
			}
			for i, s := range got.Steps {
				want := statusPass
				if s.Name == tt.failStep {
					want = statusFail
				}
				if s.Name != doctorSteps[i] || s.Status != want || s.OK != (want == statusPass) {
					t.Errorf("step %d: %s %s ok=%v; want %s %s", i, s.Name, s.Status, s.OK, doctorSteps[i], want)
				}
				if (s.Fix != "") != (want == statusFail) {
					t.Errorf("step %s: fix %q", s.Name, s.Fix)
				}
			}
			// The same facts as the text (of another run: times normalised).
			text := normalizeDoctor(doctorRun(t, f.doctorEnv(tt.az.Dir()), nil, "--credential", "cli").stdout)
			for _, s := range got.Steps {
				for k, v := range s.Facts {
					if line := normalizeDoctor("    " + k + ": " + strings.SplitN(v, "\n", 2)[0]); !strings.Contains(text, line) {
						t.Errorf("the text lacks %q:\n%s", line, text)
					}
				}
			}
			if tt.failStep == "login" {
				login := got.Steps[len(got.Steps)-1]
				if login.Facts["sqlstate"] != "28P01" || !strings.Contains(login.Facts["create the role"], "pgaadauth_create_principal('cli-nobody@contoso.com'") {
					t.Errorf("login facts %v", login.Facts)
				}
			}
		})
	}
}

func TestDoctorUsage(t *testing.T) {
	r := pgentra(t, childEnv(), "doctor", "--help")
	for _, w := range append([]string{"Usage: pgentra doctor", "--output FORMAT", "Credential flags:"}, doctorSteps...) {
		if r.code != 0 || !strings.Contains(r.stdout, w) {
			t.Errorf("doctor --help lacks %q: %+v", w, r)
		}
	}
	for _, args := range [][]string{{"--output", "yaml"}, {"--credential", "cli"}, {"--credential", "cli", "-h", "/var/run/postgresql"}, {"--bogus"}} {
		if r := pgentra(t, childEnv(), append([]string{"doctor"}, args...)...); r.code != 2 || r.stdout != "" {
			t.Errorf("doctor %q: %+v; want a usage error", args, r)
		}
	}
}

// readmeDoctorBlock is the README's example of doctor's output.
var readmeDoctorBlock = regexp.MustCompile("(?s)<!-- doctor-example -->\n```text\n(.*?)```")

// normalizeDoctor replaces what changes from run to run in doctor's
// output: ports, UUIDs, times and durations, temporary paths.
func normalizeDoctor(s string) string {
	for _, r := range []struct{ re, to string }{
		{`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`, "<uuid>"},
		{`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`, "<time>"},
		{`\b(\d+h)?(\d+m)?\d+(\.\d+)?m?s\b`, "<duration>"},
		{`:\d{2,5}\b`, ":<port>"},
		{`/[^ ]*/ca\.pem`, "<ca.pem>"},
	} {
		s = regexp.MustCompile(r.re).ReplaceAllString(s, r.to)
	}
	return s
}

// TestDoctorREADME: the README's example is what doctor prints for a role
// that was never created.
func TestDoctorREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := readmeDoctorBlock.FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no doctor example (<!-- doctor-example --> then a text block)")
	}
	f := newFixture(t)
	az := f.az(t, entratest.User("cli-nobody@contoso.com"))
	r := doctorRun(t, f.doctorEnv(az.Dir()), nil, "--credential", "cli")
	example := strings.TrimPrefix(string(m[1]), "$ pgentra doctor --credential cli\n")
	if got, want := normalizeDoctor(r.stdout), normalizeDoctor(example); got != want {
		t.Errorf("README.md's doctor example is not what doctor prints; it prints:\n%s", r.stdout)
	}
}

// TestDoctorInProcess runs doctor in the test's process, so that the race
// detector sees its code (azidentity's log listener is called from the
// credential's goroutines).
func TestDoctorInProcess(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	for _, kv := range f.doctorEnv(az.Dir()) {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || k == "PATH" {
			t.Setenv(k, v)
		}
	}
	for _, k := range []string{"PGUSER", "PGSERVICE", "PGHOSTADDR", "PGSSLMODE", "AZURE_POSTGRESQL_CONNECTIONSTRING", "AZURE_POSTGRESQL_HOST"} {
		t.Setenv(k, "")
	}
	for _, tt := range []struct {
		user     string
		wantCode int
		want     string
	}{
		{"", exitOK, "✓ login      logged in as " + alice.UPN},
		{"cli-identity", exitFail, "✗ login"},
	} {
		t.Setenv("PGUSER", tt.user)
		var stdout, stderr strings.Builder
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		code := run(ctx, []string{"doctor", "--credential", "cli"}, &stdout, &stderr)
		cancel()
		if code != tt.wantCode || stderr.Len() > 0 || !strings.Contains(stdout.String(), tt.want) {
			t.Errorf("PGUSER=%q: exit %d, stderr %q; want %d and %q:\n%s", tt.user, code, stderr.String(), tt.wantCode, tt.want, stdout.String())
		}
	}
}

// TestDoctorTokenStep: the token step's rules, on tokens the emulators do
// not hand out (issued in this machine's future, not a JWT).
func TestDoctorTokenStep(t *testing.T) {
	t.Parallel()
	now := time.Now()
	mint := func(claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte("doctor test key, not Entra's"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := func(mod func(jwt.MapClaims)) string {
		c := jwt.MapClaims{"aud": "https://ossrdbms-aad.database.windows.net", "upn": "u@contoso.com", "oid": "o", "tid": "t",
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if mod != nil {
			mod(c)
		}
		return mint(c)
	}
	d := &doctor{o: &options{}, host: "mysrv.postgres.database.azure.com"}
	for _, tt := range []struct {
		name, token, status, want string
	}{
		{"good", good(nil), statusPass, "user u@contoso.com (upn claim), expires in"},
		{"issued in the future", good(func(c jwt.MapClaims) { c["iat"], c["nbf"] = now.Add(time.Hour).Unix(), now.Add(time.Hour).Unix() }),
			statusFail, "this machine's clock is behind"},
		{"expired", good(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() }), statusFail, "the credential handed out an expired token"},
		{"another audience", good(func(c jwt.MapClaims) { c["aud"] = "https://management.azure.com" }), statusFail, "give --scope https://ossrdbms-aad.database.windows.net/.default"},
		{"China's server, public token", good(nil), statusFail, "https://ossrdbms-aad.database.chinacloudapi.cn/.default"},
		{"not a JWT", "not-a-jwt", statusFail, "is not a JWT"},
	} {
		dd := *d
		if strings.HasPrefix(tt.name, "China") {
			dd.host = "mysrv.postgres.database.chinacloudapi.cn"
		}
		s, _ := dd.tokenStep(tt.token)
		var b strings.Builder
		if err := (&report{Steps: []*step{s}}).writeText(&b); err != nil {
			t.Fatal(err)
		}
		if s.Status != tt.status || !strings.Contains(b.String(), tt.want) || strings.Contains(b.String(), tt.token) {
			t.Errorf("%s: %s; want %s and %q\n%s", tt.name, s.Status, tt.status, tt.want, b.String())
		}
	}
}

func TestDoctorAddrKindAndRootName(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{
		"10.1.2.3": "private, RFC 1918", "172.16.0.4": "private, RFC 1918", "192.168.1.1": "private, RFC 1918",
		"fd00::1": "private, ULA", "127.0.0.1": "loopback", "::1": "loopback", "169.254.1.1": "link-local",
		"20.42.0.1": "public", "::ffff:10.0.0.1": "private, RFC 1918",
	} {
		if got := addrKind(netip.MustParseAddr(addr)); got != want {
			t.Errorf("addrKind(%s) = %q, want %q", addr, got, want)
		}
	}
	for cn, want := range map[string]string{
		"DigiCert Global Root G2":    "DigiCert Global Root G2",
		"Microsoft RSA Root CA 2017": "Microsoft RSA Root CA 2017",
		"Some Corp Proxy CA":         "other: CN=Some Corp Proxy CA",
	} {
		if got := rootName(&x509.Certificate{Subject: pkix.Name{CommonName: cn}}); got != want {
			t.Errorf("rootName(%s) = %q, want %q", cn, got, want)
		}
	}
}
