package entraauth

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// ErrDriverNameTaken is returned by RegisterDriver when database/sql already
// has a driver by that name: one registered earlier by RegisterDriver, or
// another package's (pgx's stdlib registers "pgx" and "pgx/v5", lib/pq
// "postgres"). Pick another name, or register once at start-up.
var ErrDriverNameTaken = errors.New("entraauth: database/sql driver name already registered")

// RegisterDriver registers a database/sql driver called name whose
// connections authenticate with Entra access tokens from cred, for tools
// that take only a driver name and a connection string (goose,
// golang-migrate, and programs of your own built on sql.Open):
//
//	err := entraauth.RegisterDriver("azure-postgres", cred)
//	db, err := sql.Open("azure-postgres", "host=srv.postgres.database.azure.com dbname=app sslmode=verify-full")
//
// The driver is pgx's, with one TokenSource made from cred and opts: every
// database opened through it, whatever its connection string, shares that
// TokenSource's cached token, so the credential is asked once per token
// lifetime however many handles and connections there are. As with
// TokenSource, the servers must be of one Azure cloud (or use WithScope).
// Connection strings are anything pgx.ParseConfig accepts: key/value or
// postgres:// URLs.
//
// sql.Open does not connect: a connection string pgx cannot parse is
// reported by the first Ping or query, as ErrInvalidConnString, with
// neither the string nor its password in the error.
//
// RegisterDriver returns ErrDriverNameTaken, rather than panicking as
// sql.Register does, when name is already registered, and ErrInvalidOption
// for an empty name, a nil credential or an invalid option. A driver stays
// registered for the life of the process; there is nothing to close.
func RegisterDriver(name string, cred azcore.TokenCredential, opts ...Option) error {
	if name == "" {
		return fmt.Errorf("%w: RegisterDriver needs a driver name, such as \"azure-postgres\"", ErrInvalidOption)
	}
	ts := NewTokenSource(cred, opts...)
	if ts.set.err != nil {
		return ts.set.err
	}
	return registerOnce(name, &entraDriver{ts: ts})
}

// registerMu makes RegisterDriver's check for a taken name and its
// registration one step.
var registerMu sync.Mutex

// registerOnce registers d as name with database/sql, or reports the name
// taken. The recover covers another package's sql.Register of the same
// name racing between the check and the registration.
func registerOnce(name string, d driver.Driver) (err error) {
	registerMu.Lock()
	defer registerMu.Unlock()
	taken := fmt.Errorf("%w: %q; pick another name", ErrDriverNameTaken, name)
	if slices.Contains(sql.Drivers(), name) {
		return taken
	}
	defer func() {
		if recover() != nil {
			err = taken
		}
	}()
	sql.Register(name, d)
	return nil
}

// entraDriver is the driver RegisterDriver registers: a connection string
// becomes its TokenSource's Connector for it.
type entraDriver struct{ ts *TokenSource }

var _ driver.DriverContext = (*entraDriver)(nil)

// OpenConnector returns the connector for dsn; sql.Open calls it once per
// handle. It never fails: a connection string pgx cannot parse gets a
// connector whose every Connect reports it.
func (d *entraDriver) OpenConnector(dsn string) (driver.Connector, error) {
	return driverConnector{Connector: d.ts.Connector(dsn), d: d}, nil
}

// Open opens one connection to dsn, for callers of the driver.Driver
// interface itself; database/sql uses OpenConnector.
func (d *entraDriver) Open(dsn string) (driver.Conn, error) {
	c, _ := d.OpenConnector(dsn)
	return c.Connect(context.Background())
}

// driverConnector is a TokenSource's connector that names the registered
// driver as its own, so sql.DB.Driver returns it.
type driverConnector struct {
	driver.Connector
	d *entraDriver
}

func (c driverConnector) Driver() driver.Driver { return c.d }
