package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

const psqlHelp = `Usage: pgentra psql [flags] [--] [psql arguments...]

Runs psql (found on PATH) with an access token as PGPASSWORD and, unless a
user is named (-U, --username, a second positional argument, PGUSER, or
user= in a connection string argument), PGUSER set to the user the token
maps to. PGSSLMODE defaults to verify-full; when PGSSLROOTCERT is unset and
~/.postgresql/root.crt does not exist, PGSSLROOTCERT is set to the
system's CA bundle so the server's certificate can be verified.
--host sets PGHOST. With Service Connector variables, their host, port,
database and user fill in the PG… variables that are unset. psql's exit
status is pgentra's.

Examples:
  pgentra psql -h mysrv.postgres.database.azure.com -d postgres
  pgentra psql --credential cli -h mysrv.postgres.database.azure.com -c 'select current_user'
  pgentra psql "host=mysrv.postgres.database.azure.com dbname=app"
`

// runPsql runs psql with the token.
func runPsql(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlagSet("psql", stderr, &o)
	ours, psqlArgs := splitPsqlArgs(args)
	if code, ok := parseFlags(fs, ours, psqlHelp, stdout, stderr); !ok {
		return code
	}
	pa := scanPsqlArgs(psqlArgs)
	hint := pa.host
	if hint == "" {
		hint = os.Getenv("PGHOST")
	}
	t, err := o.resolve(hint)
	if err != nil {
		return fail(stderr, "psql", err)
	}
	psqlPath, err := exec.LookPath("psql")
	if err != nil {
		return fail(stderr, "psql", fmt.Errorf("psql not found on PATH (Debian and Ubuntu: apt-get install postgresql-client): %w", err))
	}

	set := map[string]string{}
	unset := func(k string) bool { return os.Getenv(k) == "" }
	if o.host != "" {
		set["PGHOST"] = o.host
	}
	if ec := t.env; ec != nil {
		for k, v := range map[string]string{"PGHOST": ec.Host, "PGPORT": ec.Port, "PGDATABASE": ec.Database} {
			if _, ok := set[k]; !ok && v != "" && unset(k) {
				set[k] = v
			}
		}
	}
	userNamed := pa.user || !unset("PGUSER")
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
	mode := os.Getenv("PGSSLMODE")
	if mode == "" {
		mode = "verify-full"
		set["PGSSLMODE"] = mode
	}
	if strings.HasPrefix(mode, "verify-") && unset("PGSSLROOTCERT") && !userRootCertExists() {
		if bundle := systemCABundle(); bundle != "" {
			set["PGSSLROOTCERT"] = bundle
		}
	}
	return execPsql(psqlPath, psqlArgs, withEnv(os.Environ(), set), stdout, stderr)
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

// ourFlags are the flags pgentra psql takes before psql's arguments, and
// whether each takes a value.
var ourFlags = map[string]bool{
	"credential": true, "client-id": true, "tenant": true, "host": true,
	"scope": true, "env-prefix": true, "timeout": true, "help": false,
}

// splitPsqlArgs splits pgentra's leading flags from psql's arguments. Ours
// come first and end at the first argument that is not one of them, or at
// "--", which is dropped. psql's own -h is psql's; --host is ours and sets
// PGHOST, which comes to the same.
func splitPsqlArgs(args []string) (ours, rest []string) {
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			return args[:i], args[i+1:]
		}
		if !strings.HasPrefix(a, "-") || len(a) < 3 {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takesValue, ok := ourFlags[name]
		if !ok || (name == "help" && hasValue) {
			break
		}
		i++
		if takesValue && !hasValue && i < len(args) {
			i++
		}
	}
	return args[:i], args[i:]
}

// psqlInfo is what pgentra needs to know of psql's arguments.
type psqlInfo struct {
	host string // the host named by a connection string, else -h
	user bool   // a user is named
}

// psqlShortWithValue are psql's one-letter options that take a value.
const psqlShortWithValue = "cdfvLoFPRThpU"

// psqlLong are psql's long options; true for those that take a value.
var psqlLong = map[string]bool{
	"command": true, "dbname": true, "file": true, "set": true, "variable": true,
	"log-file": true, "output": true, "field-separator": true, "pset": true,
	"record-separator": true, "table-attr": true, "host": true, "port": true, "username": true,
	"list": false, "version": false, "no-psqlrc": false, "single-transaction": false, "help": false,
	"echo-all": false, "echo-errors": false, "echo-queries": false, "echo-hidden": false,
	"no-readline": false, "quiet": false, "single-step": false, "single-line": false,
	"no-align": false, "csv": false, "html": false, "tuples-only": false, "expanded": false,
	"field-separator-zero": false, "record-separator-zero": false, "no-password": false, "password": false,
}

// psqlLongOption returns the long option name abbreviates (getopt takes
// unique prefixes), or "".
func psqlLongOption(name string) string {
	if _, ok := psqlLong[name]; ok {
		return name
	}
	match := ""
	for full := range psqlLong {
		if strings.HasPrefix(full, name) {
			if match != "" {
				return ""
			}
			match = full
		}
	}
	return match
}

// scanPsqlArgs reads psql's arguments the way psql's getopt does, for the
// host and whether a user is named.
func scanPsqlArgs(args []string) psqlInfo {
	var info psqlInfo
	var hostOpt, connInfoHost string
	positional := 0
	onDBName := func(v string) {
		if h, u := connInfoParams(v); h != "" || u {
			if h != "" {
				connInfoHost = h
			}
			info.user = info.user || u
		}
	}
	onPositional := func(v string) {
		positional++
		switch positional {
		case 1:
			onDBName(v)
		case 2:
			info.user = true
		}
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			for _, p := range args[i+1:] {
				onPositional(p)
			}
			i = len(args)
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			name = psqlLongOption(name)
			if !psqlLong[name] {
				continue
			}
			if !hasVal && i+1 < len(args) {
				i++
				val = args[i]
			}
			switch name {
			case "host":
				hostOpt = val
			case "username":
				info.user = true
			case "dbname":
				onDBName(val)
			}
		case strings.HasPrefix(a, "-") && a != "-":
			for j := 1; j < len(a); j++ {
				c := a[j]
				if !strings.ContainsRune(psqlShortWithValue, rune(c)) {
					continue
				}
				val := a[j+1:]
				if val == "" && i+1 < len(args) {
					i++
					val = args[i]
				}
				switch c {
				case 'h':
					hostOpt = val
				case 'U':
					info.user = true
				case 'd':
					onDBName(val)
				}
				break
			}
		default:
			onPositional(a)
		}
	}
	info.host = connInfoHost
	if info.host == "" {
		info.host = hostOpt
	}
	return info
}

// cutScheme returns a connection URL without its scheme.
func cutScheme(s string) (string, bool) {
	if rest, ok := strings.CutPrefix(s, "postgresql://"); ok {
		return rest, true
	}
	return strings.CutPrefix(s, "postgres://")
}

var (
	connInfoHostRE = regexp.MustCompile(`(?:^|\s)host\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)
	connInfoUserRE = regexp.MustCompile(`(?:^|\s)user\s*=`)
)

// connInfoParams returns the first host a psql dbname argument names when
// it is a connection string (URL or key/value), and whether it names a
// user.
func connInfoParams(s string) (host string, user bool) {
	if rest, ok := cutScheme(s); ok {
		// As libpq reads it: [user[:password]@]host[:port][,…][/db][?k=v&…].
		if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
			user = strings.SplitN(rest[:i], ":", 2)[0] != ""
			rest = rest[i+1:]
		}
		hosts, query, _ := strings.Cut(rest, "?")
		hosts, _, _ = strings.Cut(hosts, "/")
		first, _, _ := strings.Cut(hosts, ",")
		if strings.HasPrefix(first, "[") {
			host, _, _ = strings.Cut(first[1:], "]")
		} else {
			host, _, _ = strings.Cut(first, ":")
		}
		host, _ = url.PathUnescape(host)
		if q, err := url.ParseQuery(query); err == nil {
			if h := q.Get("host"); h != "" {
				host, _, _ = strings.Cut(h, ",")
			}
			user = user || q.Get("user") != ""
		}
		return host, user
	}
	if !strings.Contains(s, "=") {
		return "", false
	}
	if m := connInfoHostRE.FindStringSubmatch(s); m != nil {
		host = m[1]
		if strings.HasPrefix(host, "'") {
			host = strings.NewReplacer(`\'`, `'`, `\\`, `\`).Replace(strings.Trim(host, "'"))
		}
		host, _, _ = strings.Cut(host, ",")
	}
	return host, connInfoUserRE.MatchString(s)
}
