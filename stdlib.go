package entraauth

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// Connector returns a database/sql connector that authenticates every new
// connection with an Entra access token from cred, for sql.OpenDB:
//
//	db := sql.OpenDB(entraauth.Connector("host=srv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
//
// A connection string pgx cannot parse is reported by Connect, and so by
// db.PingContext and the first query, as ErrInvalidConnString. A login the
// server refuses is reported as a *LoginError (see Explain). It is
// NewTokenSource(cred, opts...).Connector(connString).
func Connector(connString string, cred azcore.TokenCredential, opts ...Option) driver.Connector {
	return NewTokenSource(cred, opts...).Connector(connString)
}

// Connector returns a database/sql connector for connString whose
// connections take their tokens from this TokenSource.
func (ts *TokenSource) Connector(connString string) driver.Connector {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return failingConnector{parseError(err)}
	}
	return explainingConnector{stdlib.GetConnector(*cfg, stdlib.OptionBeforeConnect(ts.BeforeConnect))}
}

// explainingConnector is pgx's connector whose login failures are
// explained (see Explain): a refused login's error says the user sent,
// where it came from and the token's principal, and still unwraps to pgx's
// errors.
type explainingConnector struct{ driver.Connector }

func (c explainingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, Explain(err)
	}
	return conn, nil
}

// parseError describes pgx's error for a connection string it cannot parse
// without the string or anything quoted from it, and without wrapping it:
// pgx's *pgconn.ParseConfigError holds the raw string, password included,
// in its ConnString field, and pgx masks the password in its message only
// as well as a malformed string allows. What is kept is pgx's own
// description of the problem, such as "invalid port", and the cause when
// it cannot quote the string (a file that cannot be read, for example).
func parseError(err error) error {
	var pce *pgconn.ParseConfigError
	if !errors.As(err, &pce) {
		return fmt.Errorf("%w: pgx could not parse it", ErrInvalidConnString)
	}
	// pgx's message is "cannot parse `<masked string>`: <what> (<cause>)".
	msg := pce.Error()
	cause := errors.Unwrap(pce)
	if cause != nil {
		msg = strings.TrimSuffix(msg, " ("+cause.Error()+")")
	}
	i := strings.LastIndex(msg, "`: ")
	if !strings.HasPrefix(msg, "cannot parse `") || i < 0 {
		return fmt.Errorf("%w: pgx could not parse it", ErrInvalidConnString)
	}
	what := msg[i+len("`: "):]
	switch {
	case strings.HasPrefix(what, "failed to parse as"):
		// The syntax errors' details can quote pieces of the string.
		what += " (details not shown, as they could quote a password: look for unquoted spaces in values and unterminated quotes)"
	case cause != nil:
		// The others name files, settings' values or none.
		what += " (" + cause.Error() + ")"
	}
	return fmt.Errorf("%w: %s", ErrInvalidConnString, what)
}

// failingConnector reports a configuration error on every Connect.
type failingConnector struct{ err error }

func (c failingConnector) Connect(context.Context) (driver.Conn, error) { return nil, c.err }
func (c failingConnector) Driver() driver.Driver                        { return stdlib.GetDefaultDriver() }
