package entraauth

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestUserInAQuotedValueIsNotANamedUser(t *testing.T) {
	noSSLEnv(t)
	osUser := osUserName()
	if osUser == "" {
		t.Skip("no OS user name")
	}
	for _, tc := range []struct {
		connString string
		want       string
	}{
		{"host=h sslmode=require application_name='nightly user=etl'", "alice@x.com"},
		{`host=h sslmode=require application_name=nightly\ user=etl`, "alice@x.com"}, // escaped space: one value
		{"host=h sslmode=require options='-c user=x'", "alice@x.com"},
		{"postgres://h/db?sslmode=require&application_name=user%3Detl", "alice@x.com"},
		{"postgres://h/db?sslmode=require&user=", "alice@x.com"}, // an empty user names none
		{"host=h sslmode=require user=''", "alice@x.com"},
		{"host=h sslmode=require user=" + osUser, osUser},
		{"postgres://" + osUser + "@h/db?sslmode=require", osUser},
		{"postgres://h/db?sslmode=require&user=" + osUser, osUser},
	} {
		cfg := connConfig(t, tc.connString)
		ts := NewTokenSource(newFakeCredential("alice@x.com"))
		if err := ts.BeforeConnect(context.Background(), cfg); err != nil || cfg.User != tc.want {
			t.Errorf("%s: user = %q, %v; want %q", tc.connString, cfg.User, err, tc.want)
		}
	}
}

func TestServiceFileUserIsANamedUser(t *testing.T) {
	noSSLEnv(t)
	osUser := osUserName()
	if osUser == "" {
		t.Skip("no OS user name")
	}
	file := filepath.Join(t.TempDir(), "pg_service.conf")
	if err := os.WriteFile(file, []byte("[named]\nuser="+osUser+"\nsslmode=require\n[unnamed]\nsslmode=require\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGSERVICEFILE", file)
	for service, want := range map[string]string{"named": osUser, "unnamed": "alice@x.com"} {
		cfg := connConfig(t, "host=h service="+service)
		ts := NewTokenSource(newFakeCredential("alice@x.com"))
		if err := ts.BeforeConnect(context.Background(), cfg); err != nil || cfg.User != want {
			t.Errorf("service %s: user = %q, %v; want %q", service, cfg.User, err, want)
		}
	}
	t.Setenv("PGSERVICE", "named")
	cfg := connConfig(t, "host=h")
	ts := NewTokenSource(newFakeCredential("alice@x.com"))
	if err := ts.BeforeConnect(context.Background(), cfg); err != nil || cfg.User != osUser {
		t.Errorf("PGSERVICE: user = %q, %v; want %q", cfg.User, err, osUser)
	}
}

func TestPasswordInTheConnectionStringIsRefused(t *testing.T) {
	noSSLEnv(t)
	const secret = "hunter2-secret"
	for _, connString := range []string{
		"host=h sslmode=require user=u password=" + secret,
		"host=h sslmode=require user=u password='" + secret + "'",
		"postgres://u:" + secret + "@h/db?sslmode=require",
		"postgres://u@h/db?sslmode=require&password=" + secret,
	} {
		cred := newFakeCredential("a@x.com")
		err := Hook(cred)(context.Background(), connConfig(t, connString))
		if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "remove the password") ||
			!strings.Contains(err.Error(), "pgx alone") || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: err = %v, want ErrInvalidOption saying what to do, without the password", connString, err)
		}
		db := sql.OpenDB(Connector(connString, cred))
		err = db.PingContext(context.Background())
		db.Close()
		if !errors.Is(err, ErrInvalidOption) || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: Connector: err = %v, want ErrInvalidOption", connString, err)
		}
		if n := cred.calls.Load(); n != 0 {
			t.Errorf("%s: credential called %d times for a refused configuration", connString, n)
		}
	}
}

func TestPasswordFromEnvironmentOrPassfileIsNotRefused(t *testing.T) {
	noSSLEnv(t)
	t.Setenv("PGPASSWORD", "from-the-environment")
	cred := newFakeCredential("a@x.com")
	cfg := connConfig(t, "host=h sslmode=require user=u")
	if cfg.Password != "from-the-environment" {
		t.Fatalf("pgx did not read PGPASSWORD: %q", cfg.Password)
	}
	if err := Hook(cred)(context.Background(), cfg); err != nil || cfg.Password != cred.allMinted()[0] {
		t.Fatalf("PGPASSWORD: err = %v, password replaced by the token: %v", err, cfg.Password == cred.allMinted()[0])
	}

	t.Setenv("PGPASSWORD", "")
	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte("*:*:*:u:from-the-passfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", passfile)
	cfg = connConfig(t, "host=h sslmode=require user=u")
	if cfg.Password != "from-the-passfile" {
		t.Fatalf("pgx did not read the passfile: %q", cfg.Password)
	}
	if err := Hook(cred)(context.Background(), cfg); err != nil {
		t.Fatalf(".pgpass: %v", err)
	}

	// Code that clears the password (as pgentra proxy does with its
	// upstream string) has dealt with it.
	cfg = connConfig(t, "host=h sslmode=require user=u password=p")
	cfg.Password = ""
	if err := Hook(cred)(context.Background(), cfg); err != nil {
		t.Fatalf("password cleared in code: %v", err)
	}
}

func TestConnectorParseErrorHoldsNoPassword(t *testing.T) {
	const secret = "hunter2-secret"
	for _, connString := range []string{
		"host=h port=notaport password=" + secret,
		"host=h password='" + secret,                // unterminated quote
		"host=h password=my " + secret + " x=1",     // a password with a space, unquoted
		"postgres://u:" + secret + "@h:notaport/db", // bad port in a URL
	} {
		db := sql.OpenDB(Connector(connString, newFakeCredential("a")))
		err := db.PingContext(context.Background())
		db.Close()
		if !errors.Is(err, ErrInvalidConnString) {
			t.Errorf("%q: err = %v, want ErrInvalidConnString", connString, err)
			continue
		}
		var pce *pgconn.ParseConfigError
		if errors.As(err, &pce) {
			t.Errorf("%q: errors.As reaches pgx's ParseConfigError, whose ConnString holds the password", connString)
		}
		for e := error(err); e != nil; e = errors.Unwrap(e) {
			if strings.Contains(e.Error(), secret) {
				t.Errorf("%q: the error chain holds the password: %v", connString, e)
			}
		}
	}
}

func TestBeforeConnectAllocatesNothingWithSeveralPools(t *testing.T) {
	noSSLEnv(t)
	ts, _, _ := newClockedSource(t, time.Hour)
	// Two pools (and a database/sql DB) sharing one TokenSource, as the
	// README shows: their connects interleave.
	shared := []string{
		"host=srv.postgres.database.azure.com dbname=app sslmode=verify-full",
		"host=srv.postgres.database.azure.com dbname=reports sslmode=verify-full",
		"host=srv.postgres.database.azure.com dbname=app user=named",
		"host=srv.postgres.database.azure.com dbname=other",
	}
	var configs []func()
	for _, s := range shared {
		base := connConfig(t, s)
		connect := func() {
			cfg := *base
			if err := ts.BeforeConnect(context.Background(), &cfg); err != nil {
				t.Fatal(err)
			}
		}
		connect()
		configs = append(configs, connect)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for _, connect := range configs {
			connect()
		}
	})
	if allocs != 0 {
		t.Fatalf("%d pools sharing a TokenSource: %.1f allocations per round of connects, want 0", len(configs), allocs)
	}
}

// TestConcurrentFirstConnectsShareOneCacheEntry runs the first connects of
// several connection strings at once on new TokenSources, many times: each
// string must end up in the cache once, and each connect must see its own
// string's facts.
func TestConcurrentFirstConnectsShareOneCacheEntry(t *testing.T) {
	noSSLEnv(t)
	strs := []string{
		"host=srv.postgres.database.azure.com dbname=a sslmode=verify-full user=alice",
		"host=srv.postgres.database.azure.com dbname=b sslmode=verify-full",
		"host=srv.postgres.database.azure.com dbname=c user=carol",
		"host=srv.postgres.database.azure.com dbname=d",
	}
	want := []string{"alice", "token@x.com", "carol", "token@x.com"}
	bases := make([]*pgx.ConnConfig, len(strs))
	for i, s := range strs {
		bases[i] = connConfig(t, s)
	}
	ctx := context.Background()
	for trial := range 300 {
		ts := NewTokenSource(newFakeCredential("token@x.com"))
		if _, err := ts.Token(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 16 {
			wg.Go(func() {
				i := g % len(bases)
				cfg := *bases[i]
				if err := ts.BeforeConnect(ctx, &cfg); err != nil || cfg.User != want[i] {
					t.Errorf("trial %d, %s: user = %q, %v; want %q", trial, strs[i], cfg.User, err, want[i])
				}
				if !verifiesHost(cfg.TLSConfig) {
					t.Errorf("trial %d, %s: TLS does not verify the host", trial, strs[i])
				}
			})
		}
		wg.Wait()
		c := ts.configs.Load()
		if c == nil || len(c.facts) != len(strs) {
			t.Fatalf("trial %d: %d cached facts, want %d", trial, len(c.facts), len(strs))
		}
	}
}
