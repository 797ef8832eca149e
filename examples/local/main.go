// Command local is entraauth's offline demo. It needs no Azure account,
// only the PostgreSQL server binaries (Debian/Ubuntu: apt-get install
// postgresql):
//
//	go run ./examples/local
//
// It starts, on this machine, the pieces of package entratest: an Entra ID
// token issuer with short-lived tokens, and a PostgreSQL front that checks
// each login's token the way Azure Database for PostgreSQL does (signature,
// audience, expiry, and the role registered for the token's principal)
// before relaying the session to a throwaway PostgreSQL. Then it runs a
// pgxpool and a database/sql DB against it, both authenticated by one
// entraauth.TokenSource, with connections that live two seconds, and
// prints a line a second while tokens and connections rotate underneath
// the queries. The exit status is 0 only if no query failed.
//
// Flags: -duration (default 30s), -workers (8), -token-lifetime (10s).
// Ctrl-C stops early and still prints the summary.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// connLifetime is how long a connection lives in both pools, so that new
// connections, each needing the current token, open all the time.
const connLifetime = 2 * time.Second

// options are the demo's flags.
type options struct {
	duration      time.Duration
	workers       int
	tokenLifetime time.Duration
}

// result is what a run did, as its summary prints it.
type result struct {
	elapsed         time.Duration
	poolQueries     int64
	dbQueries       int64
	failed          int64
	firstErr        error
	tokensMinted    int64
	credentialCalls int64
	server          entratest.ServerStats
	user            string
}

func main() {
	var opts options
	flag.DurationVar(&opts.duration, "duration", 30*time.Second, "how long to run")
	flag.IntVar(&opts.workers, "workers", 8, "goroutines running queries")
	flag.DurationVar(&opts.tokenLifetime, "token-lifetime", 10*time.Second, "lifetime of the emulated Entra tokens (Azure's live 60 to 90 minutes)")
	flag.Parse()

	// The user name comes from the token: a PGUSER from the shell would
	// name another one.
	_ = os.Unsetenv("PGUSER")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // a second Ctrl-C kills at once
	_, err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// run runs the demo until opts.duration has passed or ctx ends, writing
// progress and a summary to out. It returns an error if the emulator
// cannot start or any query failed.
func run(ctx context.Context, opts options, out io.Writer) (result, error) {
	switch {
	case opts.duration <= 0:
		return result{}, fmt.Errorf("-duration must be positive, got %v", opts.duration)
	case opts.workers < 1 || opts.workers > 64:
		return result{}, fmt.Errorf("-workers must be between 1 and 64, got %d", opts.workers)
	case opts.tokenLifetime < 2*time.Second:
		return result{}, fmt.Errorf("-token-lifetime must be at least 2s, got %v", opts.tokenLifetime)
	}

	// The emulator: an Entra ID token issuer, a credential on it for
	// alice, and a PostgreSQL that knows alice's role by her object ID,
	// as pgaadauth_create_principal registers it on Azure.
	iss, err := entratest.NewIssuer()
	if err != nil {
		return result{}, err
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	srv, err := entratest.NewServer(startCtx, entratest.ServerConfig{Verifier: iss})
	cancel()
	if errors.Is(err, entratest.ErrNoPostgreSQL) {
		return result{}, fmt.Errorf("%w\n\n"+
			"The demo starts a throwaway PostgreSQL from the server binaries on this machine. Install them:\n"+
			"  apt-get install postgresql       (Debian, Ubuntu)\n"+
			"  dnf install postgresql-server    (Fedora, RHEL)\n"+
			"  brew install postgresql          (macOS)\n"+
			"or set PG_BIN to the directory holding initdb and postgres", err)
	}
	if err != nil {
		return result{}, err
	}
	defer srv.Close()
	alice := entratest.User("alice@contoso.com")
	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		return result{}, err
	}
	cred := entratest.NewCredential(iss, alice)
	cred.SetLifetime(opts.tokenLifetime)

	// What an application writes, with azidentity.NewDefaultAzureCredential
	// for cred and the Azure server's host in the connection string. It
	// names no user and no password: "host=127.0.0.1 port=… dbname=postgres
	// sslmode=verify-full sslrootcert=…". The pool and the DB share one
	// token cache; entraauth.Hook(cred) and entraauth.Connector(dsn, cred)
	// would give each its own.
	dsn := srv.ConnString()
	ts := entraauth.NewTokenSource(cred, entraauth.WithRequireVerifiedTLS())
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return result{}, err
	}
	cfg.BeforeConnect = ts.BeforeConnect
	cfg.MaxConns = int32(opts.workers)
	cfg.MaxConnLifetime = connLifetime
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return result{}, err
	}
	defer pool.Close()
	db := sql.OpenDB(ts.Connector(dsn))
	defer db.Close()
	db.SetMaxOpenConns(opts.workers)
	db.SetMaxIdleConns(opts.workers)
	db.SetConnMaxLifetime(connLifetime)

	fmt.Fprintf(out, "entraauth local demo: no Azure, everything on this machine.\n"+
		"  Entra ID    an emulated issuer; tokens for %s live %v (Azure's live 60 to 90 minutes)\n"+
		"  PostgreSQL  %s checks each login's token like Azure Database for PostgreSQL, then relays to a throwaway PostgreSQL\n"+
		"  clients     a pgxpool and a database/sql DB sharing one entraauth.TokenSource; connections live %v\n"+
		"  load        %d workers for %v; Ctrl-C stops early\n\n",
		alice.UPN, opts.tokenLifetime, srv.Addr(), connLifetime, opts.workers, opts.duration)

	var (
		poolQueries, dbQueries, failed atomic.Int64
		firstErr                       atomic.Pointer[error]
		user                           atomic.Pointer[string]
	)
	query := func(usePool bool) {
		// Each query gets its own deadline, apart from ctx, so stopping
		// lets the queries in flight finish rather than fail.
		qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var name string
		var err error
		if usePool {
			poolQueries.Add(1)
			err = pool.QueryRow(qctx, "select current_user").Scan(&name)
		} else {
			dbQueries.Add(1)
			err = db.QueryRowContext(qctx, "select current_user").Scan(&name)
		}
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &err)
			return
		}
		if p := user.Load(); p == nil || *p != name {
			user.Store(&name)
		}
	}

	start := time.Now()
	runCtx, cancelRun := context.WithTimeout(ctx, opts.duration)
	defer cancelRun()
	var wg sync.WaitGroup
	for w := range opts.workers {
		wg.Go(func() {
			for i := w; runCtx.Err() == nil; i++ {
				query(i%2 == 0) // alternate between the pool and the DB
			}
		})
	}

	fmt.Fprintf(out, "%7s %9s %6s %13s %16s %15s %6s  %s\n",
		"elapsed", "queries", "errors", "tokens minted", "credential calls", "tokens accepted", "logins", "current_user")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-runCtx.Done():
			running = false
		case <-tick.C:
			st := srv.Stats()
			name := "-"
			if p := user.Load(); p != nil {
				name = *p
			}
			fmt.Fprintf(out, "%6ds %9d %6d %13d %16d %15d %6d  %s\n",
				int(time.Since(start).Round(time.Second)/time.Second), poolQueries.Load()+dbQueries.Load(), failed.Load(),
				iss.Minted(), cred.Calls(), st.DistinctTokens, st.Accepted, name)
		}
	}
	wg.Wait()

	res := result{
		elapsed:         time.Since(start),
		poolQueries:     poolQueries.Load(),
		dbQueries:       dbQueries.Load(),
		failed:          failed.Load(),
		tokensMinted:    iss.Minted(),
		credentialCalls: cred.Calls(),
		server:          srv.Stats(),
	}
	if p := firstErr.Load(); p != nil {
		res.firstErr = *p
	}
	if p := user.Load(); p != nil {
		res.user = *p
	}
	printSummary(out, res)
	if res.failed > 0 {
		return res, fmt.Errorf("%d of %d queries failed; the first: %w", res.failed, res.poolQueries+res.dbQueries, res.firstErr)
	}
	return res, nil
}

func printSummary(out io.Writer, r result) {
	st := r.server
	fmt.Fprintf(out, "\nsummary after %v:\n", r.elapsed.Round(100*time.Millisecond))
	fmt.Fprintf(out, "  queries  %d (%d through pgxpool, %d through database/sql), %d failed\n",
		r.poolQueries+r.dbQueries, r.poolQueries, r.dbQueries, r.failed)
	fmt.Fprintf(out, "  logins   %d accepted, %d rejected (%d with an expired token), %d tokens sent without TLS\n",
		st.Accepted, st.TotalRejected(), st.Rejected[entratest.RejectExpired], st.PlaintextPasswords)
	fmt.Fprintf(out, "  tokens   %d credential calls for %d logins: %d tokens minted, %d distinct accepted by the server\n",
		r.credentialCalls, st.Accepted, r.tokensMinted, st.DistinctTokens)
	fmt.Fprintf(out, "  user     %q, read from the token (the connection string names none)\n", r.user)
	if r.failed == 0 {
		fmt.Fprintln(out, "OK: no query failed while tokens and connections rotated underneath.")
	} else {
		fmt.Fprintf(out, "FAILED: %d queries failed; the first: %v\n", r.failed, r.firstErr)
	}
}
