package entraauth

import (
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ExplainUserSource is Explain for a caller that knows where the user name
// it sent came from, such as a command's -U flag, which entraauth did not
// see: the reading and the fix take userSource into account. An empty
// userSource keeps the one entraauth found.
func ExplainUserSource(err error, userSource string) error {
	err = Explain(err)
	var le *LoginError
	var pe *pgconn.PgError
	if userSource == "" || !errors.As(err, &le) || le.UserSource == userSource || !errors.As(le.Err, &pe) {
		return err
	}
	le.UserSource = userSource
	le.Reading, le.Fix, le.CreateRoleSQL = "", "", ""
	le.read(pe, time.Now())
	return le
}
