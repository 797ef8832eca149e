package entraauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgservicefile"
)

// This file reads a connection string the way pgx v5.12 reads it
// (pgconn's parseKeywordValueSettings and parseURLSettings), to tell what
// the string itself writes from what pgx fills in afterwards: the OS user
// name, sslmode=prefer, a password from PGPASSWORD or .pgpass. pgx parses
// the string first and keeps only the merged result, so entraauth reads it
// again. It runs once per connection string (see config_cache.go), never
// on every connect.

// pgxSettings returns the settings connString writes, keyed by libpq's
// names (dbname, not pgx's database), as pgx reads them. connString is one
// pgx has already parsed, so errors are not expected; an error still says
// where, never what (the string may hold a password).
func pgxSettings(connString string) (map[string]string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		return urlSettings(connString)
	}
	return keyValueSettings(connString)
}

const kvSpaces = " \t\n\r\v\f"

var errMalformedConnString = errors.New("malformed connection string")

// keyValueSettings reads libpq's key/value form: key = value pairs
// separated by white space, values optionally in single quotes, a
// backslash taking the next character literally. An empty user is
// dropped, as pgx drops it.
func keyValueSettings(s string) (map[string]string, error) {
	settings := map[string]string{}
	s = strings.TrimLeft(s, kvSpaces)
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, errMalformedConnString
		}
		key := strings.Trim(s[:eq], kvSpaces)
		if key == "" || strings.ContainsAny(key, kvSpaces) {
			return nil, errMalformedConnString
		}
		s = strings.TrimLeft(s[eq+1:], kvSpaces)
		var raw string
		if len(s) > 0 && s[0] == '\'' {
			end := valueEnd(s[1:], func(c byte) bool { return c == '\'' })
			if end == len(s)-1 {
				return nil, errMalformedConnString // unterminated quote
			}
			raw, s = s[1:1+end], s[end+2:]
		} else {
			end := valueEnd(s, func(c byte) bool { return strings.IndexByte(kvSpaces, c) >= 0 })
			raw, s = s[:end], s[end:]
		}
		s = strings.TrimLeft(s, kvSpaces)
		val := unescape(raw)
		if key == "user" && val == "" {
			continue
		}
		settings[key] = val
	}
	return settings, nil
}

// valueEnd returns the index in s of the first byte that ends a value,
// skipping backslash-escaped bytes, or len(s).
func valueEnd(s string, ends func(byte) bool) int {
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++
		case ends(s[i]):
			return i
		}
	}
	return len(s)
}

// urlSettings reads a postgres:// or postgresql:// URL as libpq and pgx
// do: the user information ends at the first "@" before any "/", and the
// query's parameters are settings, a later one winning; ssl=true, when it
// comes after any sslmode, means sslmode=require. Only what entraauth
// needs is read: the user, the password and the query parameters.
func urlSettings(s string) (map[string]string, error) {
	settings := map[string]string{}
	rest := s[strings.Index(s, "://")+3:]
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		user, password, hasPassword := strings.Cut(rest[:i], ":")
		rest = rest[i+1:]
		if user != "" {
			settings["user"] = uriDecode(user)
		}
		if hasPassword && password != "" {
			settings["password"] = uriDecode(password)
		}
	}
	// Hosts, ports and the path all end at the first "?".
	_, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return settings, nil
	}
	sslWasLast := false
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, errMalformedConnString
		}
		key := uriDecode(k)
		if key == "database" {
			key = "dbname"
		}
		switch key {
		case "ssl":
			sslWasLast = true
		case "sslmode":
			sslWasLast = false
		}
		settings[key] = uriDecode(v)
	}
	if settings["ssl"] == "true" {
		delete(settings, "ssl")
		if sslWasLast {
			settings["sslmode"] = "require"
		}
	}
	return settings, nil
}

// uriDecode percent-decodes a URL component as libpq does, leading and
// trailing spaces skipped. Input pgx accepted has only valid escapes; an
// invalid one is kept as it is.
func uriDecode(s string) string {
	s = strings.Trim(s, " ")
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				b.WriteByte(hi<<4 | lo)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// serviceSettings returns the settings of the service the connection
// settings name (service=, else PGSERVICE) from its service file
// (servicefile=, else PGSERVICEFILE, else ~/.pg_service.conf), as pgx
// reads them; nil when no service is named or it cannot be read (pgx
// would then have refused the configuration).
func serviceSettings(settings map[string]string) map[string]string {
	name := firstNonEmpty(settings["service"], os.Getenv("PGSERVICE"))
	if name == "" {
		return nil
	}
	path := firstNonEmpty(settings["servicefile"], os.Getenv("PGSERVICEFILE"))
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil
		}
		path = filepath.Join(home, ".pg_service.conf")
	}
	file, err := pgservicefile.ReadServicefile(path)
	if err != nil {
		return nil
	}
	service, err := file.GetService(name)
	if err != nil {
		return nil
	}
	return service.Settings
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
