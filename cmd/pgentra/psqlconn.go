package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/jackc/pgservicefile"
)

// psqlConn is the connection psql will make, read the way libpq reads its
// settings: the connection string argument first, then psql's -h, -p
// and -U, then the service's settings, then the environment.
type psqlConn struct {
	args psqlArgs
	// conn is the connection string argument, parsed, or the plain
	// database name as dbname; nil without a database name argument.
	conn *connInfo
	// service is the service named by the connection string or
	// PGSERVICE, and serviceFrom where it was named; service settings
	// is nil when no service file read names it.
	service, serviceFrom string
	serviceSettings      map[string]string
	serviceFile          string
	// getenv reads the environment psql will have.
	getenv func(string) string
}

// envVars are the variables libpq reads for the settings pgentra looks at.
var envVars = map[string]string{
	"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
	"dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
}

// newPsqlConn reads psql's arguments and the service they or getenv name.
// An error is a usage error: a connection string psql would refuse too.
func newPsqlConn(pa psqlArgs, getenv func(string) string) (*psqlConn, error) {
	pc := &psqlConn{args: pa, getenv: getenv}
	switch {
	case pa.dbArg < 0:
	case isConnString(pa.db):
		c, err := parseConnInfo(pa.db)
		if err != nil {
			return nil, fmt.Errorf("%w: psql's connection string argument: %v", errUsage, err)
		}
		pc.conn = c
	case pa.db != "":
		pc.conn = &connInfo{}
		pc.conn.set("dbname", pa.db)
	}
	if s, ok := pc.conn.lookup("service"); ok && s != "" {
		pc.service, pc.serviceFrom = s, "the connection string's service="
	} else if s := getenv("PGSERVICE"); s != "" {
		pc.service, pc.serviceFrom = s, "PGSERVICE"
	}
	if pc.service != "" {
		pc.serviceFile, pc.serviceSettings = findService(pc.service, getenv)
	}
	return pc, nil
}

// lookup returns a setting as libpq resolves it, and where it came from.
func (pc *psqlConn) lookup(key string) (val, from string) {
	if v, ok := pc.conn.lookup(key); ok {
		return v, "psql's connection string argument"
	}
	opt := map[string]string{"host": pc.args.host, "port": pc.args.port, "user": pc.args.user}[key]
	if opt != "" {
		return opt, "psql's options"
	}
	if v, ok := pc.serviceSettings[key]; ok {
		return v, fmt.Sprintf("service %q in %s", pc.service, pc.serviceFile)
	}
	if env, ok := envVars[key]; ok {
		if v := pc.getenv(env); v != "" {
			return v, env
		}
	}
	return "", ""
}

// lookup on a nil connInfo finds nothing.
func (c *connInfo) lookup(key string) (string, bool) {
	if c == nil {
		return "", false
	}
	return c.get(key)
}

// findService returns the settings of the service named name and the file
// they are in, as libpq looks for them: PGSERVICEFILE (else
// ~/.pg_service.conf), then pg_service.conf in PGSYSCONFDIR (else the
// system's configuration directory). It returns nil settings when no file
// that can be read names the service.
func findService(name string, getenv func(string) string) (file string, settings map[string]string) {
	var files []string
	if f := getenv("PGSERVICEFILE"); f != "" {
		files = append(files, f)
	} else if home, err := os.UserHomeDir(); err == nil {
		files = append(files, filepath.Join(home, ".pg_service.conf"))
	}
	if d := getenv("PGSYSCONFDIR"); d != "" {
		files = append(files, filepath.Join(d, "pg_service.conf"))
	} else {
		files = append(files, sysconfServiceFiles...)
	}
	for _, f := range files {
		sf, err := pgservicefile.ReadServicefile(f)
		if err != nil {
			continue
		}
		if s, err := sf.GetService(name); err == nil {
			return f, s.Settings
		}
	}
	return "", nil
}

// sysconfServiceFiles are where packaged libpq looks for the system's
// service file when PGSYSCONFDIR is unset.
var sysconfServiceFiles = []string{
	"/etc/postgresql-common/pg_service.conf", // Debian, Ubuntu
	"/etc/sysconfig/pgsql/pg_service.conf",   // PGDG packages for Fedora, RHEL
}

// sslModes are libpq's sslmode values, weakest first.
var sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// secureSSLMode applies the rule that keeps the token off the network in
// the clear to psql's connection: sslmode=disable to a TCP host is
// refused (a usage error), allow and prefer become require, and no sslmode
// at all becomes verify-full. Other modes are kept. It changes psql's
// arguments or sets PGSSLMODE in set, whichever libpq will read, and
// returns a notice for the user when it raised a mode they chose, else "".
func (pc *psqlConn) secureSSLMode(set map[string]string) (notice string, err error) {
	mode, from := pc.lookup("sslmode")
	if from == "" && pc.getenv("PGREQUIRESSL") == "1" {
		mode, from = "require", "PGREQUIRESSL"
	}
	want := mode
	switch mode {
	case "":
		want = "verify-full"
		if from != "" {
			return "", fmt.Errorf("%w: empty sslmode (from %s); use sslmode=verify-full", errUsage, from)
		}
	case "disable":
		if pc.anyTCP() {
			return "", fmt.Errorf("%w: sslmode=disable (from %s) would send the access token in plaintext; "+
				"use sslmode=verify-full (recommended) or require", errUsage, from)
		}
	case "allow", "prefer":
		want = "require"
		notice = fmt.Sprintf("sslmode=%s (from %s) raised to require: the access token never travels without TLS", mode, from)
	case "require", "verify-ca", "verify-full":
	default:
		return "", fmt.Errorf("%w: unknown sslmode %q (from %s); want one of %s", errUsage, mode, from, strings.Join(sslModes, ", "))
	}
	// Only a setting in the connection string argument overrides a
	// service's: with a service, the mode goes there in any case, so a
	// service file pgentra could not read cannot weaken it.
	explicit := from == "psql's connection string argument"
	if !explicit && pc.service == "" {
		if want != mode {
			set["PGSSLMODE"] = want
		}
		return notice, nil
	}
	if want != mode || !explicit {
		pc.setConnString("sslmode", want)
	}
	// psql's later connections (\connect with a connection string of its
	// own) take PGSSLMODE: it holds no weak mode either.
	switch pc.getenv("PGSSLMODE") {
	case "":
		set["PGSSLMODE"] = "verify-full"
	case "disable", "allow", "prefer":
		set["PGSSLMODE"] = "require"
	}
	return notice, nil
}

// setConnString sets key in psql's connection string argument, making
// the database name argument into one, or adding one.
func (pc *psqlConn) setConnString(key, val string) {
	pa := &pc.args
	if pc.conn == nil {
		pc.conn = &connInfo{}
		if pa.dbArg < 0 && pa.list {
			pc.conn.set("dbname", "postgres") // what -l connects to without one
		}
	}
	pc.conn.set(key, val)
	if pa.dbArg < 0 {
		pa.args = append([]string{"--dbname=" + pc.conn.String()}, pa.args...)
		pa.dbArg, pa.dbOff = 0, len("--dbname=")
		return
	}
	pa.args = append([]string(nil), pa.args...)
	pa.args[pa.dbArg] = pa.args[pa.dbArg][:pa.dbOff] + pc.conn.String()
}

// anyTCP reports whether psql may connect to a host over TCP rather than
// a unix socket.
func (pc *psqlConn) anyTCP() bool {
	if addrs, _ := pc.lookup("hostaddr"); strings.Trim(addrs, ",") != "" {
		return true
	}
	hosts, _ := pc.lookup("host")
	for _, h := range strings.Split(hosts, ",") {
		switch {
		case h == "":
			if runtime.GOOS == "windows" { // libpq's default host: localhost there, a socket elsewhere
				return true
			}
		case strings.HasPrefix(h, "/"), strings.HasPrefix(h, "@"):
		default:
			return true
		}
	}
	return false
}

// namedServer is a server named the way psql names it (arguments, then
// the environment), with the variables pgentra sets on top, and the
// credential to log in with: what pgentra psql and pgentra doctor share.
type namedServer struct {
	pc *psqlConn
	// set holds the variables pgentra sets (for psql); the settings read
	// them before the process environment.
	set map[string]string
	t   *target
	// notice says how the sslmode was raised, if it was.
	notice string
}

// getenv reads a variable pgentra sets, else the environment's.
func (n *namedServer) getenv(k string) string {
	if v, ok := n.set[k]; ok {
		return v
	}
	return os.Getenv(k)
}

// resolveNamedServer reads psql's arguments and environment, resolves the
// credential and the Service Connector variables (--host, then the
// variables' host, port and database where the environment names none),
// and makes the sslmode one that never sends a token in cleartext.
func resolveNamedServer(o *options, pa psqlArgs) (*namedServer, error) {
	n := &namedServer{set: map[string]string{}}
	pc, err := newPsqlConn(pa, n.getenv)
	if err != nil {
		return nil, err
	}
	n.pc = pc
	hint, _ := pc.lookup("host")
	hint, _, _ = strings.Cut(hint, ",")
	if n.t, err = o.resolve(hint); err != nil {
		return nil, err
	}
	if o.host != "" {
		n.set["PGHOST"] = o.host
	}
	if ec := n.t.env; ec != nil {
		for k, v := range map[string]string{"PGHOST": ec.Host, "PGPORT": ec.Port, "PGDATABASE": ec.Database} {
			if v != "" && n.getenv(k) == "" {
				n.set[k] = v
			}
		}
	}
	if n.notice, err = pc.secureSSLMode(n.set); err != nil {
		return nil, err
	}
	return n, nil
}
