package entraauth

import (
	"crypto/tls"
	"os"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/jackc/pgx/v5"
)

// What BeforeConnect derives from a connection config is computed once per
// distinct config and kept in a TokenSource's configCache, so that a warm
// connect is a few loads: pools, database/sql and the proxy hand every
// connect a copy of one parsed config, whose connection string shares its
// bytes with the original.

// connFacts are what entraauth needs to know about a connection string that
// pgx's parsed config does not say, because pgx fills in defaults: the OS
// user name for a user, sslmode=prefer, a password from PGPASSWORD or
// .pgpass.
type connFacts struct {
	key             connKey
	connString      string // keeps the bytes of key alive
	osUser          string // the name pgx fills in when no user is named
	userNamed       bool   // by the string, PGUSER or the service file
	sslModeNamed    bool   // by the string, PGSSLMODE or the service file
	passwordWritten bool   // a non-empty password in the string itself

	scope atomic.Pointer[hostScope] // the scope of the host last connected to
}

// newConnFacts reads connString, the environment variables pgx reads and
// the service file the settings name. pgx read the same when it parsed the
// config, moments before the first connect.
func newConnFacts(connString string) *connFacts {
	f := &connFacts{key: keyOf(connString), connString: connString, osUser: osUserName()}
	settings, err := pgxSettings(connString)
	if err != nil {
		// pgx parsed this string, so this cannot happen; the answers left
		// are the safe ones: keep the user, verify the server.
		f.userNamed = true
		return f
	}
	service := serviceSettings(settings)
	switch {
	case settings["user"] != "":
		rememberUserSource(settings["user"], "the connection string")
	case os.Getenv("PGUSER") != "":
		rememberUserSource(os.Getenv("PGUSER"), "PGUSER")
	case service["user"] != "":
		rememberUserSource(service["user"], "the service file")
	}
	f.userNamed = settings["user"] != "" || os.Getenv("PGUSER") != "" || service["user"] != ""
	f.sslModeNamed = settings["sslmode"] != "" || os.Getenv("PGSSLMODE") != "" || service["sslmode"] != ""
	f.passwordWritten = settings["password"] != ""
	return f
}

// configCache is a TokenSource's copy-on-write cache of what it derived
// from connection configs. It is never modified once published. Its lists
// are short (a program has a few connection strings and hosts), so they
// are searched in order: comparing a pointer and a length is cheaper than
// hashing a map key.
type configCache struct {
	facts []*connFacts
	tls   []*tlsUpgrade
}

// maxCachedConfigs bounds a configCache: a program parsing a new connection
// string for every connect starts the cache over now and then instead of
// growing it.
const maxCachedConfigs = 64

// connKey identifies a connection string by its bytes' address and length.
// Copies of a parsed config share the bytes. The cached connFacts holds the
// string, so the address cannot be reused for other bytes while the key is
// in the cache.
type connKey struct {
	data *byte
	n    int
}

func keyOf(s string) connKey { return connKey{unsafe.StringData(s), len(s)} }

// connFacts returns the facts of cfg's connection string, computing them
// on first sight.
func (ts *TokenSource) connFacts(cfg *pgx.ConnConfig) *connFacts {
	k := keyOf(cfg.ConnString())
	if c := ts.configs.Load(); c != nil {
		for _, f := range c.facts {
			if f.key == k {
				return f
			}
		}
	}
	return ts.newConnFacts(cfg.ConnString())
}

// newConnFacts computes and caches the facts of s; when another connect
// cached them first, theirs are kept and returned.
func (ts *TokenSource) newConnFacts(s string) *connFacts {
	f := newConnFacts(s)
	ts.updateConfigCache(func(c *configCache) {
		if i := slices.IndexFunc(c.facts, func(g *connFacts) bool { return g.key == f.key }); i >= 0 {
			f = c.facts[i]
			return
		}
		c.facts = append(c.facts, f)
	})
	return f
}

// hostScope is the token scope a host name needs. hostKey is host's
// identity: the configs copied from one parsed config share the bytes.
type hostScope struct {
	hostKey     connKey
	host, scope string
}

// scopeFor returns scopeForHost(cfg.Host), remembering a success with the
// connection string's facts: the TokenSource's scope, once fixed, does not
// change, so neither does the answer for a host. The first time, it also
// checks that every host of the string is of one cloud.
func (ts *TokenSource) scopeFor(f *connFacts, cfg *pgx.ConnConfig) (string, error) {
	if hs := f.scope.Load(); hs != nil && hs.hostKey == keyOf(cfg.Host) {
		return hs.scope, nil
	}
	return ts.newScopeFor(f, cfg)
}

func (ts *TokenSource) newScopeFor(f *connFacts, cfg *pgx.ConnConfig) (string, error) {
	if ts.set.scope == "" {
		if err := hostsOfOneCloud(cfg); err != nil {
			return "", err
		}
	}
	host := cfg.Host
	scope, err := ts.scopeForHost(host)
	if err == nil {
		f.scope.Store(&hostScope{keyOf(host), host, scope})
	}
	return scope, err
}

// updateConfigCache publishes a copy of the cache changed by add, starting
// over when the cache is full.
func (ts *TokenSource) updateConfigCache(add func(*configCache)) {
	for {
		old := ts.configs.Load()
		next := &configCache{}
		if old != nil && len(old.facts)+len(old.tls) < maxCachedConfigs {
			next.facts = slices.Clone(old.facts)
			next.tls = slices.Clone(old.tls)
		}
		add(next)
		if ts.configs.CompareAndSwap(old, next) {
			return
		}
	}
}

// tlsUpgrade is the verifying TLS config made from an unverified one, for
// one host of one connection string.
type tlsUpgrade struct {
	conn connKey
	host string
	from tlsFingerprint
	to   *tls.Config
}
