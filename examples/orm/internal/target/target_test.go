package target

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// clearEnv empties the variables Open looks at.
func clearEnv(t *testing.T) {
	for _, k := range []string{"PGHOST", "PGSSLMODE", "PGUSER", "AZURE_POSTGRESQL_CONNECTIONSTRING", "AZURE_POSTGRESQL_HOST",
		"AZURE_POSTGRESQL_CLIENTID", "AZURE_POSTGRESQL_PASSWORD"} {
		t.Setenv(k, "")
	}
}

func TestPGHOSTVerifiesTLSUnlessPGSSLMODESaysOtherwise(t *testing.T) {
	clearEnv(t)
	t.Setenv("PGHOST", "mysrv.postgres.database.azure.com")
	for _, tc := range []struct{ sslmode, want string }{
		{"", "sslmode=verify-full"},
		{"require", ""}, // pgx reads PGSSLMODE itself
	} {
		t.Setenv("PGSSLMODE", tc.sslmode)
		var out bytes.Buffer
		tg, err := Open(context.Background(), &out)
		if err != nil {
			t.Fatal(err)
		}
		if tg.ConnString != tc.want || tg.Emulated || tg.Credential == nil {
			t.Errorf("PGSSLMODE=%q: %+v, want ConnString %q, a credential, not emulated", tc.sslmode, tg, tc.want)
		}
		if want := "target: mysrv.postgres.database.azure.com from PGHOST, credential: DefaultAzureCredential\n"; out.String() != want {
			t.Errorf("printed %q, want %q", &out, want)
		}
		if err := tg.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestServiceConnectorWinsOverPGHOST(t *testing.T) {
	clearEnv(t)
	t.Setenv("PGHOST", "other.example.com")
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "host=mysrv.postgres.database.azure.com dbname=app sslmode=require")
	t.Setenv("AZURE_POSTGRESQL_CLIENTID", "00000000-0000-0000-0000-000000000001")
	var out bytes.Buffer
	tg, err := Open(context.Background(), &out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tg.ConnString, "host=mysrv.postgres.database.azure.com") || tg.Credential == nil {
		t.Errorf("%+v, want the Service Connector's host and a credential", tg)
	}
	if !strings.HasPrefix(out.String(), "target: mysrv.postgres.database.azure.com from Service Connector's AZURE_POSTGRESQL_* variables, credential: managed-identity") {
		t.Errorf("printed %q", &out)
	}
}

func TestServiceConnectorErrors(t *testing.T) {
	clearEnv(t)
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "host=mysrv.postgres.database.azure.com dbname=app user=bob password=s3cret sslmode=require")
	_, err := Open(context.Background(), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "secret mode") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("password in the connection string: %v, want an error about secret mode without the password", err)
	}

	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "")
	t.Setenv("AZURE_POSTGRESQL_HOST", "mysrv.postgres.database.azure.com")
	t.Setenv("AZURE_POSTGRESQL_SSL", "maybe")
	if _, err := Open(context.Background(), &bytes.Buffer{}); !errors.Is(err, entraauth.ErrEnv) {
		t.Errorf("AZURE_POSTGRESQL_SSL=maybe: %v, want ErrEnv", err)
	}
}

func TestEmulatorWithoutPostgreSQL(t *testing.T) {
	clearEnv(t)
	t.Setenv("PG_BIN", t.TempDir()) // a directory without initdb and postgres
	var out bytes.Buffer
	_, err := Open(context.Background(), &out)
	if !errors.Is(err, entratest.ErrNoPostgreSQL) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("Open without binaries: %v; want ErrNoPostgreSQL saying how to install them", err)
	}
	if out.Len() != 0 {
		t.Errorf("printed %q before failing", &out)
	}
}
