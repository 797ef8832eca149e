package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestQuickstartWithManagedIdentity runs the quickstart as it runs on
// Azure App Service: the real DefaultAzureCredential finds the managed
// identity endpoint (here the emulator), the server comes from PG…
// variables (here the emulated Azure server, verified with its CA), and the
// user name is the identity's, found by entraauth.
func TestQuickstartWithManagedIdentity(t *testing.T) {
	for _, k := range []string{"AZURE_TOKEN_CREDENTIALS", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
		"AZURE_FEDERATED_TOKEN_FILE", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	srv, mi := newAzure(t, "quickstart-app")
	mi.Setenv(t)
	t.Setenv("PGHOST", srv.Host())
	t.Setenv("PGPORT", fmt.Sprint(srv.Port()))
	t.Setenv("PGDATABASE", "postgres")
	t.Setenv("PGSSLROOTCERT", srv.CAFile())

	var out bytes.Buffer
	if err := run(context.Background(), &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	for _, want := range []string{`(?m)^pgxpool: .* as quickstart-app$`, `(?m)^database/sql: connected as quickstart-app$`} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output does not match %s:\n%s", want, &out)
		}
	}
	if st := srv.Stats(); st.Accepted != 2 || st.TotalRejected() != 0 || st.PlaintextPasswords != 0 {
		t.Errorf("server stats %+v, want 2 logins over TLS and no rejection", st)
	}
}

// TestQuickstartVerifiesTheServer: with the default sslmode, verify-full,
// a server whose certificate does not chain to a trusted root (here the
// emulator's own CA, absent from the system roots) fails the TLS
// handshake, and so never receives the token.
func TestQuickstartVerifiesTheServer(t *testing.T) {
	srv, mi := newAzure(t, "quickstart-app")
	mi.Setenv(t)
	t.Setenv("PGHOST", srv.Host())
	t.Setenv("PGPORT", fmt.Sprint(srv.Port()))
	t.Setenv("PGDATABASE", "postgres")
	t.Setenv("PGSSLROOTCERT", "system")

	err := run(context.Background(), new(bytes.Buffer))
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("run against a server signed by an unknown CA: %v; want a certificate verification error", err)
	}
	if st := srv.Stats(); st.Accepted != 0 || st.PlaintextPasswords != 0 || st.DistinctTokens != 0 {
		t.Errorf("server stats %+v, want no token received", st)
	}
}

// newAzure starts an emulated Azure: a server that checks tokens like Azure
// Database for PostgreSQL, with a role for the managed identity name, and
// the App Service managed identity endpoint serving that identity's
// tokens. It clears the variables that would steer the credential or
// name a user.
func newAzure(t *testing.T, identity string) (*entratest.Server, *entratest.ManagedIdentityEndpoint) {
	t.Helper()
	for _, k := range []string{"AZURE_TOKEN_CREDENTIALS", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
		"AZURE_FEDERATED_TOKEN_FILE", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss})
	if errors.Is(err, entratest.ErrNoPostgreSQL) {
		pgtest.SkipOrFail(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	id := entratest.ManagedIdentity(identity)
	if err := srv.AddRole(ctx, identity, id.ObjectID); err != nil {
		t.Fatal(err)
	}
	mi, err := entratest.NewManagedIdentityEndpoint(iss, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mi.Close)
	return srv, mi
}

func TestQuickstartWithoutHostSaysWhatToSet(t *testing.T) {
	t.Setenv("PGHOST", "")
	if err := run(context.Background(), new(bytes.Buffer)); !errors.Is(err, errNoHost) {
		t.Errorf("run without PGHOST: %v, want errNoHost", err)
	}
}
