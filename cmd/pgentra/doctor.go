package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"strings"
)

const doctorHelp = `Usage: pgentra doctor [flags] [--] [-h HOST] [-p PORT] [-U USER] [-d DBNAME | CONNSTRING]

Walks the chain of an Entra login to Azure Database for PostgreSQL and
prints one line per step: ✓ passed, ✗ failed (with the fix, in one
sentence), · skipped (with why) or only informative. The steps:

  credential  which credential answered (azidentity's own account of it)
  token       the token's claims that matter: principal name and type
              (user, service principal, managed identity), oid, tenant,
              audience, expiry, and the clock skew between this machine
              and the token's issue time; the token itself is never shown
  user        the database user name that will be sent, and where it
              comes from: --user, -U or the connection string, a service,
              PGUSER, the Service Connector variables, a token claim, or a
              managed identity's name (from Azure Resource Manager)
  dns         what the host resolves to: private addresses (a private
              endpoint) or public ones, and any privatelink CNAME
  tcp         whether the port accepts connections
  tls         the TLS handshake, done the PostgreSQL way: the chain the
              server presents, the root it ends at (DigiCert Global Root
              G2, Microsoft RSA Root CA 2017, or another), and whether the
              host name verifies
  login       a real login with the token, and when it fails the server's
              full error (message, detail, hint, SQLSTATE), our reading of
              it, and the SQL an Entra administrator runs to create the
              role

The server is named as for psql: -h, -p, -U, -d or a connection string
after pgentra's flags, else PGHOST, PGPORT, PGUSER, PGDATABASE, PGSSLMODE,
PGSSLROOTCERT (and PGHOSTADDR, PGSERVICE), else the Service Connector
variables. sslmode defaults to verify-full; disable is refused, allow
and prefer are raised to require, as pgentra psql does. A step that
cannot run (no token: no login) is skipped, saying why; the token is sent
only to a server whose certificate verified as the sslmode asks, and only
when it is for that server's audience. Exit status 0 when every step
passed, 1 when one failed, 2 for a usage error.

Doctor flags:
  --output FORMAT    text (default), or json: one object, {"ok", "steps":
                     [{"name", "ok", "status" (pass, fail or skip),
                     "summary", "facts": {...}, "fix"}]}, with the same
                     facts as the text
  --user NAME        the database user name to log in as (as -U)

Examples:
  pgentra doctor -h mysrv.postgres.database.azure.com -d postgres
  pgentra doctor --credential managed-identity --client-id 00000000-0000-0000-0000-000000000000 "host=mysrv.postgres.database.azure.com dbname=app"
  PGUSER=app pgentra doctor --output json
`

// doctorFlags are the flags pgentra doctor takes before the connection's
// arguments, and whether each takes a value.
var doctorFlags = func() map[string]bool {
	m := maps.Clone(ourPsqlFlags)
	m["output"], m["user"] = true, true
	m["version"] = false // pgentra's: doctor runs no psql
	return m
}()

// runDoctor diagnoses an Entra login.
func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	var output string
	fs := newFlagSet("doctor", stderr, &o)
	fs.StringVar(&output, "output", "text", "")
	fs.StringVar(&o.user, "user", "", "")
	ours, rest := splitOurFlags(args, doctorFlags)
	if code, ok := parseFlags(fs, ours, doctorHelp, stdout, stderr); !ok {
		return code
	}
	if output != "text" && output != "json" {
		return fail(stderr, "doctor", fmt.Errorf("%w: --output must be text or json, not %q", errUsage, output))
	}
	d, err := newDoctor(&o, rest)
	if err != nil {
		return fail(stderr, "doctor", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	rep := d.run(ctx)
	if output == "json" {
		err = json.NewEncoder(stdout).Encode(rep)
	} else {
		err = rep.writeText(stdout)
	}
	if err != nil {
		return fail(stderr, "doctor", err)
	}
	if !rep.OK {
		return exitFail
	}
	return exitOK
}

// doctor is one diagnosis: what the flags, arguments and environment name.
type doctor struct {
	o *options
	t *target
	// host is the server's host name (or address), hostaddr the address
	// to connect to instead of resolving host (libpq's hostaddr), port
	// its port, dbname the database ("" for the user name's).
	host, hostaddr string
	port           uint16
	dbname         string
	// user is the user name named before any token ("" when the token
	// names it), and userFrom where it was named.
	user, userFrom string
	// sslmode is the mode the connection uses (require, verify-ca or
	// verify-full), rootCert the sslrootcert file ("" or "system" for the
	// system's roots).
	sslmode, rootCert string
	notices           []string
	// authLines are azidentity's authentication log lines.
	authLines *authLog
}

// newDoctor reads the connection the way pgentra psql does and resolves
// the credential. Its errors are the user's to fix before anything runs.
func newDoctor(o *options, args []string) (*doctor, error) {
	pa := scanPsqlArgs(args, os.Getenv("POSIXLY_CORRECT") != "")
	if pa.infoOnly {
		return nil, fmt.Errorf("%w: -V and -? are psql's; run \"pgentra doctor --help\"", errUsage)
	}
	d := &doctor{o: o, authLines: listenAuthLog()}
	// The credential is built while listening: a managed identity
	// credential says at construction which endpoint it will use.
	n, err := resolveNamedServer(o, pa)
	if err != nil {
		d.authLines.stop()
		return nil, err
	}
	if n.t.ts == nil {
		d.authLines.stop()
		return nil, n.t.passwordModeError()
	}
	d.t = n.t
	pc := n.pc
	if n.notice != "" {
		d.notices = append(d.notices, n.notice)
	}
	if err := d.readConn(pc); err != nil {
		d.authLines.stop()
		return nil, err
	}
	return d, nil
}

// readConn fills in the server, user and TLS settings from pc.
func (d *doctor) readConn(pc *psqlConn) error {
	hosts, _ := pc.lookup("host")
	d.host, _, _ = strings.Cut(hosts, ",")
	if strings.Contains(hosts, ",") {
		d.notices = append(d.notices, fmt.Sprintf("several hosts named (%s): checking the first, %s", hosts, d.host))
	}
	addrs, _ := pc.lookup("hostaddr")
	d.hostaddr, _, _ = strings.Cut(addrs, ",")
	switch {
	case d.host == "" && d.hostaddr != "":
		d.host = d.hostaddr
	case d.host == "":
		return fmt.Errorf("%w: no server named: give it with -h HOST, --host, PGHOST, a connection string or the Service Connector variables", errUsage)
	case strings.HasPrefix(d.host, "/") || strings.HasPrefix(d.host, "@"):
		return fmt.Errorf("%w: host %q is a unix socket directory; pgentra doctor checks a server reached over TCP with TLS", errUsage, d.host)
	}
	ports, _ := pc.lookup("port")
	port, _, _ := strings.Cut(ports, ",")
	d.port = 5432
	if port != "" {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("%w: invalid port %q", errUsage, port)
		}
		d.port = uint16(p)
	}
	d.dbname, _ = pc.lookup("dbname")
	var from string
	switch {
	case d.o.user != "":
		d.user, d.userFrom = d.o.user, "--user"
	default:
		if d.user, from = pc.lookup("user"); d.user != "" {
			d.userFrom = map[string]string{
				"psql's options":                    "-U",
				"psql's connection string argument": "the connection string",
			}[from]
			if d.userFrom == "" {
				d.userFrom = from
			}
		} else if d.t.env != nil && d.t.env.User != "" {
			d.user, d.userFrom = d.t.env.User, fmt.Sprintf("the Service Connector variables (%s_…)", d.t.env.Prefix)
		}
	}
	d.sslmode, _ = pc.lookup("sslmode")
	if d.sslmode == "" {
		d.sslmode = "require" // PGREQUIRESSL=1, the one way secureSSLMode leaves it unset over TCP
	}
	d.rootCert, _ = pc.lookup("sslrootcert")
	if d.rootCert == "" && userRootCertExists() {
		home, _ := os.UserHomeDir()
		d.rootCert = home + "/.postgresql/root.crt"
	}
	return nil
}

// run runs the steps in order, each one that can.
func (d *doctor) run(ctx context.Context) *report {
	rep := &report{Notices: d.notices}
	cred, tok := d.credentialStep(ctx)
	rep.add(cred)
	tokStep, info := d.tokenStep(tok)
	rep.add(tokStep)
	var typ string
	if info != nil {
		typ = info.Type
	}
	userStep, user := d.userStep(ctx, tok, info)
	rep.add(userStep)
	if info != nil && info.Type != typ {
		// Finding a managed identity's name tells its type, which its
		// database token does not.
		tokStep.Summary = strings.Replace(tokStep.Summary, typ, info.Type, 1)
		tokStep.setFact("type", info.Type)
	}
	dns := d.dnsStep(ctx)
	rep.add(dns)
	tcp := d.tcpStep(ctx, dns)
	rep.add(tcp)
	tlsStep := d.tlsStep(ctx, tcp)
	rep.add(tlsStep)
	rep.add(d.loginStep(ctx, tok, info, user, rep))
	return rep
}

// Step statuses.
const (
	statusPass = "pass"
	statusFail = "fail"
	statusSkip = "skip"
)

// step is one line of the diagnosis.
type step struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Status  string `json:"status"`
	Summary string `json:"summary"`
	Facts   facts  `json:"facts"`
	Fix     string `json:"fix,omitempty"`
}

// fact is one thing a step found.
type fact struct{ key, val string }

// facts keep their order, in the text and in JSON.
type facts []fact

// MarshalJSON writes facts as one object, in order.
func (fs facts) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		k, err := json.Marshal(f.key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.val)
		if err != nil {
			return nil, err
		}
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}

func (s *step) fact(key, val string) *step {
	if val != "" {
		s.Facts = append(s.Facts, fact{key, val})
	}
	return s
}

// setFact replaces the value of the fact key.
func (s *step) setFact(key, val string) {
	for i := range s.Facts {
		if s.Facts[i].key == key {
			s.Facts[i].val = val
		}
	}
}

func passed(name, summary string) *step {
	return &step{Name: name, OK: true, Status: statusPass, Summary: summary}
}

func failed(name, summary, fix string) *step {
	return &step{Name: name, Status: statusFail, Summary: summary, Fix: fix}
}

func skipped(name, why string) *step {
	return &step{Name: name, OK: true, Status: statusSkip, Summary: why}
}

// report is the whole diagnosis.
type report struct {
	OK      bool     `json:"ok"`
	Notices []string `json:"notices,omitempty"`
	Steps   []*step  `json:"steps"`
}

func (r *report) add(s *step) {
	r.Steps = append(r.Steps, s)
	r.OK = true
	for _, s := range r.Steps {
		r.OK = r.OK && s.OK
	}
}

// step returns the step named name, or nil.
func (r *report) step(name string) *step {
	for _, s := range r.Steps {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// failedSteps returns the names of the steps that failed.
func (r *report) failedSteps() []string {
	var names []string
	for _, s := range r.Steps {
		if s.Status == statusFail {
			names = append(names, s.Name)
		}
	}
	return names
}

// marks are the text output's step markers.
var marks = map[string]string{statusPass: "✓", statusFail: "✗", statusSkip: "·"}

// writeText prints the report for people: a line per step, its facts
// indented under it, the fix last.
func (r *report) writeText(w io.Writer) error {
	var b strings.Builder
	for _, n := range r.Notices {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	for _, s := range r.Steps {
		fmt.Fprintf(&b, "%s %-10s %s\n", marks[s.Status], s.Name, s.Summary)
		for _, f := range s.Facts {
			fmt.Fprintf(&b, "    %s: %s\n", f.key, indentUnder(f.val, "      "))
		}
		if s.Fix != "" {
			fmt.Fprintf(&b, "    fix: %s\n", s.Fix)
		}
	}
	if failedSteps := r.failedSteps(); len(failedSteps) > 0 {
		fmt.Fprintf(&b, "%d step(s) failed: %s\n", len(failedSteps), strings.Join(failedSteps, ", "))
	} else {
		b.WriteString("every step passed\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// indentUnder indents the lines of v after the first by prefix, dropping
// blank ones.
func indentUnder(v, prefix string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(v), "\n") {
		if l = strings.TrimRight(l, " \t\r"); strings.TrimSpace(l) != "" {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return strings.Join(lines, "\n"+prefix)
}
