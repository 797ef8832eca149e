package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/pgentra/entraauth/entratest"
)

// TestUnknownCommandSuggests: a mistyped command gets a "did you mean".
func TestUnknownCommandSuggests(t *testing.T) {
	for cmd, want := range map[string]string{"tokn": `did you mean "token"?`, "prxy": `did you mean "proxy"?`, "sql": `did you mean "psql"?`,
		"users": `did you mean "user"?`, "Version": `did you mean "version"?`, "hlep": `did you mean "help"?`, "frobnicate": ""} {
		r := pgentra(t, childEnv(), cmd)
		if r.code != 2 || r.stdout != "" || !strings.HasPrefix(r.stderr, "pgentra: unknown command") {
			t.Errorf("pgentra %s: %+v; want exit status 2 and a message on stderr", cmd, r)
		}
		if want != "" && !strings.Contains(r.stderr, want) || want == "" && strings.Contains(r.stderr, "did you mean") {
			t.Errorf("pgentra %s: stderr %q; want %q", cmd, r.stderr, want)
		}
	}
}

// TestSubcommandHelp: each subcommand's --help describes its own flags.
func TestSubcommandHelp(t *testing.T) {
	for _, tt := range []struct {
		cmd         string
		want, avoid []string
	}{
		{"token", []string{"Usage: pgentra token", "--output FORMAT", "--user NAME", "Credential flags:", "--credential KIND"}, []string{"psql"}},
		{"user", []string{"Usage: pgentra user", "Credential flags:", "--credential KIND"}, []string{"--output", "for psql", "psql's"}},
		{"proxy", []string{"Usage: pgentra proxy", "--upstream", "Credential flags:", "--credential KIND", "when --upstream is not given"}, []string{"for psql", "psql's arguments", "PGHOST"}},
		{"psql", []string{"Usage: pgentra psql", "before psql's arguments", "sets PGHOST", "verify-full"}, []string{"Token flags", "Credential flags"}},
	} {
		r := pgentra(t, childEnv(), tt.cmd, "--help")
		if r.code != 0 || r.stderr != "" {
			t.Errorf("pgentra %s --help: %+v", tt.cmd, r)
		}
		for _, w := range tt.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("pgentra %s --help lacks %q:\n%s", tt.cmd, w, r.stdout)
			}
		}
		for _, a := range tt.avoid {
			if strings.Contains(r.stdout, a) {
				t.Errorf("pgentra %s --help mentions %q:\n%s", tt.cmd, a, r.stdout)
			}
		}
	}
	// The top-level help's PGPASSWORD example verifies the server.
	r := pgentra(t, childEnv(), "help")
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "PGPASSWORD=$(pgentra token) psql") && !strings.Contains(line, "sslmode=verify-full") {
			t.Errorf("the example %q does not verify the server", line)
		}
	}
	if strings.Contains(r.stdout, "for psql,") {
		t.Errorf("pgentra help describes the common flags as psql's:\n%s", r.stdout)
	}
}

// TestPsqlInfoOptionsNeedNoToken: psql's --version and --help reach psql
// without a token (here, az fails every request).
func TestPsqlInfoOptionsNeedNoToken(t *testing.T) {
	needPsql(t)
	az := issuerOnly(t).az(t, alice)
	az.FailWith("ERROR: Please run 'az login' to setup account.")
	env := childEnv(pathWith(az.Dir()))
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--version"}, []string{"psql (PostgreSQL) "}},
		{[]string{"--credential", "cli", "-X", "-V"}, []string{"psql (PostgreSQL) "}},
		{[]string{"--", "--help"}, []string{"psql is the PostgreSQL interactive terminal."}},
		{[]string{"-h", "srv", "-?"}, []string{"psql is the PostgreSQL interactive terminal."}},
		{[]string{"--help=variables"}, []string{"psql variables:"}},
		// pgentra psql's own help, then psql's.
		{[]string{"--help"}, []string{"Usage: pgentra psql", "--credential KIND", "psql is the PostgreSQL interactive terminal."}},
	} {
		r := pgentra(t, env, append([]string{"psql"}, tt.args...)...)
		if r.code != 0 || r.stderr != "" {
			t.Errorf("pgentra psql %q: %+v; want exit status 0", tt.args, r)
		}
		for _, w := range tt.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("pgentra psql %q printed %q; want %q in it", tt.args, r.stdout, w)
			}
		}
	}
	if n := az.Invocations(); n != 0 {
		t.Errorf("az was asked for %d tokens; want none", n)
	}
}

// TestErrorsNameCLIFlags: where the library's errors point to a Go option
// (WithUser), the CLI names its own flag.
func TestErrorsNameCLIFlags(t *testing.T) {
	needPsql(t)
	f := issuerOnly(t)
	az := f.az(t, entratest.ServicePrincipal("cli-app")) // its tokens carry no name
	env := childEnv(pathWith(az.Dir()))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"user", "--credential", "cli"}, "-U NAME"},
		{[]string{"token", "--credential", "cli", "--output", "json"}, "--user NAME"},
		{[]string{"psql", "--credential", "cli", "-h", "127.0.0.1", "-c", "select 1"}, "-U NAME"},
	} {
		r := pgentra(t, env, tt.args...)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "no database user name") ||
			!strings.Contains(r.stderr, tt.want) || strings.Contains(r.stderr, "With") {
			t.Errorf("pgentra %q: %+v; want the reason, naming %s and no Go option", tt.args, r, tt.want)
		}
	}
}

// TestMultiLineErrorsIndented: azidentity's errors of several lines keep
// them, indented under the first.
func TestMultiLineErrorsIndented(t *testing.T) {
	mi := issuerOnly(t).mi(t, identity)
	mi.FailWith(http.StatusBadRequest, "the requested identity has not been assigned to this resource")
	r := pgentra(t, childEnv(miEnv(mi)...), "token", "--credential", "managed-identity", "--client-id", identity.ClientID)
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if r.code != 1 || r.stdout != "" || len(lines) < 2 || !strings.HasPrefix(lines[0], "pgentra token: ") {
		t.Fatalf("%+v; want exit status 1 and several lines on stderr", r)
	}
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "  ") || strings.TrimSpace(l) == "" {
			t.Errorf("line %q is not indented under the first (stderr %q)", l, r.stderr)
		}
	}
	t.Logf("stderr:\n%s", r.stderr)
	if !strings.Contains(r.stderr, "has not been assigned") {
		t.Errorf("stderr %q lacks the endpoint's message", r.stderr)
	}
}

func TestIndent(t *testing.T) {
	t.Parallel()
	got := indent("DefaultAzureCredential: failed.\nAttempted credentials:\n\tEnvironmentCredential: missing\n\n  \nTo troubleshoot, visit x  \n")
	want := "DefaultAzureCredential: failed.\n  Attempted credentials:\n  \tEnvironmentCredential: missing\n  To troubleshoot, visit x"
	if got != want {
		t.Errorf("indent = %q, want %q", got, want)
	}
}

func TestCLIMessage(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("%w (the database token names no user, so entraauth asked for a Resource Manager token to find a managed identity's name; name the user with WithUser to skip this)",
		errors.New("ManagedIdentityCredential: boom"))
	for cmd, want := range map[string]string{"token": "name the user with --user to skip this", "psql": "name the user with -U (or PGUSER) to skip this"} {
		if got := cliMessage(cmd, err); !strings.Contains(got, want) || strings.Contains(got, "With") {
			t.Errorf("cliMessage(%s) = %q; want %q in it", cmd, got, want)
		}
	}
	if got := cliMessage("token", fmt.Errorf("%w: --timeout must be positive", errUsage)); got != "--timeout must be positive" {
		t.Errorf("a usage error: %q", got)
	}
}
