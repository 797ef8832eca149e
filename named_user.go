package entraauth

import (
	"os/user"
	"sync"

	"github.com/jackc/pgx/v5"
)

// userNamedBy reports whether the connection settings name a user, as
// opposed to pgx filling in the OS user name when none is given. A user
// other than the OS user's name is named (by the string, PGUSER, a service
// file or code). The OS user's name counts as named only when the
// connection string, PGUSER or the service file names it: code setting
// cfg.User to the OS user's name cannot be told from pgx's default, and
// WithUser is the way to name a user in code.
func userNamedBy(cfg *pgx.ConnConfig, f *connFacts) bool {
	return cfg.User != "" && (f.userNamed || cfg.User != f.osUser)
}

// osUserName is the name pgx uses when no user is named.
var osUserName = sync.OnceValue(func() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
})
