// Command quickstart connects to Azure Database for PostgreSQL with a
// Microsoft Entra ID token, through a pgx pool and through database/sql,
// and prints who it is connected as. It is the shortest real program on
// entraauth:
//
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=postgres go run ./examples/quickstart
//
// The server and database come from the PG… environment variables (PGHOST,
// PGPORT, PGDATABASE, PGSSLROOTCERT); the token from
// azidentity.DefaultAzureCredential, which tries, in order, the
// environment's service principal, workload identity on AKS, a managed
// identity and the developer tools you are signed in to (az login, azd auth
// login). The user name is read from the token unless PGUSER names one;
// sslmode is verify-full unless PGSSLMODE says otherwise.
//
// For a run without Azure, see examples/local.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgentra/entraauth"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// errNoHost says what to set when PGHOST is missing.
var errNoHost = errors.New("set PGHOST to your server, such as mysrv.postgres.database.azure.com " +
	"(and PGDATABASE); for a demo without Azure run: go run ./examples/local")

// run connects through a pgx pool and through database/sql and prints
// the user each is connected as.
func run(ctx context.Context, out io.Writer) error {
	if os.Getenv("PGHOST") == "" {
		return errNoHost
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return err
	}
	// Everything else comes from the PG… variables; a connection string
	// would name the host, database and sslmode here.
	connString := ""
	if os.Getenv("PGSSLMODE") == "" {
		connString = "sslmode=verify-full"
	}

	// pgx pool: one line, BeforeConnect.
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return err
	}
	cfg.BeforeConnect = entraauth.Hook(cred)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	var user, version string
	if err := pool.QueryRow(ctx, "select current_user, version()").Scan(&user, &version); err != nil {
		return fmt.Errorf("pgxpool: %w", err)
	}
	fmt.Fprintf(out, "pgxpool:      connected to %s as %s\n              %s\n", cfg.ConnConfig.Host, user, version)

	// database/sql (GORM, sqlx, bun, ent): one line, the Connector.
	db := sql.OpenDB(entraauth.Connector(connString, cred))
	defer db.Close()
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil {
		return fmt.Errorf("database/sql: %w", err)
	}
	fmt.Fprintf(out, "database/sql: connected as %s\n", user)
	return nil
}
