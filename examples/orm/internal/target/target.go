// Package target decides where the example programs connect: to Azure
// Database for PostgreSQL when the environment names a server, else to a
// local emulator of it, so every example runs on a laptop with no Azure
// account.
//
// Azure, when any of these is set:
//
//   - PGHOST (and the other PG… variables pgx reads: PGPORT, PGDATABASE,
//     PGUSER, PGSSLMODE, …), with azidentity.DefaultAzureCredential. With
//     no PGSSLMODE the connection uses sslmode=verify-full.
//   - Azure Service Connector's AZURE_POSTGRESQL_CONNECTIONSTRING or
//     AZURE_POSTGRESQL_HOST (and the rest of its variables), read by
//     entraauth.LoadEnv, which also picks the credential
//     (AZURE_POSTGRESQL_CLIENTID: that user-assigned managed identity).
//
// Otherwise the emulator from package entratest: an Entra ID token issuer,
// a credential on it for the user alice@contoso.com, and a PostgreSQL
// front on a loopback port that checks each login's token the way Azure
// does before relaying the session to a throwaway PostgreSQL started from
// the server binaries on this machine.
//
// Either way the program gets a connection string with no user and no
// password, and a credential: the two things entraauth needs.
package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// EmulatorUser is the user principal name of the emulator's principal,
// and so the current_user of a session on the emulator.
const EmulatorUser = "alice@contoso.com"

// Target is where to connect and how to get tokens for it.
type Target struct {
	// ConnString is a pgx connection string (it may be empty: pgx then
	// reads the PG… variables). It holds no password.
	ConnString string
	// Credential gets the Entra ID tokens.
	Credential azcore.TokenCredential
	// Emulated is true when the target is the local emulator.
	Emulated bool

	srv *entratest.Server
}

// Close stops the emulator, if the target is one. It is safe to call more
// than once.
func (t *Target) Close() error {
	if t.srv == nil {
		return nil
	}
	return t.srv.Close()
}

// Server returns the emulator, or nil when the target is not one.
func (t *Target) Server() *entratest.Server { return t.srv }

// Open returns the target the environment names, or starts the emulator,
// and writes one line to out saying which.
func Open(ctx context.Context, out io.Writer) (*Target, error) {
	switch {
	case os.Getenv("AZURE_POSTGRESQL_CONNECTIONSTRING") != "" || os.Getenv("AZURE_POSTGRESQL_HOST") != "":
		return serviceConnector(out)
	case os.Getenv("PGHOST") != "":
		return pgEnv(out)
	default:
		return emulator(ctx, out)
	}
}

// serviceConnector reads Azure Service Connector's variables.
func serviceConnector(out io.Writer) (*Target, error) {
	ec, err := entraauth.LoadEnv("")
	if err != nil {
		return nil, err
	}
	if ec.PasswordAuth {
		return nil, errors.New("AZURE_POSTGRESQL_* hold a password (Service Connector's secret mode): " +
			"these examples show Entra ID authentication, which needs no password")
	}
	fmt.Fprintf(out, "target: %s from Service Connector's AZURE_POSTGRESQL_* variables, credential: %s\n",
		orDefault(ec.Host, "(PGHOST)"), ec.CredentialKind)
	return &Target{ConnString: ec.ConnString, Credential: ec.Credential}, nil
}

// pgEnv uses the PG… variables with DefaultAzureCredential.
func pgEnv(out io.Writer) (*Target, error) {
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, err
	}
	connString := "" // pgx reads PGHOST, PGPORT, PGDATABASE, PGUSER, PGSSLMODE, …
	if os.Getenv("PGSSLMODE") == "" {
		// Azure's certificates chain to roots in the system pool.
		connString = "sslmode=verify-full"
	}
	fmt.Fprintf(out, "target: %s from PGHOST, credential: DefaultAzureCredential\n", os.Getenv("PGHOST"))
	return &Target{ConnString: connString, Credential: cred}, nil
}

// emulator starts the entratest emulator with one user principal.
func emulator(ctx context.Context, out io.Writer) (_ *Target, err error) {
	// The user name comes from the token; a PGUSER from the shell would
	// name someone the emulator does not know.
	if err := os.Unsetenv("PGUSER"); err != nil {
		return nil, err
	}
	iss, err := entratest.NewIssuer()
	if err != nil {
		return nil, err
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	srv, err := entratest.NewServer(startCtx, entratest.ServerConfig{Verifier: iss})
	if errors.Is(err, entratest.ErrNoPostgreSQL) {
		return nil, fmt.Errorf("%w\n\n"+
			"With no PGHOST or AZURE_POSTGRESQL_* variables set, the example runs against a local emulator\n"+
			"of Azure Database for PostgreSQL, which starts a throwaway PostgreSQL from the server binaries\n"+
			"on this machine. Install them:\n"+
			"  apt-get install postgresql       (Debian, Ubuntu)\n"+
			"  dnf install postgresql-server    (Fedora, RHEL)\n"+
			"  brew install postgresql          (macOS)\n"+
			"or set PG_BIN to the directory holding initdb and postgres", err)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = srv.Close()
		}
	}()
	alice := entratest.User(EmulatorUser)
	if err := AddPrincipal(ctx, srv, alice); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "target: local emulator of Azure Database for PostgreSQL at %s, credential: emulated Entra ID user %s "+
		"(set PGHOST or AZURE_POSTGRESQL_CONNECTIONSTRING to use Azure)\n", srv.Addr(), alice.UPN)
	return &Target{
		ConnString: srv.ConnString(), // host=127.0.0.1 port=… dbname=postgres sslmode=verify-full sslrootcert=…
		Credential: entratest.NewCredential(iss, alice),
		Emulated:   true,
		srv:        srv,
	}, nil
}

// AddPrincipal sets up the user principal p's role on the emulator srv as an Azure
// administrator would: the role named for p, bound to its object ID (as
// pgaadauth_create_principal does), allowed to create tables in schema
// public (GRANT CREATE ON SCHEMA public, which PostgreSQL 15 and later no
// longer give every role), so the migration examples can run.
func AddPrincipal(ctx context.Context, srv *entratest.Server, p entratest.Principal) error {
	if err := srv.AddRole(ctx, p.UPN, p.ObjectID); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, srv.AdminConnString())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "grant create on schema public to "+pgx.Identifier{p.UPN}.Sanitize())
	return err
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Main is an example's main: it runs run with a context that ends on
// Ctrl-C, writing to stdout, and exits with status 1 and the error on
// stderr if run fails.
func Main(run func(ctx context.Context, out io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
