package entraauth

import (
	"net/url"
	"os"
	"os/user"
	"regexp"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// userNamedResult caches, for one connection string, whether it or
// PGUSER names a user.
type userNamedResult struct {
	connString string
	named      bool
}

// userNamed reports whether the connection settings name a user. pgx fills
// in the OS user name when none is given, which does not count. The answer
// for the OS user name is cached per connection string, PGUSER included:
// pgx read PGUSER when it parsed the config, so reading it again on every
// connect (an environment lookup under a lock) could not change what the
// config holds.
func (ts *TokenSource) userNamed(cfg *pgx.ConnConfig) bool {
	if cfg.User == "" {
		return false
	}
	if cfg.User != osUserName() {
		return true
	}
	connString := cfg.ConnString()
	if r := ts.userNamedCache.Load(); r != nil && r.connString == connString {
		return r.named
	}
	named := os.Getenv("PGUSER") != "" || connStringNamesUser(connString)
	ts.userNamedCache.Store(&userNamedResult{connString: connString, named: named})
	return named
}

// osUserName is the name pgx uses when no user is named.
var osUserName = sync.OnceValue(func() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
})

var keywordUser = regexp.MustCompile(`(^|\s)user\s*=`)

// connStringNamesUser reports whether a pgx connection string, URL or
// key/value form, sets a user.
func connStringNamesUser(connString string) bool {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		return err == nil && (u.User.Username() != "" || u.Query().Get("user") != "")
	}
	return keywordUser.MatchString(connString)
}
