package entraauth_test

// Multi-host connection strings (host=a,b) end to end: failover past a
// host that is down, target_session_attrs across a primary and a
// standby-looking server, one token for the hosts of one cloud, and a
// clear error for hosts of two clouds. Each emulated host is an entratest
// server in front of a throwaway PostgreSQL of its own; tokens come from
// the real azidentity.AzureCLICredential running the kit's fake az.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// multiHost is a set of emulated hosts with one issuer, and an Azure CLI
// credential logged in as alice.
type multiHost struct {
	iss    *entratest.Issuer
	alice  entratest.Principal
	az     *entratest.AzureCLI
	cred   *azidentity.AzureCLICredential
	caFile string // every host's CA, for sslrootcert
}

// newMultiHost starts the issuer and the fake az, and runs az through the
// real AzureCLICredential.
func newMultiHost(t *testing.T) *multiHost {
	t.Helper()
	clearAzureEnv(t)
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	m := &multiHost{iss: iss, alice: entratest.User("multi-alice@contoso.com")}
	m.az, err = entratest.NewAzureCLI(iss, m.alice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.az.Close)
	m.az.Setenv(t)
	if m.cred, err = azidentity.NewAzureCLICredential(nil); err != nil {
		t.Fatal(err)
	}
	m.caFile = filepath.Join(t.TempDir(), "ca.pem")
	return m
}

// host starts an emulated host, named name in its backend's
// multihost_whoami table, with a role for alice, and adds its CA to
// m.caFile.
func (m *multiHost) host(t *testing.T, name string) *entratest.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logs := &logLines{}
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: m.iss, Logf: logs.logf})
	skipOrFailNoPG(t, err)
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("host %s log:\n%s", name, logs)
		}
	})
	addRole(t, srv, m.alice.UPN, m.alice.ObjectID)
	adminExec(t, srv,
		"CREATE TABLE multihost_whoami (name text)",
		"INSERT INTO multihost_whoami VALUES ('"+name+"')",
		"GRANT SELECT ON multihost_whoami TO PUBLIC",
	)
	ca, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.caFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(ca); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return srv
}

// makeStandbyLike makes srv's sessions of role answer pgx's
// target_session_attrs checks as a hot standby does:
// transaction_read_only is on (read-write, read-only) and
// pg_is_in_recovery() is true (standby, prefer-standby, primary). The
// second is a function of that name in a schema searched before
// pg_catalog, as pgx calls it unqualified; a real standby needs
// replication, which the kit does not set up.
func makeStandbyLike(t *testing.T, srv *entratest.Server, role string) {
	t.Helper()
	ident := pgx.Identifier{role}.Sanitize()
	adminExec(t, srv,
		"CREATE SCHEMA standby_look",
		"CREATE FUNCTION standby_look.pg_is_in_recovery() RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"GRANT USAGE ON SCHEMA standby_look TO PUBLIC",
		"ALTER ROLE "+ident+" SET search_path = standby_look, pg_catalog, public",
		"ALTER ROLE "+ident+" SET default_transaction_read_only = on",
	)
}

// adminExec runs statements as the backend's superuser.
func adminExec(t *testing.T, srv *entratest.Server, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.AdminConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// sqlOpen opens a database/sql pool on c, closed with the test.
func sqlOpen(t *testing.T, c driver.Connector) *sql.DB {
	t.Helper()
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db
}

// skipOrFailNoPG is pgtest.SkipOrFail for entratest.NewServer's error.
func skipOrFailNoPG(t *testing.T, err error) {
	t.Helper()
	if err != nil && errors.Is(err, entratest.ErrNoPostgreSQL) && os.Getenv("ENTRAAUTH_REQUIRE_PG") != "1" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// connString returns a verify-full connection string for hosts
// ("host:port" each) with no user and no password.
func (m *multiHost) connString(extra string, hosts ...string) string {
	var names, ports []string
	for _, h := range hosts {
		name, port, _ := net.SplitHostPort(h)
		names, ports = append(names, name), append(ports, port)
	}
	return fmt.Sprintf("host=%s port=%s dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=20 %s",
		strings.Join(names, ","), strings.Join(ports, ","), m.caFile, extra)
}

// downAddr returns a loopback address where nothing listens.
func downAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// whoami returns the name of the host a connection landed on, and its
// current_user.
func whoami(ctx context.Context, t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (host, user string) {
	t.Helper()
	if err := q.QueryRow(ctx, "SELECT name, current_user FROM multihost_whoami").Scan(&host, &user); err != nil {
		t.Fatal(err)
	}
	return host, user
}

// TestMultiHostFirstHostDown: with host=a,b and a down, a pgx pool and a
// database/sql pool reach b, which gets a valid token over TLS.
func TestMultiHostFirstHostDown(t *testing.T) {
	m := newMultiHost(t)
	b := m.host(t, "b")
	dsn := m.connString("", downAddr(t), b.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pool := newPool(t, dsn, entraauth.Hook(m.cred, entraauth.WithRequireVerifiedTLS()), nil)
	if host, user := whoami(ctx, t, pool); host != "b" || user != m.alice.UPN {
		t.Errorf("pgx pool: on host %q as %q, want b as %q", host, user, m.alice.UPN)
	}

	db := sqlOpen(t, entraauth.Connector(dsn, m.cred))
	var host, user string
	if err := db.QueryRowContext(ctx, "SELECT name, current_user FROM multihost_whoami").Scan(&host, &user); err != nil {
		t.Fatal(err)
	}
	if host != "b" || user != m.alice.UPN {
		t.Errorf("database/sql: on host %q as %q, want b as %q", host, user, m.alice.UPN)
	}

	st := b.Stats()
	if st.Accepted != 2 || st.TotalRejected() != 0 || st.PlaintextPasswords != 0 {
		t.Errorf("host b: %d logins, %d rejected, %d plaintext passwords; want 2, 0, 0", st.Accepted, st.TotalRejected(), st.PlaintextPasswords)
	}
	if got := m.az.Invocations(); got != 2 {
		t.Errorf("az ran %d times, want 2 (one per TokenSource)", got)
	}
}

// TestMultiHostTargetSessionAttrs: across a primary and a standby-looking
// host, in either order, read-write lands on the primary and
// prefer-standby on the standby, or on the primary when the standby is
// down; every host that sees a login gets the one token of the pool's
// TokenSource.
func TestMultiHostTargetSessionAttrs(t *testing.T) {
	m := newMultiHost(t)
	primary, standby := m.host(t, "primary"), m.host(t, "standby")
	makeStandbyLike(t, standby, m.alice.UPN)
	down := downAddr(t)
	hook := entraauth.Hook(m.cred, entraauth.WithRequireVerifiedTLS())

	for _, c := range []struct {
		attrs string
		hosts []string
		want  string
	}{
		{"read-write", []string{standby.Addr(), primary.Addr()}, "primary"},
		{"read-write", []string{primary.Addr(), standby.Addr()}, "primary"},
		{"read-write", []string{down, standby.Addr(), primary.Addr()}, "primary"},
		{"prefer-standby", []string{primary.Addr(), standby.Addr()}, "standby"},
		{"prefer-standby", []string{standby.Addr(), primary.Addr()}, "standby"},
		{"prefer-standby", []string{primary.Addr(), down}, "primary"},
		{"standby", []string{primary.Addr(), standby.Addr()}, "standby"},
		{"primary", []string{standby.Addr(), primary.Addr()}, "primary"},
		{"read-only", []string{primary.Addr(), standby.Addr()}, "standby"},
	} {
		name := fmt.Sprintf("%s %s", c.attrs, strings.Join(c.hosts, ","))
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pool := newPool(t, m.connString("target_session_attrs="+c.attrs, c.hosts...), hook, nil)
			if host, user := whoami(ctx, t, pool); host != c.want || user != m.alice.UPN {
				t.Errorf("on host %q as %q, want %s as %q", host, user, c.want, m.alice.UPN)
			}
		})
	}
	for _, srv := range []*entratest.Server{primary, standby} {
		st := srv.Stats()
		if st.Accepted == 0 || st.DistinctTokens != 1 || st.TotalRejected() != 0 || st.PlaintextPasswords != 0 {
			t.Errorf("%s: %d logins with %d distinct tokens, %d rejected, %d plaintext; want some logins with 1 token, 0, 0",
				srv.Addr(), st.Accepted, st.DistinctTokens, st.TotalRejected(), st.PlaintextPasswords)
		}
	}
	if got := m.az.Invocations(); got != 1 {
		t.Errorf("az ran %d times, want 1: the hosts of one cloud share one token", got)
	}
}

// TestMultiHostOneCloudOneToken: two host names of one cloud (127.0.0.1
// and localhost) in one string, both reached by one pool, share one token
// from one credential call.
func TestMultiHostOneCloudOneToken(t *testing.T) {
	m := newMultiHost(t)
	a, b := m.host(t, "a"), m.host(t, "b")
	_, bPort, _ := net.SplitHostPort(b.Addr())
	dsn := m.connString("", a.Addr(), net.JoinHostPort("localhost", bPort))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := newPool(t, dsn, entraauth.Hook(m.cred, entraauth.WithRequireVerifiedTLS()), func(cfg *pgxpool.Config) {
		cfg.MaxConns = 4
	})

	// Four connections on a, then a goes down and four more land on b.
	seen := map[string]int{}
	var held []*pgxpool.Conn
	for range 4 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		host, _ := whoami(ctx, t, c)
		seen[host]++
	}
	for _, c := range held {
		c.Release()
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // drop a's connections
	held = held[:0]
	for range 4 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		host, _ := whoami(ctx, t, c)
		seen[host]++
	}
	for _, c := range held {
		c.Release()
	}
	if seen["a"] != 4 || seen["b"] != 4 {
		t.Errorf("connections per host: %v, want a:4 b:4", seen)
	}
	for name, srv := range map[string]*entratest.Server{"a": a, "b": b} {
		if st := srv.Stats(); st.Accepted != 4 || st.DistinctTokens != 1 {
			t.Errorf("host %s: %d logins with %d distinct tokens, want 4 with 1", name, st.Accepted, st.DistinctTokens)
		}
	}
	if got := m.az.Invocations(); got != 1 {
		t.Errorf("az ran %d times, want 1", got)
	}
}

// TestMultiHostTwoCloudsIsAClearError: a string naming hosts of two Azure
// clouds, whose tokens have different scopes, fails before any token is
// fetched or anything is dialed, with ErrScopeMismatch naming both hosts.
// With WithScope the user has chosen one scope for all hosts, and it is
// not an error.
func TestMultiHostTwoCloudsIsAClearError(t *testing.T) {
	const (
		public = "srv.postgres.database.azure.com"
		china  = "srv.postgres.database.chinacloudapi.cn"
		usgov  = "srv.postgres.database.usgovcloudapi.net"
	)
	for _, hosts := range [][]string{{public, china}, {china, public}, {china, china, usgov}, {public, "localhost", china}} {
		t.Run(strings.Join(hosts, ","), func(t *testing.T) {
			iss, err := entratest.NewIssuer()
			if err != nil {
				t.Fatal(err)
			}
			cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))
			var dials atomic.Int64
			cfg, err := pgxpool.ParseConfig("host=" + strings.Join(hosts, ",") + " dbname=postgres connect_timeout=5")
			if err != nil {
				t.Fatal(err)
			}
			cfg.ConnConfig.LookupFunc = func(ctx context.Context, host string) ([]string, error) {
				dials.Add(1)
				return nil, errors.New("no network in this test")
			}
			cfg.BeforeConnect = entraauth.Hook(cred)
			pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			err = pool.Ping(context.Background())
			if !errors.Is(err, entraauth.ErrScopeMismatch) {
				t.Fatalf("err = %v, want ErrScopeMismatch", err)
			}
			for _, want := range []string{hosts[0], "chinacloudapi.cn", "one cloud"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if cred.Calls() != 0 || dials.Load() != 0 {
				t.Errorf("%d credential calls and %d host lookups before the error, want none", cred.Calls(), dials.Load())
			}
		})
	}

	t.Run("WithScope", func(t *testing.T) {
		iss, err := entratest.NewIssuer()
		if err != nil {
			t.Fatal(err)
		}
		cred := entratest.NewCredential(iss, entratest.User("alice@contoso.com"))
		cfg, err := pgxpool.ParseConfig("host=" + public + "," + china + " dbname=postgres connect_timeout=5")
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.LookupFunc = func(ctx context.Context, host string) ([]string, error) {
			return nil, errors.New("no network in this test")
		}
		cfg.BeforeConnect = entraauth.Hook(cred, entraauth.WithScope(entraauth.ScopeChina))
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		if err := pool.Ping(context.Background()); err == nil || errors.Is(err, entraauth.ErrScopeMismatch) {
			t.Fatalf("err = %v, want the lookup failure", err)
		}
		if cred.Calls() != 1 {
			t.Errorf("%d credential calls, want 1", cred.Calls())
		}
	})
}
