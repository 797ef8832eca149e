package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// connInfo is a libpq connection string taken apart: its settings in the
// order first written, a later setting of a key replacing the earlier one,
// as libpq does.
type connInfo struct {
	keys []string
	vals map[string]string
}

func (c *connInfo) get(key string) (string, bool) {
	v, ok := c.vals[key]
	return v, ok
}

// set adds or replaces a setting. libpq reads requiressl as an old
// spelling of sslmode: 1 is require, anything else prefer.
func (c *connInfo) set(key, val string) {
	if key == "requiressl" {
		mode := "prefer"
		if strings.HasPrefix(val, "1") {
			mode = "require"
		}
		key, val = "sslmode", mode
	}
	if c.vals == nil {
		c.vals = map[string]string{}
	}
	if _, ok := c.vals[key]; !ok {
		c.keys = append(c.keys, key)
	}
	c.vals[key] = val
}

// String returns the settings in key/value form, every value quoted.
func (c *connInfo) String() string {
	var b strings.Builder
	for i, k := range c.keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteString("='")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(c.vals[k]))
		b.WriteByte('\'')
	}
	return b.String()
}

// uriPrefixLen returns the length of s's postgresql:// or postgres://
// prefix, or 0.
func uriPrefixLen(s string) int {
	for _, p := range []string{"postgresql://", "postgres://"} {
		if strings.HasPrefix(s, p) {
			return len(p)
		}
	}
	return 0
}

// isConnString reports whether psql reads a database name argument as a
// connection string: a URL, or anything with an "=" in it.
func isConnString(s string) bool {
	return uriPrefixLen(s) > 0 || strings.Contains(s, "=")
}

// parseConnInfo parses a connection string, URL or key/value, as libpq
// does. Its errors say what is wrong, never a value: the string may hold a
// password.
func parseConnInfo(s string) (*connInfo, error) {
	if n := uriPrefixLen(s); n > 0 {
		return parseConnURI(s[n:])
	}
	return parseConnKeyValue(s)
}

// isSpace is C's isspace in the C locale, which libpq uses.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// parseConnKeyValue parses libpq's key/value form: key = value pairs
// separated by white space, values optionally in single quotes, with
// backslash escapes in both kinds of values.
func parseConnKeyValue(s string) (*connInfo, error) {
	c := &connInfo{}
	i := 0
	for i < len(s) {
		if isSpace(s[i]) {
			i++
			continue
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		if key == "" {
			return nil, fmt.Errorf("missing keyword before \"=\" at byte %d of the connection string", start)
		}
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("missing \"=\" after the keyword at byte %d of the connection string", start)
		}
		i++
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			for {
				if i == len(s) {
					return nil, errors.New("unterminated quoted string in the connection string")
				}
				ch := s[i]
				i++
				if ch == '\\' {
					if i < len(s) {
						val.WriteByte(s[i])
						i++
					}
					continue
				}
				if ch == '\'' {
					break
				}
				val.WriteByte(ch)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' {
					i++
					if i == len(s) {
						break
					}
				}
				val.WriteByte(s[i])
				i++
			}
		}
		c.set(key, val.String())
	}
	return c, nil
}

// parseConnURI parses a connection URL after its scheme as libpq does:
// [user[:password]@][host[:port][,...]][/dbname][?key=value&...], each
// part percent-decoded, a bracketed host being an IPv6 address.
func parseConnURI(s string) (*connInfo, error) {
	c := &connInfo{}
	decode := func(v, what string) (string, error) {
		d, err := uriDecode(v)
		if err != nil {
			return "", fmt.Errorf("%s in the %s of the connection URL", err, what)
		}
		return d, nil
	}
	// The user information ends at an "@" before any "/".
	if i := strings.IndexAny(s, "@/"); i >= 0 && s[i] == '@' {
		user, password, hasPassword := strings.Cut(s[:i], ":")
		s = s[i+1:]
		if user != "" {
			u, err := decode(user, "user name")
			if err != nil {
				return nil, err
			}
			c.set("user", u)
		}
		if hasPassword && password != "" {
			p, err := decode(password, "password")
			if err != nil {
				return nil, err
			}
			c.set("password", p)
		}
	}
	var hosts, ports strings.Builder
	term := byte(0) // what ended the host list: 0, '/' or '?'
	for {
		var host string
		if strings.HasPrefix(s, "[") {
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return nil, errors.New(`missing "]" after an IPv6 address in the connection URL`)
			}
			if end == 1 {
				return nil, errors.New("empty IPv6 address in the connection URL")
			}
			host, s = s[1:end], s[end+1:]
			if s != "" && !strings.ContainsRune(":/?,", rune(s[0])) {
				return nil, errors.New(`unexpected character after an IPv6 address in the connection URL (want ":" or "/")`)
			}
		} else {
			end := strings.IndexAny(s, ":/?,")
			if end < 0 {
				end = len(s)
			}
			host, s = s[:end], s[end:]
		}
		hosts.WriteString(host)
		if strings.HasPrefix(s, ":") {
			end := strings.IndexAny(s[1:], "/?,")
			if end < 0 {
				end = len(s) - 1
			}
			ports.WriteString(s[1 : 1+end])
			s = s[1+end:]
		}
		if !strings.HasPrefix(s, ",") {
			break
		}
		s = s[1:]
		hosts.WriteByte(',')
		ports.WriteByte(',')
	}
	if s != "" {
		term, s = s[0], s[1:]
	}
	if hosts.Len() > 0 {
		h, err := decode(hosts.String(), "host")
		if err != nil {
			return nil, err
		}
		c.set("host", h)
	}
	if ports.Len() > 0 {
		p, err := decode(ports.String(), "port")
		if err != nil {
			return nil, err
		}
		c.set("port", p)
	}
	if term == '/' {
		db, rest, hasQuery := strings.Cut(s, "?")
		if db != "" { // an empty name would not fall back to PGDATABASE
			d, err := decode(db, "database name")
			if err != nil {
				return nil, err
			}
			c.set("dbname", d)
		}
		s, term = rest, 0
		if hasQuery {
			term = '?'
		}
	}
	if term != '?' {
		return c, nil
	}
	for s != "" {
		param, rest, _ := strings.Cut(s, "&")
		s = rest
		k, v, ok := strings.Cut(param, "=")
		if !ok {
			return nil, errors.New(`missing "=" in a query parameter of the connection URL`)
		}
		if strings.Contains(v, "=") {
			return nil, errors.New(`extra "=" in a query parameter of the connection URL`)
		}
		key, err := decode(k, "query")
		if err != nil {
			return nil, err
		}
		val, err := decode(v, "query")
		if err != nil {
			return nil, err
		}
		if key == "" || strings.ContainsAny(key, "= \t\n\r\v\f") {
			return nil, errors.New("invalid keyword in a query parameter of the connection URL")
		}
		if key == "ssl" && val == "true" { // libpq's nod to JDBC
			key, val = "sslmode", "require"
		}
		c.set(key, val)
	}
	return c, nil
}

// uriDecode decodes %XX escapes as libpq does: "+" is itself, and %00 or a
// bad escape is an error.
func uriDecode(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("bad percent-encoding")
		}
		n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || n == 0 {
			return "", errors.New("bad percent-encoding")
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return b.String(), nil
}
