package entraauth

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
// Printed with fmt (any verb), logged with slog (any handler, nested in a
// struct, slice or map too) or encoded as JSON or text, an EnvConfig shows
// the connection string with any password replaced by [REDACTED], and the
// credential's kind only. (fmt cannot reach the methods of a value held in
// an unexported struct field: do not keep one there and print the struct.)
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
	v := c.redacted()
	return slog.GroupValue(
		slog.String("prefix", v.Prefix),
		slog.String("conn_string", v.ConnString),
		slog.String("credential", v.Credential),
		slog.Bool("password_auth", v.PasswordAuth),
	)
}

// MarshalJSON encodes the configuration as a JSON object with any
// password redacted: slog's JSON handler uses it for an EnvConfig nested in
// another value.
func (c EnvConfig) MarshalJSON() ([]byte, error) { return json.Marshal(c.redacted()) }

// MarshalText encodes the configuration as String does, for encoders that
// use encoding.TextMarshaler (slog's text handler for a nested value, XML,
// YAML).
func (c EnvConfig) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// GobEncode refuses to encode the configuration: gob carries values to be
// used again, and an EnvConfig holds a password or a credential that must
// not travel; read the environment where it is needed.
func (c EnvConfig) GobEncode() ([]byte, error) {
	return nil, errors.New("entraauth: an EnvConfig is not gob-encoded: it may hold a password")
}

// redactedEnvConfig is what may be shown of an EnvConfig.
type redactedEnvConfig struct {
	Prefix       string `json:"prefix"`
	ConnString   string `json:"conn_string"`
	Credential   string `json:"credential"`
	PasswordAuth bool   `json:"password_auth"`
}

func (c EnvConfig) redacted() redactedEnvConfig {
	return redactedEnvConfig{Prefix: c.Prefix, ConnString: redactConnString(c.ConnString),
		Credential: c.CredentialKind, PasswordAuth: c.PasswordAuth}
}

// LoadEnv reads the database configuration Azure Service Connector puts in
// the environment, with the given variable prefix ("" means
// DefaultEnvPrefix, AZURE_POSTGRESQL; Neon's is NEON_POSTGRESQL), and
// chooses a credential:
//
//   - <prefix>_CONNECTIONSTRING: the connection string, in libpq key/value
//     form (host=… dbname=… sslmode=require user=…), URL form
//     (postgresql://…, also jdbc:postgresql://…), or the .NET form
//     (Server=…;Database=…;Port=…;Ssl Mode=Require;User Id=…, keywords in
//     any case).
//   - or its parts, as Service Connector sets them for Node.js and Django:
//     <prefix>_HOST, _PORT, _DATABASE (or _NAME), _USER (or _USERNAME),
//     _PASSWORD, and _SSL or _SSLMODE. A part set next to a connection
//     string fills in what the string lacks and must agree with what it has.
//   - <prefix>_CLIENTID alone: a user-assigned managed identity
//     (azidentity.ManagedIdentityCredential with that client ID).
//   - <prefix>_CLIENTID, <prefix>_CLIENTSECRET and <prefix>_TENANTID: a
//     service principal (azidentity.ClientSecretCredential).
//   - none of these: azidentity.DefaultAzureCredential.
//   - a password in the connection string or <prefix>_PASSWORD: password
//     authentication (Service Connector's secret mode, as with Neon), with
//     no credential and no token.
//
// TLS is never weaker than the client the variables were written for would
// use. An sslmode is kept as written: Service Connector writes
// sslmode=require, which encrypts but does not verify the server; write
// verify-full into the variable to verify it (Azure's certificates chain
// to roots in the system pool). JDBC's ssl=true (or a bare ssl) and _SSL=true
// mean verify-full, as in pgjdbc and node-postgres; _SSL=no-verify means
// require. JDBC's ssl=false names no sslmode, as in pgjdbc, so the default
// applies: entraauth's verify-full with a credential, pgx's prefer (or
// PGSSLMODE) in password mode, as in pgjdbc. _SSL=false is refused:
// node-postgres still verifies the server for it. Of a JDBC URL's parameters, only those pgx
// has an equivalent of are kept (user, password, sslmode, sslrootcert,
// sslcert, sslkey, sslpassword, ApplicationName, currentSchema,
// connectTimeout, options, targetServerType, channelBinding,
// sslNegotiation); the rest (authenticationPluginClassName, sslfactory,
// loginTimeout, …) would reach the server as settings it refuses, so they
// are dropped, and their names logged at Debug to slog.Default.
//
// An empty variable counts as unset. A missing, malformed, ambiguous or
// contradictory variable is reported as an *EnvError naming it (wrapping
// ErrEnv), which never shows a secret: a URL whose password holds an
// unescaped "@", "/" or "?" is refused rather than split, and so is a host
// holding ";", "=" or "@".
func LoadEnv(prefix string) (*EnvConfig, error) {
	return loadEnv(prefix, os.LookupEnv, slog.Default())
}

// NewPoolFromEnv returns a pgx pool configured by LoadEnv(prefix). With a
// credential, every connection authenticates with an Entra token from a
// TokenSource made with opts (as Hook does). In password mode the password
// is used and opts have no effect, except that an invalid option is still
// reported and WithRequireVerifiedTLS still refuses an unverified
// connection. The dropped JDBC parameters are logged to WithLogger's
// logger (or slog.Default). Like pgxpool.New, it does not connect: Ping
// the pool to check the configuration. Close the pool when done.
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
// WithRequireVerifiedTLS still refuses an unverified connection. The
// dropped JDBC parameters are logged to WithLogger's logger (or
// slog.Default). Like sql.Open, it does not connect: PingContext checks
// the configuration. Close the handle when done.
func OpenDBFromEnv(prefix string, opts ...Option) (*sql.DB, error) {
	ec, set, err := loadEnvWithOptions(prefix, opts)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(ec.ConnString)
	if err != nil {
		return nil, ec.parseError(parsePgx)
	}
	if !ec.PasswordAuth {
		return sql.OpenDB(NewTokenSource(ec.Credential, opts...).Connector(ec.ConnString)), nil
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
	ec, err := loadEnv(prefix, os.LookupEnv, envLogger(opts))
	return ec, set, err
}

// envLogger is the logger given by WithLogger, or slog.Default.
func envLogger(opts []Option) *slog.Logger {
	var s settings
	for _, opt := range opts {
		if opt != nil {
			opt(&s)
		}
	}
	if s.logger == nil {
		return slog.Default()
	}
	return s.logger
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

// loadEnv is LoadEnv with the environment and the logger passed in.
func loadEnv(prefix string, lookup func(string) (string, bool), logger *slog.Logger) (*EnvConfig, error) {
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
	if len(p.dropped) > 0 {
		logger.Debug("entraauth: dropped JDBC connection properties pgx has no equivalent of",
			"variable", ec.source, "properties", p.dropped)
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

func parsePgx(s string) error {
	_, err := pgx.ParseConfig(s)
	return err
}

// parseError reports that parse (pgx) cannot parse the connection string.
// pgx's errors quote the string, so the redacted string is parsed again
// for a message safe to show. Only the message is kept: pgx's
// *pgconn.ParseConfigError holds the string it parsed, and errors.As must
// reach nothing that holds a connection string.
func (c *EnvConfig) parseError(parse func(string) error) error {
	msg := "pgx rejected it (details not shown: they would show a secret)"
	if err := parse(redactConnString(c.ConnString)); err != nil {
		msg = err.Error()
	}
	return &EnvError{Var: c.source, Reason: "gives settings pgx cannot use", Err: errors.New(msg)}
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
			if part.key == "host" && strings.ContainsAny(v, badHostChars) {
				return nil, e.errorf(suffix, `holds ";", "=" or "@", which no host name does (not shown: it may hold more than a host); `+
					"set it to the server's host name only")
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

// sslMode turns _SSLMODE's mode, or _SSL's value, into an sslmode.
//
// Service Connector sets _SSL=true for Node.js apps, which hand it to
// node-postgres as its ssl option. node-postgres then verifies the
// certificate chain and the host name, for any string but "no-verify":
// "false" included, as the string is truthy. So true means verify-full and
// no-verify means require. False is refused: reading it as TLS off would be
// weaker than node-postgres, and as verify-full would not be what it says.
// An sslmode is also accepted.
func (e env) sslMode(suffix, v string) (string, error) {
	if suffix == envSSL {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "1", "yes", "on":
			return "verify-full", nil
		case "no-verify":
			return "require", nil
		case "false", "0", "no", "off":
			return "", e.errorf(suffix, "is %q, which entraauth does not read as TLS off: node-postgres, for which Service Connector "+
				"sets it, still verifies the server for that string; set it to true (verify-full) or no-verify (require), "+
				"or set %s instead (disable only for a local server)", v, e.name(envSSLMode))
		}
	}
	m, err := normSSLMode(v)
	if err != nil {
		if suffix == envSSL {
			err = errors.New("want true (verify-full), no-verify (require), or an sslmode such as verify-full")
		}
		return "", e.errorf(suffix, "is %q; %v", v, err)
	}
	return m, nil
}
