// Package exampletest runs the example programs in tests: against the
// emulator, as they run with nothing configured, and with the variables
// that point them at Azure, where an emulator poses as the Azure server and
// a fake az answers the real azidentity.DefaultAzureCredential.
//
// Without PostgreSQL server binaries the tests skip, unless
// ENTRAAUTH_REQUIRE_PG=1, where they fail.
package exampletest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
	"github.com/pgentra/entraauth/proxy"
)

// RunFunc is an example program's body: connect, query current_user
// through the program's library, print it to out.
type RunFunc func(ctx context.Context, out io.Writer) error

// requireEnv turns a missing PostgreSQL from a skip into a failure when
// set to "1" (.ci/run sets it).
const requireEnv = "ENTRAAUTH_REQUIRE_PG"

// wantLine is what every example prints when it has queried current_user
// as the emulator's principal.
const wantLine = "current_user: " + target.EmulatorUser

// targetEnv lists the variables that make an example connect to Azure,
// and those that pick DefaultAzureCredential's credential. Tests clear
// them so that only what a test sets counts.
var targetEnv = []string{
	"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT", "PGSERVICE",
	"AZURE_POSTGRESQL_CONNECTIONSTRING", "AZURE_POSTGRESQL_HOST", "AZURE_POSTGRESQL_PORT",
	"AZURE_POSTGRESQL_DATABASE", "AZURE_POSTGRESQL_NAME", "AZURE_POSTGRESQL_USER", "AZURE_POSTGRESQL_USERNAME",
	"AZURE_POSTGRESQL_PASSWORD", "AZURE_POSTGRESQL_SSL", "AZURE_POSTGRESQL_SSLMODE",
	"AZURE_POSTGRESQL_CLIENTID", "AZURE_POSTGRESQL_CLIENTSECRET", "AZURE_POSTGRESQL_TENANTID",
	"AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE",
	"AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
}

// clearEnv empties the targetEnv variables for the rest of the test.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, k := range targetEnv {
		t.Setenv(k, "")
	}
}

// skipOrFail skips t when err says there are no PostgreSQL binaries,
// unless ENTRAAUTH_REQUIRE_PG=1; any other error fails it.
func skipOrFail(t *testing.T, err error, out string) {
	t.Helper()
	switch {
	case err == nil:
	case errors.Is(err, entratest.ErrNoPostgreSQL) && os.Getenv(requireEnv) != "1":
		t.Skipf("skipping: %v", err)
	case errors.Is(err, entratest.ErrNoPostgreSQL):
		t.Fatalf("%v (PostgreSQL is required because %s=1)", err, requireEnv)
	default:
		t.Fatalf("%v\noutput:\n%s", err, out)
	}
}

// Emulator runs the program with no Azure server configured, as it runs
// on a laptop, and checks that it used the emulator and printed the
// emulator principal's name as current_user.
func Emulator(t *testing.T, run RunFunc) {
	t.Helper()
	clearEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, &out)
	skipOrFail(t, err, out.String())
	t.Logf("output:\n%s", &out)
	if !strings.HasPrefix(out.String(), "target: local emulator") {
		t.Errorf("output does not start by naming the emulator as the target:\n%s", &out)
	}
	checkUser(t, out.String())
}

// Azure runs the program configured for Azure, once with PGHOST and once
// with Service Connector's AZURE_POSTGRESQL_CONNECTIONSTRING. An emulator
// started here stands in for the Azure server, and a fake az on PATH for
// the Azure CLI the real DefaultAzureCredential asks
// (AZURE_TOKEN_CREDENTIALS=AzureCLICredential, as the managed identity
// endpoint of these machines would otherwise end its chain).
func Azure(t *testing.T, run RunFunc) {
	t.Helper()
	clearEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss})
	skipOrFail(t, err, "")
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	alice := entratest.User(target.EmulatorUser)
	if err := target.AddPrincipal(ctx, srv, alice); err != nil {
		t.Fatal(err)
	}
	az, err := entratest.NewAzureCLI(iss, alice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Close)
	az.Setenv(t)
	t.Setenv("AZURE_TOKEN_CREDENTIALS", "AzureCLICredential")

	modes := []struct {
		name, wantTarget string
		env              map[string]string
	}{
		{"PGHOST", "target: 127.0.0.1 from PGHOST, credential: DefaultAzureCredential", map[string]string{
			"PGHOST": srv.Host(), "PGPORT": strconv.Itoa(int(srv.Port())), "PGDATABASE": "postgres",
			"PGSSLMODE": "verify-full", "PGSSLROOTCERT": srv.CAFile(),
		}},
		{"ServiceConnector", "target: 127.0.0.1 from Service Connector's AZURE_POSTGRESQL_* variables, credential: default", map[string]string{
			"AZURE_POSTGRESQL_CONNECTIONSTRING": srv.ConnString(),
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for k, v := range m.env {
				t.Setenv(k, v)
			}
			before := srv.Stats().Accepted
			var out bytes.Buffer
			if err := run(ctx, &out); err != nil {
				t.Fatalf("%v\noutput:\n%s", err, &out)
			}
			t.Logf("output:\n%s", &out)
			if !strings.HasPrefix(out.String(), m.wantTarget+"\n") {
				t.Errorf("output does not start with %q:\n%s", m.wantTarget, &out)
			}
			checkUser(t, out.String())
			if srv.Stats().Accepted == before {
				t.Error("the server standing in for Azure accepted no login")
			}
		})
	}
	if az.Invocations() == 0 {
		t.Error("DefaultAzureCredential never ran az")
	}
}

// checkUser checks that out has the line the program prints after its
// query, naming the emulator's principal.
func checkUser(t *testing.T, out string) {
	t.Helper()
	for line := range strings.Lines(out) {
		if strings.TrimRight(line, "\n") == wantLine {
			return
		}
	}
	t.Errorf("no line %q in the output:\n%s", wantLine, out)
}

// UpDownFunc is a migration program's body after its driver registration:
// open the database by a driver name and a connection string, as migration
// tools do, migrate up, print current_user to out, migrate back down.
type UpDownFunc func(ctx context.Context, out io.Writer, driverName, connString string) error

// registrations counts TokensRotating's driver registrations.
var registrations atomic.Int64

// TokensRotating runs upDown against the emulator again and again for
// eight seconds, through one driver registered with entraauth.RegisterDriver
// on a credential whose tokens live two seconds, so tokens rotate while the
// migrations run. Every run must succeed as the emulator's principal, the
// server must reject no login and see at least three tokens, and the
// credential must be asked at most once per 0.4 token lives: the runs'
// handles share the driver's TokenSource.
func TokensRotating(t *testing.T, upDown UpDownFunc) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs for 8 seconds; skipped with -short")
	}
	const (
		tokenLife = 2 * time.Second
		runFor    = 8 * time.Second
	)
	clearEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	tg, err := target.Open(ctx, &out)
	skipOrFail(t, err, out.String())
	t.Cleanup(func() {
		if err := tg.Close(); err != nil {
			t.Error(err)
		}
	})
	cred, ok := tg.Credential.(*entratest.Credential)
	if !ok || tg.Server() == nil {
		t.Fatalf("target is not the emulator:\n%s", &out)
	}
	cred.SetLifetime(tokenLife)
	// A name per call: registrations outlive the test, and -count repeats it.
	driverName := "entraauth-rotating-" + strconv.FormatInt(registrations.Add(1), 10)
	if err := entraauth.RegisterDriver(driverName, cred, entraauth.WithRequireVerifiedTLS()); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	runs := 0
	for time.Since(start) < runFor {
		out.Reset()
		if err := upDown(ctx, &out, driverName, tg.ConnString); err != nil {
			t.Fatalf("run %d, %v in: %v\noutput:\n%s", runs+1, time.Since(start).Round(time.Millisecond), err, &out)
		}
		checkUser(t, out.String())
		runs++
	}
	elapsed := time.Since(start)

	st := tg.Server().Stats()
	t.Logf("%d runs up and down in %v; server: %d logins, %d distinct tokens, rejected %v; credential calls %d",
		runs, elapsed.Round(time.Millisecond), st.Accepted, st.DistinctTokens, st.Rejected, cred.Calls())
	if n := st.TotalRejected(); n != 0 {
		t.Errorf("server rejected %d logins (%v), want 0", n, st.Rejected)
	}
	if st.PlaintextPasswords != 0 {
		t.Errorf("%d tokens arrived without TLS", st.PlaintextPasswords)
	}
	if st.DistinctTokens < 3 {
		t.Errorf("server saw %d distinct tokens, want at least 3 (tokens live %v)", st.DistinctTokens, tokenLife)
	}
	if runs < 3 {
		t.Errorf("%d runs in %v, want at least 3", runs, elapsed)
	}
	if maxCalls := int64(elapsed/(tokenLife*4/10)) + 1; cred.Calls() > maxCalls {
		t.Errorf("credential called %d times in %v, want at most %d (one TokenSource for every run)", cred.Calls(), elapsed, maxCalls)
	}
}

// ThroughProxy runs upDown as the tools that take only a URL run: with
// pgx's own driver ("pgx", which the goose CLI opens) and a URL naming no
// password, against the proxy `pgentra proxy` runs (package proxy) on a
// loopback port, in front of the emulator. The proxy logs each session in
// with a token; the program must run as the emulator's principal.
func ThroughProxy(t *testing.T, upDown UpDownFunc) {
	t.Helper()
	clearEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	tg, err := target.Open(ctx, &out)
	skipOrFail(t, err, out.String())
	t.Cleanup(func() {
		if err := tg.Close(); err != nil {
			t.Error(err)
		}
	})
	if tg.Server() == nil {
		t.Fatalf("target is not the emulator:\n%s", &out)
	}
	p, err := proxy.New(proxy.Config{
		Upstream:    tg.ConnString,
		TokenSource: entraauth.NewTokenSource(tg.Credential, entraauth.WithRequireVerifiedTLS()),
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})

	url := "postgres://" + l.Addr().String() + "/postgres?sslmode=disable"
	before := tg.Server().Stats().Accepted
	out.Reset()
	if err := upDown(ctx, &out, "pgx", url); err != nil {
		t.Fatalf("%v\noutput:\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	checkUser(t, out.String())
	if st := tg.Server().Stats(); st.Accepted == before || st.TotalRejected() != 0 {
		t.Errorf("emulator: %d logins through the proxy, rejected %v; want some, none", st.Accepted-before, st.Rejected)
	}
}
