package entraauth

// The connection-string forms Service Connector writes, read into libpq's
// key names: libpq's key/value form (Go, Python, PHP, Ruby), postgres://
// URLs, JDBC URLs (Java) and the .NET form (Npgsql). The parsers' errors
// say where, never what: a connection string may hold a password, and no
// value read from a password's position may ever be printed. Where two
// readings of a string would put a password's characters in different
// places, the string is refused rather than guessed at.

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// params are connection settings in order, with libpq's key names, and
// where they came from.
type params struct {
	keys    []string
	vals    map[string]string
	from    map[string]string // key → variable, when not the source
	source  string            // the variable most keys came from
	dropped []string          // JDBC properties pgx has no equivalent of, by name
}

// secretKeys are the connection settings whose values are never shown.
var secretKeys = map[string]bool{"password": true, "sslpassword": true}

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
	p.keys = slices.DeleteFunc(p.keys, func(k string) bool { return k == key })
}

// badHostChars are characters no host name or socket directory holds. A
// host holding one is a misread string: a .NET-form string read as
// key/value, or a URL whose password holds an unescaped "@".
const badHostChars = ";=@"

// errBadHost reports a host holding one of badHostChars, without the host:
// it may hold a password.
var errBadHost = errors.New(`the host would hold ";", "=" or "@", which no host name does ` +
	`(not shown: it may hold a password): write the .NET form as Key=Value; pairs, ` +
	`and percent-encode "@" in a URL's user name and password as %40`)

// checkHost refuses a host that holds one of badHostChars.
func (p *params) checkHost() error {
	if strings.ContainsAny(p.vals["host"], badHostChars) {
		return errBadHost
	}
	return nil
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
		if !slices.Contains(leadingKeys, k) {
			write(k)
		}
	}
	return b.String()
}

// quoteValue quotes a key/value connection string value when it needs it,
// or when it holds a ";", so that the string cannot be read as the .NET
// form.
func quoteValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\;") {
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

// parseConnString parses a connection string in URL, JDBC, .NET or
// key/value form.
func parseConnString(s string) (*params, error) {
	var p *params
	var err error
	switch {
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"), strings.HasPrefix(s, "jdbc:postgresql://"):
		p, err = parseURL(s)
	default:
		p, err = parseKeyValueOrDotNet(s)
	}
	if err != nil {
		return nil, err
	}
	if err := p.checkHost(); err != nil {
		return nil, err
	}
	return p, nil
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

// errAmbiguousURL refuses a URL in which a password may hold an unescaped
// "@", "/" or "?".
var errAmbiguousURL = errors.New(`the URL's user information is ambiguous: with a ":" before its last "@" ` +
	`(so a password may be there), a URL must hold exactly one "@", with no "/" or "?" before it; ` +
	`percent-encode "@", "/" and "?" in the user name, password and query values (%40, %2F, %3F)`)

// splitUserinfo splits a URL, after its "scheme://", into the user
// information and the rest. libpq ends the user information at the first
// "@" unless a "/" comes first. Read that way, a password holding an
// unescaped "@", "/" or "?" lands in the host, port, database name or
// query, where it would be printed. So when the text before the last "@"
// holds a ":", and a password may be there, the URL must hold exactly one
// "@" with no "/" or "?" before it, making both readings agree; otherwise
// it is refused. Without such a ":" no reading holds a password, and the
// URL is read as libpq reads it.
func splitUserinfo(rest string) (userinfo, after string, err error) {
	last := strings.LastIndexByte(rest, '@')
	if last < 0 {
		return "", rest, nil
	}
	if strings.Contains(rest[:last], ":") {
		if strings.IndexByte(rest, '@') != last || strings.ContainsAny(rest[:last], "/?") {
			return "", "", errAmbiguousURL
		}
		return rest[:last], rest[last+1:], nil
	}
	if i := strings.IndexAny(rest, "@/"); rest[i] == '@' {
		return rest[:i], rest[i+1:], nil
	}
	return "", rest, nil
}

// parseURL parses a postgres://, postgresql:// or jdbc:postgresql:// URL
// as libpq (or pgjdbc) does: hosts are comma-separated, and query
// parameters are settings. Of a JDBC URL's parameters, pgjdbc's
// properties, only those pgx has an equivalent of are kept (see
// jdbcParams); the rest are dropped and listed in params.dropped.
func parseURL(s string) (*params, error) {
	jdbc := strings.HasPrefix(s, "jdbc:")
	rest := s[strings.Index(s, "://")+3:]
	p := &params{}
	decode := func(v, what string) (string, error) {
		d, err := url.PathUnescape(v)
		if err != nil {
			return "", fmt.Errorf("bad percent-encoding in the %s", what)
		}
		return d, nil
	}
	userinfo, rest, err := splitUserinfo(rest)
	if err != nil {
		return nil, err
	}
	if userinfo != "" {
		user, password, hasPassword := strings.Cut(userinfo, ":")
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
	sslMode := ""
	for i, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, hasValue := strings.Cut(kv, "=")
		key, err := decode(k, "query")
		if err != nil {
			return nil, err
		}
		var val string
		if jdbc {
			val, err = url.QueryUnescape(v) // pgjdbc decodes "+" as a space
		} else {
			val, err = decode(v, "query")
		}
		if err != nil {
			return nil, fmt.Errorf("bad percent-encoding in query parameter %d", i+1)
		}
		if key == "ssl" {
			if sslMode, err = sslParamMode(val); err != nil {
				return nil, err
			}
			continue
		}
		if !hasValue {
			return nil, fmt.Errorf(`query parameter %d has no "=" and value`, i+1)
		}
		if jdbc {
			var keep bool
			if key, val, keep = jdbcParam(key, val); !keep {
				p.dropped = append(p.dropped, key)
				continue
			}
		} else if key == "database" {
			key = "dbname"
		}
		p.set(key, val, "")
	}
	if _, ok := p.vals["sslmode"]; !ok && sslMode != "" {
		p.set("sslmode", sslMode, "")
	}
	return p, nil
}

// sslParamMode returns the sslmode for a URL's ssl parameter (pgjdbc's,
// also read by node-postgres), or "" for none. Both drivers verify the
// server's certificate and host name when it is on: "ssl", "ssl=" and
// ssl=true mean verify-full (node-postgres also reads ssl=1). ssl=false
// (or 0) leaves the sslmode unset, as it does in pgjdbc, whose default is
// then prefer: entraauth's own default (verify-full for tokens) applies.
// An sslmode parameter wins over ssl, as in pgjdbc.
func sslParamMode(v string) (string, error) {
	switch strings.ToLower(v) {
	case "", "true", "1":
		return "verify-full", nil
	case "false", "0":
		return "", nil
	}
	return "", errors.New("bad ssl query parameter: want ssl=true (verify-full) or ssl=false, or sslmode=")
}

// jdbcParams maps the pgjdbc properties pgx has an equivalent of to
// pgx's names. pgjdbc reads its URL's parameters as driver properties;
// pgx would send the ones it does not know to the server as settings,
// which PostgreSQL refuses (FATAL 42704): so the others are dropped.
// targetServerType's values are mapped by jdbcTargetServerTypes.
var jdbcParams = map[string]string{
	"user":             "user",
	"password":         "password",
	"sslmode":          "sslmode",
	"sslcert":          "sslcert",
	"sslkey":           "sslkey",
	"sslrootcert":      "sslrootcert",
	"sslpassword":      "sslpassword",
	"sslNegotiation":   "sslnegotiation",
	"channelBinding":   "channel_binding",
	"connectTimeout":   "connect_timeout",
	"options":          "options",
	"ApplicationName":  "application_name",
	"currentSchema":    "search_path",
	"targetServerType": "target_session_attrs",
}

// jdbcTargetServerTypes maps pgjdbc's targetServerType values to pgx's
// target_session_attrs.
var jdbcTargetServerTypes = map[string]string{
	"any":             "any",
	"primary":         "primary",
	"master":          "primary",
	"secondary":       "standby",
	"slave":           "standby",
	"preferSecondary": "prefer-standby",
	"preferSlave":     "prefer-standby",
}

// jdbcParam returns pgx's name and value for a pgjdbc property, and
// whether pgx has an equivalent of it.
func jdbcParam(key, val string) (string, string, bool) {
	name, ok := jdbcParams[key]
	if !ok {
		return key, val, false
	}
	if name == "target_session_attrs" {
		v, ok := jdbcTargetServerTypes[val]
		if !ok {
			return key, val, false
		}
		return name, v, true
	}
	if name == "sslmode" {
		val = strings.ToLower(val) // pgjdbc ignores its case
	}
	return name, val, true
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

// libpqSpelled are the .NET keywords that pgx also reads, as pgx spells
// them. A string starting with one of them may be in either form.
var libpqSpelled = []string{"host", "port", "database", "user", "password", "sslmode"}

func normDotNetKey(k string) string {
	return strings.ToLower(strings.Join(strings.Fields(k), ""))
}

// errAmbiguousForms refuses a string whose .NET and key/value readings
// disagree about a password.
var errAmbiguousForms = errors.New("the connection string reads both as the .NET form and as libpq's key/value form, " +
	`with different passwords: in the .NET form, start with Host= or Server=; in key/value form, quote the password ('…')`)

// parseKeyValueOrDotNet parses the .NET form (Key=Value; pairs) or libpq's
// key/value form (key=value pairs separated by white space). A string with
// a ";" whose first keyword is a .NET one is in the .NET form, unless that
// keyword is written as pgx writes it (host=…;database=…, which Npgsql
// also reads): such a string is read both ways, and the reading that gives
// settings that make sense wins. When both do, the .NET reading wins,
// unless the two readings find different passwords: then the string is
// refused, as a password's characters would land in other settings in one
// of them.
func parseKeyValueOrDotNet(s string) (*params, error) {
	key, _, hasEq := strings.Cut(s, "=")
	key = strings.Trim(key, spaces)
	if _, known := dotNetKeys[normDotNetKey(key)]; !hasEq || !known || !strings.Contains(s, ";") {
		return parseKeyValue(s)
	}
	if !slices.Contains(libpqSpelled, key) {
		return parseDotNet(s)
	}
	dn, dnErr := parseDotNet(s)
	if dnErr == nil {
		dnErr = dn.checkHost()
	}
	kv, kvErr := parseKeyValue(s)
	if kvErr == nil {
		kvErr = kv.checkHost()
	}
	switch {
	case dnErr == nil && kvErr == nil:
		for k := range secretKeys {
			if kv.vals[k] != dn.vals[k] {
				return nil, errAmbiguousForms
			}
		}
		return dn, nil
	case dnErr == nil:
		return dn, nil
	case kvErr == nil:
		return kv, nil
	}
	return nil, fmt.Errorf("read as the .NET form: %w; read as key/value: %w", dnErr, kvErr)
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
			m, err := normSSLMode(val)
			if err != nil {
				return nil, fmt.Errorf("unknown Ssl Mode at byte %d: %v", at, err)
			}
			val = m
		}
		p.set(lib, val, "")
	}
	return p, nil
}

// normSSLMode returns the libpq sslmode for v, in libpq's or Npgsql's
// spelling (VerifyFull, verify-full).
func normSSLMode(v string) (string, error) {
	l := strings.ToLower(strings.TrimSpace(v))
	switch strings.ReplaceAll(l, "-", "") {
	case "disable", "allow", "prefer", "require":
		return l, nil
	case "verifyca":
		return "verify-ca", nil
	case "verifyfull":
		return "verify-full", nil
	}
	return "", errors.New("want disable, allow, prefer, require, verify-ca or verify-full")
}
