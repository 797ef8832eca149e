package entraauth

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// DefaultEnvPrefix is the prefix of the variables Azure Service Connector
// sets for Azure Database for PostgreSQL. LoadEnv("") reads it.
const DefaultEnvPrefix = "AZURE_POSTGRESQL"

// ErrEnv is wrapped by every *EnvError: the Service Connector environment
// variables are missing, malformed or contradict each other.
var ErrEnv = errors.New("entraauth: invalid Service Connector environment")

// EnvError names the environment variable that is missing, malformed or
// contradicts another. errors.Is(err, ErrEnv) reports it. It never contains
// the value of a secret (a password, a client secret, or a connection
// string, which may hold a password).
type EnvError struct {
	// Var is the variable at fault, such as "AZURE_POSTGRESQL_TENANTID".
	Var string
	// Reason says what is wrong and how to fix it.
	Reason string
	// Err is the underlying error, if any. It never holds a secret.
	Err error
}

// Error describes the problem; it never contains a secret.
func (e *EnvError) Error() string {
	msg := "entraauth: " + e.Var + " " + e.Reason
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is reports whether target is ErrEnv.
func (e *EnvError) Is(target error) bool { return target == ErrEnv }

// Unwrap returns the underlying error, if any.
func (e *EnvError) Unwrap() error { return e.Err }

// EnvConfig is a database configuration read from Service Connector's
// environment variables by LoadEnv: a pgx connection string, and either a
// credential for Entra tokens or, in password mode, nothing more.
//
// Printing an EnvConfig with fmt or slog shows the connection string with
// any password replaced by [REDACTED], and the credential's kind only.
type EnvConfig struct {
	// Prefix is the variables' prefix, such as "AZURE_POSTGRESQL".
	Prefix string
	// ConnString is the connection string for pgx (pgxpool.ParseConfig,
	// pgx.ParseConfig), in key/value form whatever form the environment
	// used. It never holds a token; in password mode it holds the password.
	ConnString string
	// Host, Port, Database and User are the settings ConnString holds, ""
	// when the environment names none (pgx and libpq then use their
	// defaults and the PG… variables). Host may list several hosts,
	// comma-separated; the first one picks the cloud (see ScopeForHost).
	Host, Port, Database, User string
	// Credential gets the Entra tokens; it is nil in password mode.
	Credential azcore.TokenCredential
	// CredentialKind says which credential was chosen and why:
	// "default" (DefaultAzureCredential: no client ID set),
	// "managed-identity (client id …)", "service-principal (client id …,
	// tenant …)", or "password" (no credential).
	CredentialKind string
	// PasswordAuth is true in Service Connector's secret mode: the
	// connection string (or <prefix>_PASSWORD) holds a password, which is
	// used as it is, with no token.
	PasswordAuth bool

	// source names the variables the settings came from, for errors.
	source string
}

// String describes the configuration with any password redacted.
func (c EnvConfig) String() string {
	return fmt.Sprintf("entraauth.EnvConfig{Prefix:%s ConnString:%q Credential:%s}",
		c.Prefix, redactConnString(c.ConnString), c.CredentialKind)
}

// Format prints the configuration as String does, whatever the verb, so
// fmt never prints the password or the credential's internals.
func (c EnvConfig) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue logs the configuration with any password redacted.
func (c EnvConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("prefix", c.Prefix),
		slog.String("conn_string", redactConnString(c.ConnString)),
		slog.String("credential", c.CredentialKind),
	)
}

// LoadEnv reads the database configuration Azure Service Connector puts in
// the environment, with the given variable prefix ("" means
// DefaultEnvPrefix, AZURE_POSTGRESQL; Neon's is NEON_POSTGRESQL), and
// chooses a credential:
//
//   - <prefix>_CONNECTIONSTRING: the connection string, in libpq key/value
//     form (host=… dbname=… sslmode=require user=…), URL form
//     (postgresql://…, also jdbc:postgresql://…), or the .NET form
//     (Server=…;Database=…;Port=…;Ssl Mode=Require;User Id=…).
//   - or its parts, as Service Connector sets them for Node.js and Django:
//     <prefix>_HOST, _PORT, _DATABASE (or _NAME), _USER (or _USERNAME),
//     _PASSWORD, and _SSL (true or false) or _SSLMODE. A part set next to a
//     connection string fills in what the string lacks and must agree with
//     what it has.
//   - <prefix>_CLIENTID alone: a user-assigned managed identity
//     (azidentity.ManagedIdentityCredential with that client ID).
//   - <prefix>_CLIENTID, <prefix>_CLIENTSECRET and <prefix>_TENANTID: a
//     service principal (azidentity.ClientSecretCredential).
//   - none of these: azidentity.DefaultAzureCredential.
//   - a password in the connection string or <prefix>_PASSWORD: password
//     authentication (Service Connector's secret mode, as with Neon), with
//     no credential and no token.
//
// An empty variable counts as unset. A missing, malformed or contradictory
// variable is reported as an *EnvError naming it (wrapping ErrEnv), which
// never shows a secret. The sslmode is kept as the environment gives it:
// Service Connector writes sslmode=require, which encrypts but does not
// verify the server; write sslmode=verify-full into the variable to verify
// it (Azure's certificates chain to roots in the system pool).
func LoadEnv(prefix string) (*EnvConfig, error) {
	return loadEnv(prefix, os.LookupEnv)
}

// NewPoolFromEnv returns a pgx pool configured by LoadEnv(prefix). With a
// credential, every connection authenticates with an Entra token from a
// TokenSource made with opts (as Hook does). In password mode the password
// is used and opts have no effect, except that an invalid option is still
// reported and WithRequireVerifiedTLS still refuses an unverified
// connection. Like pgxpool.New, it does not connect: Ping the pool to
// check the configuration. Close the pool when done.
func NewPoolFromEnv(ctx context.Context, prefix string, opts ...Option) (*pgxpool.Pool, error) {
	ec, set, err := loadEnvWithOptions(prefix, opts)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(ec.ConnString)
	if err != nil {
		return nil, ec.parseError(func(s string) error { _, err := pgxpool.ParseConfig(s); return err })
	}
	if ec.PasswordAuth {
		if err := checkPasswordTransport(set, cfg.ConnConfig); err != nil {
			return nil, err
		}
	} else {
		cfg.BeforeConnect = NewTokenSource(ec.Credential, opts...).BeforeConnect
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// OpenDBFromEnv returns a database/sql handle configured by LoadEnv(prefix),
// with the pgx driver. With a credential, every connection authenticates
// with an Entra token from a TokenSource made with opts (as Connector
// does). In password mode the password is used and opts have no effect,
// except that an invalid option is still reported and
// WithRequireVerifiedTLS still refuses an unverified connection. Like
// sql.Open, it does not connect: PingContext checks the configuration.
// Close the handle when done.
func OpenDBFromEnv(prefix string, opts ...Option) (*sql.DB, error) {
	ec, set, err := loadEnvWithOptions(prefix, opts)
	if err != nil {
		return nil, err
	}
	if !ec.PasswordAuth {
		return sql.OpenDB(NewTokenSource(ec.Credential, opts...).Connector(ec.ConnString)), nil
	}
	cfg, err := pgx.ParseConfig(ec.ConnString)
	if err != nil {
		return nil, ec.parseError(parsePgconn)
	}
	if err := checkPasswordTransport(set, cfg); err != nil {
		return nil, err
	}
	return sql.OpenDB(stdlib.GetConnector(*cfg)), nil
}

// loadEnvWithOptions checks opts, then loads the environment.
func loadEnvWithOptions(prefix string, opts []Option) (*EnvConfig, settings, error) {
	set := newSettings(opts)
	if set.err != nil {
		return nil, set, set.err
	}
	ec, err := LoadEnv(prefix)
	return ec, set, err
}

// checkPasswordTransport applies WithRequireVerifiedTLS to a password-mode
// connection: every host pgx may try must be a unix socket or verified TLS.
func checkPasswordTransport(set settings, cfg *pgx.ConnConfig) error {
	if !set.requireVerified {
		return nil
	}
	ts := &TokenSource{set: set} // only its transport rules are used
	ok := ts.transportOK(cfg.Host, cfg.TLSConfig)
	for _, fb := range cfg.Fallbacks {
		ok = ok && ts.transportOK(fb.Host, fb.TLSConfig)
	}
	if !ok {
		return ts.insecureTransportError(cfg)
	}
	return nil
}

// The variables LoadEnv reads, after the prefix and "_".
const (
	envConnString   = "CONNECTIONSTRING"
	envHost         = "HOST"
	envPort         = "PORT"
	envDatabase     = "DATABASE"
	envName         = "NAME"
	envUser         = "USER"
	envUsername     = "USERNAME"
	envPassword     = "PASSWORD"
	envSSL          = "SSL"
	envSSLMode      = "SSLMODE"
	envClientID     = "CLIENTID"
	envClientSecret = "CLIENTSECRET"
	envTenantID     = "TENANTID"
)

// secretKeys are the connection settings whose values are never shown.
var secretKeys = map[string]bool{"password": true, "sslpassword": true}

// env reads one prefix's variables; empty values count as unset.
type env struct {
	prefix string
	lookup func(string) (string, bool)
}

func (e env) name(suffix string) string { return e.prefix + "_" + suffix }

func (e env) get(suffix string) string {
	v, _ := e.lookup(e.name(suffix))
	return v
}

func (e env) errorf(suffix, format string, args ...any) *EnvError {
	return &EnvError{Var: e.name(suffix), Reason: fmt.Sprintf(format, args...)}
}

// loadEnv is LoadEnv with the environment passed in, for tests.
func loadEnv(prefix string, lookup func(string) (string, bool)) (*EnvConfig, error) {
	prefix = strings.TrimSuffix(prefix, "_")
	if prefix == "" {
		prefix = DefaultEnvPrefix
	}
	e := env{prefix: prefix, lookup: lookup}
	p, err := e.connParams()
	if err != nil {
		return nil, err
	}
	ec := &EnvConfig{
		Prefix:       prefix,
		ConnString:   p.String(false),
		Host:         p.get("host"),
		Port:         p.get("port"),
		Database:     p.get("dbname"),
		User:         p.get("user"),
		PasswordAuth: p.get("password") != "",
		source:       p.source,
	}
	if ec.source == "" {
		ec.source = e.name(envHost)
	}
	// Let pgx check what it will parse later, so a bad setting is reported
	// now and named.
	if err := parsePgconn(ec.ConnString); err != nil {
		return nil, ec.parseError(parsePgconn)
	}
	if ec.Credential, ec.CredentialKind, err = e.credential(ec.PasswordAuth); err != nil {
		return nil, err
	}
	return ec, nil
}

func parsePgconn(s string) error {
	_, err := pgconn.ParseConfig(s)
	return err
}

// parseError reports that parse (pgx) cannot parse the connection string.
// pgx's errors quote the string, so the redacted string is parsed again
// for an error safe to show.
func (c *EnvConfig) parseError(parse func(string) error) error {
	err := parse(redactConnString(c.ConnString))
	if err == nil {
		err = errors.New("pgx rejected it (details not shown: they would show a secret)")
	}
	return &EnvError{Var: c.source, Reason: "gives settings pgx cannot use", Err: err}
}

// credential chooses the credential from the CLIENTID, CLIENTSECRET and
// TENANTID variables.
func (e env) credential(passwordAuth bool) (azcore.TokenCredential, string, error) {
	id, secret, tenant := e.get(envClientID), e.get(envClientSecret), e.get(envTenantID)
	if passwordAuth {
		for _, v := range []struct{ suffix, val string }{{envClientID, id}, {envClientSecret, secret}, {envTenantID, tenant}} {
			if v.val != "" {
				return nil, "", e.errorf(v.suffix, "is set, but the connection settings hold a password: "+
					"a connection authenticates with a password or with an Entra token, not both; unset one")
			}
		}
		return nil, "password", nil
	}
	switch {
	case secret != "" || tenant != "":
		missing := ""
		switch {
		case id == "":
			missing = envClientID
		case secret == "":
			missing = envClientSecret
		case tenant == "":
			missing = envTenantID
		}
		if missing != "" {
			return nil, "", e.errorf(missing, "is not set: a service principal needs %s, %s and %s",
				e.name(envClientID), e.name(envClientSecret), e.name(envTenantID))
		}
		cred, err := azidentity.NewClientSecretCredential(tenant, id, secret, nil)
		if err != nil {
			// azidentity checks the tenant ID's characters; nothing else here can fail.
			return nil, "", &EnvError{Var: e.name(envTenantID), Reason: "does not make a service principal credential",
				Err: scrub(err, secret)}
		}
		return cred, fmt.Sprintf("service-principal (client id %s, tenant %s)", id, tenant), nil
	case id != "":
		cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(id)})
		if err != nil {
			return nil, "", &EnvError{Var: e.name(envClientID), Reason: "does not make a managed identity credential", Err: err}
		}
		return cred, fmt.Sprintf("managed-identity (client id %s)", id), nil
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, "", &EnvError{Var: e.name(envClientID), Reason: "is not set, and DefaultAzureCredential cannot be made", Err: err}
	}
	return cred, "default", nil
}

// scrub replaces secret in err's message, in case a library quoted it.
func scrub(err error, secret string) error {
	if secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), secret, "[REDACTED]"))
}

// connParams reads the connection string and its parts and merges them.
func (e env) connParams() (*params, error) {
	cs := e.get(envConnString)
	p := &params{}
	if cs != "" {
		var err error
		if p, err = parseConnString(cs); err != nil {
			return nil, &EnvError{Var: e.name(envConnString), Reason: "cannot be parsed", Err: err}
		}
		p.source = e.name(envConnString)
	} else if e.get(envHost) == "" {
		return nil, e.errorf(envConnString, "is not set, nor is %s: Service Connector sets one of them; "+
			"set %s to a connection string such as \"host=myserver.postgres.database.azure.com dbname=app sslmode=verify-full\"",
			e.name(envHost), e.name(envConnString))
	}
	for _, part := range []struct {
		key      string
		suffixes []string
		secret   bool
		norm     func(suffix, v string) (string, error)
	}{
		{key: "host", suffixes: []string{envHost}},
		{key: "port", suffixes: []string{envPort}, norm: e.port},
		{key: "dbname", suffixes: []string{envDatabase, envName}},
		{key: "user", suffixes: []string{envUser, envUsername}},
		{key: "password", suffixes: []string{envPassword}, secret: true},
		{key: "sslmode", suffixes: []string{envSSL, envSSLMode}, norm: e.sslMode},
	} {
		for _, suffix := range part.suffixes {
			v := e.get(suffix)
			if v == "" {
				continue
			}
			if part.norm != nil {
				var err error
				if v, err = part.norm(suffix, v); err != nil {
					return nil, err
				}
			}
			if strings.IndexByte(v, 0) >= 0 {
				return nil, e.errorf(suffix, "contains a NUL byte")
			}
			have, from, ok := p.lookup(part.key)
			switch {
			case !ok:
				p.set(part.key, v, e.name(suffix))
			case same(part.key, have, v):
			case part.secret:
				return nil, e.errorf(suffix, "disagrees with the %s in %s; set it in one place", part.key, from)
			default:
				return nil, e.errorf(suffix, "is %q, which disagrees with the %s in %s; set it in one place", v, part.key, from)
			}
		}
	}
	for _, k := range p.keys {
		if strings.IndexByte(p.vals[k], 0) >= 0 {
			return nil, e.errorf(envConnString, "has a NUL byte in the value of %s", k)
		}
	}
	p.drop("password", "") // an empty password is no password
	return p, nil
}

// same reports whether two values of a setting agree.
func same(key, a, b string) bool {
	if key == "host" {
		return strings.EqualFold(a, b)
	}
	return a == b
}

// port checks a port variable.
func (e env) port(suffix, v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return "", e.errorf(suffix, "is %q, not a port number", v)
	}
	return v, nil
}

// sslMode turns _SSL's true/false or _SSLMODE's mode into an sslmode.
func (e env) sslMode(suffix, v string) (string, error) {
	m, err := normSSLMode(v, suffix == envSSL)
	if err != nil {
		return "", e.errorf(suffix, "is %q; %v", v, err)
	}
	return m, nil
}

// normSSLMode returns the libpq sslmode for v, a mode in libpq's or
// Npgsql's spelling or, when bools is set, a boolean (true: require).
func normSSLMode(v string, bools bool) (string, error) {
	l := strings.ToLower(strings.TrimSpace(v))
	if bools {
		switch l {
		case "true", "1", "yes", "on":
			return "require", nil
		case "false", "0", "no", "off":
			return "disable", nil
		}
	}
	switch strings.ReplaceAll(l, "-", "") {
	case "disable", "allow", "prefer", "require":
		return l, nil
	case "verifyca":
		return "verify-ca", nil
	case "verifyfull":
		return "verify-full", nil
	}
	if bools {
		return "", errors.New("want true or false, or an sslmode such as verify-full")
	}
	return "", errors.New("want disable, allow, prefer, require, verify-ca or verify-full")
}

// params are connection settings in order, with libpq's key names, and
// where they came from.
type params struct {
	keys   []string
	vals   map[string]string
	from   map[string]string // key → variable, when not the source
	source string            // the variable most keys came from
}

func (p *params) get(key string) string { return p.vals[key] }

func (p *params) lookup(key string) (val, from string, ok bool) {
	val, ok = p.vals[key]
	from = p.from[key]
	if from == "" {
		from = p.source
	}
	return val, from, ok
}

// set adds or replaces a setting; a later setting of a key wins, as in pgx.
func (p *params) set(key, val, from string) {
	if p.vals == nil {
		p.vals, p.from = map[string]string{}, map[string]string{}
	}
	if _, ok := p.vals[key]; !ok {
		p.keys = append(p.keys, key)
	}
	p.vals[key] = val
	if from != "" {
		p.from[key] = from
	}
}

// drop removes key if its value is val.
func (p *params) drop(key, val string) {
	if v, ok := p.vals[key]; !ok || v != val {
		return
	}
	delete(p.vals, key)
	for i, k := range p.keys {
		if k == key {
			p.keys = append(p.keys[:i], p.keys[i+1:]...)
			break
		}
	}
}

// leadingKeys come first in a connection string, in this order.
var leadingKeys = []string{"host", "port", "dbname", "user", "password", "sslmode"}

// String returns the settings in key/value form, with secret values
// replaced by [REDACTED] when redact is set.
func (p *params) String(redact bool) string {
	var b strings.Builder
	write := func(k string) {
		v, ok := p.vals[k]
		if !ok {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if redact && secretKeys[k] {
			v = "[REDACTED]"
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteValue(v))
	}
	for _, k := range leadingKeys {
		write(k)
	}
	for _, k := range p.keys {
		if !contains(leadingKeys, k) {
			write(k)
		}
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// quoteValue quotes a key/value connection string value when it needs it.
func quoteValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// redactConnString returns a key/value connection string with secret
// values replaced by [REDACTED], or a placeholder if it cannot be parsed.
func redactConnString(s string) string {
	if s == "" {
		return ""
	}
	p, err := parseConnString(s)
	if err != nil {
		return "[unparsable connection string not shown]"
	}
	return p.String(true)
}

// parseConnString parses a connection string in URL, .NET or key/value
// form. Its errors say where, never what: the string may hold a password.
func parseConnString(s string) (*params, error) {
	switch {
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		return parseURL(s)
	case strings.HasPrefix(s, "jdbc:postgresql://"):
		return parseURL(strings.TrimPrefix(s, "jdbc:"))
	case isDotNetForm(s):
		return parseDotNet(s)
	}
	return parseKeyValue(s)
}

const spaces = " \t\n\r\v\f"

// parseKeyValue parses libpq's key/value form as pgx does.
func parseKeyValue(s string) (*params, error) {
	p := &params{}
	orig := len(s)
	s = strings.TrimLeft(s, spaces)
	for len(s) > 0 {
		at := orig - len(s)
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, fmt.Errorf("missing \"=\" after a keyword at byte %d", at)
		}
		key := strings.Trim(s[:eq], spaces)
		if key == "" || strings.ContainsAny(key, spaces) {
			return nil, fmt.Errorf("malformed keyword at byte %d", at)
		}
		s = strings.TrimLeft(s[eq+1:], spaces)
		var val string
		if len(s) > 0 && s[0] == '\'' {
			end, ok := scanQuoted(s[1:])
			if !ok {
				return nil, fmt.Errorf("unterminated quoted value after byte %d", at)
			}
			val, s = unescape(s[1:1+end]), s[end+2:]
		} else {
			end := 0
			for end < len(s) && !strings.ContainsRune(spaces, rune(s[end])) {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			end = min(end, len(s))
			val, s = unescape(s[:end]), s[end:]
		}
		s = strings.TrimLeft(s, spaces)
		if key == "database" {
			key = "dbname"
		}
		if key == "user" && val == "" {
			continue // pgx ignores an empty user
		}
		p.set(key, val, "")
	}
	return p, nil
}

// scanQuoted returns the index of the closing quote of a single-quoted
// value whose opening quote is gone, skipping backslash escapes.
func scanQuoted(s string) (int, bool) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '\'':
			return i, true
		}
	}
	return 0, false
}

// unescape removes backslash escapes.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseURL parses postgres:// and postgresql:// URLs as libpq does: the
// user information ends at the first "@", hosts are comma-separated, and
// query parameters are settings.
func parseURL(s string) (*params, error) {
	p := &params{}
	rest := s[strings.Index(s, "://")+3:]
	decode := func(v, what string) (string, error) {
		d, err := url.PathUnescape(v)
		if err != nil {
			return "", fmt.Errorf("bad percent-encoding in the %s", what)
		}
		return d, nil
	}
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		user, password, hasPassword := strings.Cut(rest[:i], ":")
		rest = rest[i+1:]
		if user != "" {
			u, err := decode(user, "user name")
			if err != nil {
				return nil, err
			}
			p.set("user", u, "")
		}
		if hasPassword && password != "" {
			pw, err := decode(password, "password")
			if err != nil {
				return nil, err
			}
			p.set("password", pw, "")
		}
	}
	hostPart, query, _ := strings.Cut(rest, "?")
	hostPart, db, hasDB := strings.Cut(hostPart, "/")
	if hostPart != "" {
		var hosts, ports []string
		anyPort := false
		for _, hp := range strings.Split(hostPart, ",") {
			host, port := hp, ""
			if strings.HasPrefix(hp, "[") {
				end := strings.IndexByte(hp, ']')
				if end < 0 {
					return nil, errors.New(`missing "]" after an IPv6 address`)
				}
				host, port = hp[1:end], strings.TrimPrefix(hp[end+1:], ":")
			} else if h, pt, ok := strings.Cut(hp, ":"); ok {
				host, port = h, pt
			}
			h, err := decode(host, "host")
			if err != nil {
				return nil, err
			}
			hosts, ports = append(hosts, h), append(ports, port)
			anyPort = anyPort || port != ""
		}
		p.set("host", strings.Join(hosts, ","), "")
		if anyPort {
			p.set("port", strings.Join(ports, ","), "")
		}
	}
	if hasDB && db != "" {
		d, err := decode(db, "database name")
		if err != nil {
			return nil, err
		}
		p.set("dbname", d, "")
	}
	jdbcSSL := ""
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		key, err := decode(k, "query")
		if err != nil {
			return nil, err
		}
		val, err := decode(v, "query")
		if err != nil {
			return nil, err
		}
		switch key {
		case "ssl": // JDBC's ssl=true
			jdbcSSL = val
			continue
		case "database":
			key = "dbname"
		}
		p.set(key, val, "")
	}
	if _, ok := p.vals["sslmode"]; !ok && jdbcSSL != "" {
		m, err := normSSLMode(jdbcSSL, true)
		if err != nil {
			return nil, errors.New("bad ssl parameter: want true or false")
		}
		p.set("sslmode", m, "")
	}
	return p, nil
}

// dotNetKeys maps the keywords of the .NET (Npgsql) form, lower-cased and
// without spaces, to libpq's.
var dotNetKeys = map[string]string{
	"server": "host", "host": "host",
	"port":     "port",
	"database": "dbname", "db": "dbname",
	"userid": "user", "username": "user", "user": "user", "uid": "user",
	"password": "password", "pwd": "password", "psw": "password",
	"sslmode":         "sslmode",
	"applicationname": "application_name",
	"timeout":         "connect_timeout",
	"searchpath":      "search_path",
}

// isDotNetForm reports whether s is in the .NET form: its first keyword is
// a known one that is not also libpq's (Server=…;, User Id=…;, Host=…;
// but not host=…), and it has a semicolon.
func isDotNetForm(s string) bool {
	key, _, ok := strings.Cut(s, "=")
	if !ok || !strings.Contains(s, ";") {
		return false
	}
	key = strings.Trim(key, spaces)
	_, known := dotNetKeys[normDotNetKey(key)]
	return known && !contains(libpqKeys, key)
}

// libpqKeys are the .NET form's keywords that are also libpq's, as written.
var libpqKeys = []string{"host", "port", "user", "password"}

func normDotNetKey(k string) string {
	return strings.ToLower(strings.Join(strings.Fields(k), ""))
}

// parseDotNet parses the .NET form: "Key=Value;" pairs, keys in any case
// and spacing, values optionally in double or single quotes (a doubled
// quote inside stands for one).
func parseDotNet(s string) (*params, error) {
	p := &params{}
	orig := len(s)
	for {
		s = strings.TrimLeft(s, spaces+";")
		if s == "" {
			break
		}
		at := orig - len(s)
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, fmt.Errorf("missing \"=\" after a keyword at byte %d", at)
		}
		key := normDotNetKey(s[:eq])
		lib, ok := dotNetKeys[key]
		if !ok {
			return nil, fmt.Errorf("unsupported keyword at byte %d (supported: Server or Host, Port, Database, User Id or Username, Password, Ssl Mode, Application Name, Timeout, Search Path)", at)
		}
		s = strings.TrimLeft(s[eq+1:], spaces)
		var val string
		if len(s) > 0 && (s[0] == '"' || s[0] == '\'') {
			q := s[0]
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == q {
					if i+1 < len(s) && s[i+1] == q {
						b.WriteByte(q)
						i++
						continue
					}
					break
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated quoted value after byte %d", at)
			}
			val, s = b.String(), strings.TrimLeft(s[i+1:], spaces)
			if s != "" && s[0] != ';' {
				return nil, fmt.Errorf("text after a quoted value after byte %d", at)
			}
		} else {
			end := strings.IndexByte(s, ';')
			if end < 0 {
				end = len(s)
			}
			val, s = strings.TrimRight(s[:end], spaces), s[end:]
		}
		if lib == "sslmode" {
			m, err := normSSLMode(val, false)
			if err != nil {
				return nil, fmt.Errorf("unknown Ssl Mode at byte %d: %v", at, err)
			}
			val = m
		}
		p.set(lib, val, "")
	}
	return p, nil
}
