package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// psqlQuery are psql arguments printing current_user alone.
var psqlQuery = []string{"-X", "-A", "-t", "-c", "select current_user"}

func needPsql(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("psql"); err != nil {
		if os.Getenv("ENTRAAUTH_REQUIRE_PG") == "1" {
			t.Fatal("psql is required (ENTRAAUTH_REQUIRE_PG=1):", err)
		}
		t.Skip("psql not installed (Debian: apt-get install postgresql-client)")
	}
}

func TestPsql(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	mi := f.mi(t, identity)
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{
			name: "az credential, server from PG variables, user from the token",
			env:  childEnv(append(f.serverEnv(), pathWith(az.Dir()))...),
			args: append([]string{"psql", "--credential", "cli"}, psqlQuery...),
			want: alice.UPN,
		},
		{
			name: "managed identity, server from psql's options",
			env:  childEnv(append(miEnv(mi), "PGSSLROOTCERT="+f.srv.CAFile())...),
			args: append([]string{"psql", "--credential", "managed-identity", "--client-id", identity.ClientID, "--",
				"-h", f.srv.Host(), fmt.Sprintf("--port=%d", f.srv.Port()), "-d", "postgres"}, psqlQuery...),
			want: "cli-identity",
		},
		{
			name: "managed identity, --host and a connection string argument",
			env:  childEnv(append(miEnv(mi), "PGSSLROOTCERT="+f.srv.CAFile())...),
			args: append([]string{"psql", "--credential=managed-identity", "--client-id=" + identity.ClientID, "--host", f.srv.Host(),
				fmt.Sprintf("port=%d dbname=postgres", f.srv.Port())}, psqlQuery...),
			want: "cli-identity",
		},
		{
			name: "Service Connector variables: server, database and managed identity",
			env: childEnv(append(miEnv(mi), "PGSSLROOTCERT="+f.srv.CAFile(),
				"AZURE_POSTGRESQL_CONNECTIONSTRING="+f.srv.ConnString(), "AZURE_POSTGRESQL_CLIENTID="+identity.ClientID)...),
			args: append([]string{"psql"}, psqlQuery...),
			want: "cli-identity",
		},
		{
			name: "Service Connector variables naming the user",
			env: childEnv(append(miEnv(mi), "PGSSLROOTCERT="+f.srv.CAFile(),
				"AZURE_POSTGRESQL_CONNECTIONSTRING=postgresql://cli-identity@"+f.srv.Addr()+"/postgres?sslmode=require",
				"AZURE_POSTGRESQL_CLIENTID="+identity.ClientID)...),
			args: append([]string{"psql"}, psqlQuery...),
			want: "cli-identity",
		},
		{
			name: "PGSSLROOTCERT defaults to the system's CA bundle (here SSL_CERT_FILE)",
			env: childEnv(pathWith(az.Dir()), "HOME="+t.TempDir(), "SSL_CERT_FILE="+f.srv.CAFile(), "PGHOST="+f.srv.Host(),
				fmt.Sprintf("PGPORT=%d", f.srv.Port()), "PGDATABASE=postgres"),
			args: append([]string{"psql", "--credential", "cli"}, psqlQuery...),
			want: alice.UPN,
		},
		{
			name: "user named with -U",
			env:  childEnv(append(f.serverEnv(), pathWith(az.Dir()))...),
			args: append([]string{"psql", "--credential", "cli", "-U", alice.UPN}, psqlQuery...),
			want: alice.UPN,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := pgentra(t, tt.env, tt.args...)
			if r.code != 0 || r.stdout != tt.want+"\n" {
				t.Errorf("%+v; want %q on stdout", r, tt.want)
			}
		})
	}

	// A user the variables name is used as it is: the managed identity is
	// asked for the database token only, not for a Resource Manager token
	// to find its name.
	before := mi.Requests()
	env := childEnv(append(miEnv(mi), "PGSSLROOTCERT="+f.srv.CAFile(),
		"AZURE_POSTGRESQL_CONNECTIONSTRING="+f.srv.ConnString("user=cli-identity"), "AZURE_POSTGRESQL_CLIENTID="+identity.ClientID)...)
	if r := pgentra(t, env, append([]string{"psql"}, psqlQuery...)...); r.code != 0 || r.stdout != "cli-identity\n" {
		t.Errorf("user named by the variables: %+v", r)
	}
	if n := mi.Requests() - before; n != 1 {
		t.Errorf("the managed identity endpoint got %d requests; want 1, for the database token", n)
	}
}

func TestPsqlPassesOnExitStatusAndVerifiesTLS(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	env := childEnv(append(f.serverEnv(), pathWith(az.Dir()))...)

	r := pgentra(t, env, "psql", "--credential", "cli", "-X", "-c", "select 1/0")
	if r.code != 1 || !strings.Contains(r.stderr, "division by zero") {
		t.Errorf("a failing query: %+v; want psql's exit status 1 and its error", r)
	}

	// PGSSLMODE defaults to verify-full: the certificate's chain and host
	// name are checked. Here the host name (reached at 127.0.0.1 through
	// PGHOSTADDR) is not the certificate's, and psql refuses to connect.
	accepted := f.srv.Stats().Accepted
	misnamed := childEnv(pathWith(az.Dir()), "PGHOST=not-the-cert-name.example", "PGHOSTADDR="+f.srv.Host(),
		fmt.Sprintf("PGPORT=%d", f.srv.Port()), "PGDATABASE=postgres", "PGSSLROOTCERT="+f.srv.CAFile())
	r = pgentra(t, misnamed, append([]string{"psql", "--credential", "cli"}, psqlQuery...)...)
	if r.code != 2 || !strings.Contains(r.stderr, "does not match host name") {
		t.Errorf("with a host name not in the certificate: %+v; want psql to refuse it", r)
	}
	if got := f.srv.Stats().Accepted; got != accepted {
		t.Errorf("a login went through with a certificate for another name")
	}
	// A PGSSLMODE of the user's own is kept.
	r = pgentra(t, append(misnamed, "PGSSLMODE=verify-ca"), append([]string{"psql", "--credential", "cli"}, psqlQuery...)...)
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("with PGSSLMODE=verify-ca: %+v", r)
	}
	// And with another CA, the chain is refused.
	r = pgentra(t, append(f.serverEnv(), pathWith(az.Dir()), "PGSSLROOTCERT="+f.pg.CAFile), append([]string{"psql", "--credential", "cli"}, psqlQuery...)...)
	if r.code != 2 || !strings.Contains(r.stderr, "certificate verify failed") {
		t.Errorf("with another CA: %+v; want psql to refuse the certificate", r)
	}

	// Without psql on PATH.
	r = pgentra(t, childEnv("PATH="+az.Dir()), append([]string{"psql", "--credential", "cli"}, psqlQuery...)...)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "psql not found") {
		t.Errorf("without psql: %+v", r)
	}
}

// PGPASSWORD=$(pgentra token) psql … connects.
func TestTokenAsPGPASSWORD(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	r := pgentra(t, childEnv(pathWith(az.Dir())), "token", "--credential", "cli")
	tok := checkToken(t, f, r, "https://ossrdbms-aad.database.windows.net/.default")
	env := childEnv(append(f.serverEnv(), "PGPASSWORD="+tok, "PGSSLMODE=verify-full")...)
	r = runCmd(t, env, "psql", append([]string{"user=" + alice.UPN}, psqlQuery...)...)
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("psql with the token: %+v", r)
	}
}

// Service Connector's secret mode (as for Neon): psql gets the password.
func TestPsqlPasswordMode(t *testing.T) {
	needPsql(t)
	pg := testPG(t)
	const role, password = "cli_neondb_owner", "n30n Pa55'w"
	// The role may exist from an earlier run (go test -count) on the shared server.
	if err := pg.CreateRole(context.Background(), role, password); err != nil {
		if err := pg.SetPassword(context.Background(), role, password); err != nil {
			t.Fatal(err)
		}
	}
	env := childEnv("NEON_POSTGRESQL_CONNECTIONSTRING="+pg.ConnString(role, password), "PGSSLROOTCERT="+pg.CAFile)
	r := pgentra(t, env, append([]string{"psql", "--env-prefix", "NEON_POSTGRESQL"}, psqlQuery...)...)
	if r.code != 0 || r.stdout != role+"\n" {
		t.Errorf("%+v; want %q", r, role)
	}
	r = pgentra(t, env, "token", "--env-prefix", "NEON_POSTGRESQL")
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "password authentication") || strings.Contains(r.stderr, "Pa55") {
		t.Errorf("token in password mode: %+v", r)
	}
}

// Ctrl-C reaches psql, which cancels the running query.
func TestPsqlGetsSIGINT(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgentraBin, "psql", "--credential", "cli", "-X", "-c", "select pg_sleep(60)")
	cmd.Env = childEnv(append(f.serverEnv(), pathWith(az.Dir()))...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		var n int
		err := f.pg.Admin().QueryRow(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the query never ran; stderr: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatal("psql did not end after SIGINT")
	}
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(stderr.String(), "canceling statement due to user request") {
		t.Errorf("after SIGINT: %v, stderr %q; want psql to cancel the query and exit 1", err, stderr.String())
	}
	if f.srv.Stats().CancelsForwarded != 1 {
		t.Errorf("the server saw %d cancel requests, want 1", f.srv.Stats().CancelsForwarded)
	}
}
