package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

const psqlHelp = `Usage: pgentra psql [pgentra flags] [--] [psql arguments...]

Runs psql (found on PATH) with an access token as PGPASSWORD and, unless a
user is named (-U, a second positional argument, user= in a connection
string argument, the service file, or PGUSER), PGUSER set to the user the
token maps to. psql's exit status is pgentra's.

The token never travels without TLS, however the sslmode is given (a
connection string or URL argument, a service, PGSSLMODE): sslmode=disable
is refused, allow and prefer are raised to require, and no sslmode at all
means verify-full. PGSSLMODE, which psql's \connect with a connection
string of its own reads, is left no weaker than require either. For
verify-ca and verify-full, when neither sslrootcert nor PGSSLROOTCERT is
set and ~/.postgresql/root.crt does not exist, PGSSLROOTCERT is set to the
system's CA bundle, which holds the roots Azure's server certificates
chain to. When psql cannot verify the server ("certificate verify
failed", or a host name not in the certificate, as when connecting by IP
address), give the CA with sslrootcert= or PGSSLROOTCERT, connect by the
certificate's host name, or ask for sslmode=require if you really want no
verification.

--host sets PGHOST. With Service Connector variables, their host, port,
database and user fill in the PG… variables that are unset. psql's -V,
--version and --help run psql without getting a token.

Examples:
  pgentra psql -h mysrv.postgres.database.azure.com -d postgres
  pgentra psql --credential cli -h mysrv.postgres.database.azure.com -c 'select current_user'
  pgentra psql "host=mysrv.postgres.database.azure.com dbname=app"
  pgentra psql "postgresql://mysrv.postgres.database.azure.com/app?sslmode=verify-full"
`

// runPsql runs psql with the token.
func runPsql(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlagSet("psql", stderr, &o)
	ours, rest := splitPsqlArgs(args)
	if code, ok := parseFlags(fs, ours, psqlHelp, stdout, stderr); !ok {
		if code == exitOK { // --help: psql's own options follow ours
			if psqlPath, err := exec.LookPath("psql"); err == nil {
				fmt.Fprint(stdout, "\npsql's own options (psql --help):\n\n")
				return execPsql(psqlPath, []string{"--help"}, os.Environ(), stdout, stderr)
			}
		}
		return code
	}
	pa := scanPsqlArgs(rest, os.Getenv("POSIXLY_CORRECT") != "")
	psqlPath, err := exec.LookPath("psql")
	if err != nil {
		return fail(stderr, "psql", fmt.Errorf("psql not found on PATH (Debian and Ubuntu: apt-get install postgresql-client): %w", err))
	}
	if pa.infoOnly { // psql prints its version or help and connects nowhere
		return execPsql(psqlPath, pa.args, os.Environ(), stdout, stderr)
	}

	n, err := resolveNamedServer(&o, pa)
	if err != nil {
		return fail(stderr, "psql", err)
	}
	pc, t, set := n.pc, n.t, n.set
	if n.notice != "" {
		fmt.Fprintf(stderr, "pgentra psql: %s\n", n.notice)
	}
	mode, _ := pc.lookup("sslmode")
	if rootCert, _ := pc.lookup("sslrootcert"); strings.HasPrefix(mode, "verify-") && rootCert == "" && !userRootCertExists() {
		if bundle := systemCABundle(); bundle != "" {
			set["PGSSLROOTCERT"] = bundle
		}
	}

	user, _ := pc.lookup("user")
	userNamed := user != ""
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	switch {
	case t.ts == nil: // Service Connector's password mode
		cfg, err := pgconn.ParseConfig(t.env.ConnString)
		if err != nil {
			return fail(stderr, "psql", errors.New("the Service Connector connection string cannot be parsed"))
		}
		set["PGPASSWORD"] = cfg.Password
		if !userNamed && t.env.User != "" {
			set["PGUSER"] = t.env.User
		}
	case userNamed || t.env != nil && t.env.User != "":
		tok, err := t.ts.Token(ctx)
		if err != nil {
			return fail(stderr, "psql", err)
		}
		if err := checkJWT(tok.Value); err != nil {
			return fail(stderr, "psql", err)
		}
		set["PGPASSWORD"] = tok.Value
		if !userNamed {
			set["PGUSER"] = t.env.User
		}
	default:
		token, user, err := t.tokenAndUser(ctx)
		if err != nil {
			return fail(stderr, "psql", err)
		}
		set["PGPASSWORD"], set["PGUSER"] = token, user
	}
	return execPsql(psqlPath, pc.args.args, withEnv(os.Environ(), set), stdout, stderr)
}

// withEnv returns env with the variables in set replaced or added.
func withEnv(env []string, set map[string]string) []string {
	out := make([]string, 0, len(env)+len(set))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

// userRootCertExists reports whether libpq's default root certificate
// file, ~/.postgresql/root.crt, exists.
func userRootCertExists() bool {
	home, err := os.UserHomeDir()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(home, ".postgresql", "root.crt"))
	return err == nil
}

// caBundles are where systems keep their CA bundle. libpq 16 and newer
// also take sslrootcert=system; older ones need a file.
var caBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, Arch
	"/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
	"/etc/ssl/ca-bundle.pem",             // openSUSE
	"/etc/ssl/cert.pem",                  // macOS, Alpine, BSDs
}

// systemCABundle returns SSL_CERT_FILE or the first CA bundle that exists.
func systemCABundle() string {
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		return f
	}
	for _, f := range caBundles {
		if _, err := os.Stat(f); err == nil {
			return f
		}
	}
	return ""
}
