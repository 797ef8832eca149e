package entraauth

import (
	"context"
	"database/sql/driver"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Connector returns a database/sql connector that authenticates every new
// connection with an Entra access token from cred, for sql.OpenDB:
//
//	db := sql.OpenDB(entraauth.Connector("host=srv.postgres.database.azure.com dbname=app sslmode=verify-full", cred))
//
// A connection string pgx cannot parse is reported by Connect, and so by
// db.PingContext and the first query. It is
// NewTokenSource(cred, opts...).Connector(connString).
func Connector(connString string, cred azcore.TokenCredential, opts ...Option) driver.Connector {
	return NewTokenSource(cred, opts...).Connector(connString)
}

// Connector returns a database/sql connector for connString whose
// connections take their tokens from this TokenSource.
func (ts *TokenSource) Connector(connString string) driver.Connector {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		// pgx's parse errors mask any password in the connection string.
		return failingConnector{fmt.Errorf("entraauth: invalid connection string: %w", err)}
	}
	return stdlib.GetConnector(*cfg, stdlib.OptionBeforeConnect(ts.BeforeConnect))
}

// failingConnector reports a configuration error on every Connect.
type failingConnector struct{ err error }

func (c failingConnector) Connect(context.Context) (driver.Conn, error) { return nil, c.err }
func (c failingConnector) Driver() driver.Driver                        { return stdlib.GetDefaultDriver() }
