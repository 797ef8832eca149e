package entraauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding"
	"encoding/gob"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth/entratest"
)

// Secrets the env tests put in the environment; none may ever be printed.
const (
	envTestPassword = `S3cr3t pa55'w\rd`
	envTestSecret   = "cl1ent-s3cr3t-VALUE"
)

var envTestSecrets = []string{envTestPassword, envTestSecret, "p@ss w0rd;x", `a;b"c`, "n30n-Pa55", "dj4ng0-Pa55"}

func lookupIn(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

var (
	typeDefault = reflect.TypeOf(&azidentity.DefaultAzureCredential{})
	typeMI      = reflect.TypeOf(&azidentity.ManagedIdentityCredential{})
	typeSP      = reflect.TypeOf(&azidentity.ClientSecretCredential{})
)

const (
	azHost   = "srv.postgres.database.azure.com"
	neonHost = "ep-still-mud-a12aa123.eastus2.azure.neon.tech"
	miID     = "5f0e2f4c-0a67-4a4f-9d49-2b1e2e3c4d5e"
	tenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
)

func TestLoadEnv(t *testing.T) {
	t.Parallel()
	azKV := "host=" + azHost + " port=5432 dbname=app sslmode=require user=aad_app"
	wantAz := "host=" + azHost + " port=5432 dbname=app user=aad_app sslmode=require"
	wantAzVerified := "host=" + azHost + " port=5432 dbname=app user=aad_app sslmode=verify-full"
	tests := []struct {
		name       string
		prefix     string
		env        map[string]string
		wantConn   string
		wantCred   reflect.Type // nil: no credential
		wantKind   string
		wantPW     string // the password pgx reads from the connection string
		wantFields [4]string
		wantErrVar string
		wantErrHas string
	}{
		// Service Connector's Go, Python, PHP and Ruby client types: key/value.
		{
			name:       "key/value, no client id: DefaultAzureCredential",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV},
			wantConn:   wantAz,
			wantCred:   typeDefault,
			wantKind:   "default",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		{
			name:       "key/value and client id: user-assigned managed identity",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_CLIENTID": miID},
			wantConn:   wantAz,
			wantCred:   typeMI,
			wantKind:   "managed-identity (client id " + miID + ")",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		{
			name: "key/value, client id, secret and tenant: service principal",
			env: map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_CLIENTID": miID,
				"AZURE_POSTGRESQL_CLIENTSECRET": envTestSecret, "AZURE_POSTGRESQL_TENANTID": tenant},
			wantConn:   wantAz,
			wantCred:   typeSP,
			wantKind:   "service-principal (client id " + miID + ", tenant " + tenant + ")",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		{
			name:       "key/value with quoting and other settings kept in order",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": ` application_name = 'my app'  host=` + azHost + ` database=app connect_timeout=5 `},
			wantConn:   "host=" + azHost + " dbname=app application_name='my app' connect_timeout=5",
			wantCred:   typeDefault,
			wantKind:   "default",
			wantFields: [4]string{azHost, "", "app", ""},
		},
		{
			name:       "URL form",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "postgresql://aad_app@" + azHost + ":5432/app?sslmode=require"},
			wantConn:   "host=" + azHost + " port=5432 dbname=app user=aad_app sslmode=require",
			wantCred:   typeDefault,
			wantKind:   "default",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		{
			name:       "URL form with several hosts and a percent-encoded user",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "postgres://alice%40contoso.com@h1:5432,[::1]:5433/app"},
			wantConn:   "host=h1,::1 port=5432,5433 dbname=app user=alice@contoso.com",
			wantCred:   typeDefault,
			wantKind:   "default",
			wantFields: [4]string{"h1,::1", "5432,5433", "app", "alice@contoso.com"},
		},
		{
			name:       "URL form with a password: password mode (Neon)",
			prefix:     "NEON_POSTGRESQL",
			env:        map[string]string{"NEON_POSTGRESQL_CONNECTIONSTRING": "postgres://neondb_owner:p%40ss%20w0rd%3Bx@" + neonHost + "/neondb?sslmode=require"},
			wantConn:   "host=" + neonHost + " dbname=neondb user=neondb_owner password='p@ss w0rd;x' sslmode=require",
			wantKind:   "password",
			wantPW:     "p@ss w0rd;x",
			wantFields: [4]string{neonHost, "", "neondb", "neondb_owner"},
		},
		// Java client type. pgjdbc's ssl=true verifies the server.
		{
			name:       "JDBC URL with ssl=true",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "jdbc:postgresql://" + azHost + ":5432/app?ssl=true&user=aad_app"},
			wantConn:   wantAzVerified,
			wantCred:   typeDefault,
			wantKind:   "default",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		// .NET client type (Npgsql's form), seed 000 and 003.
		{
			name:       ".NET form with a managed identity",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "Server=" + azHost + ";Database=app;Port=5432;Ssl Mode=Require;User Id=aad_app;", "AZURE_POSTGRESQL_CLIENTID": miID},
			wantConn:   wantAz,
			wantCred:   typeMI,
			wantKind:   "managed-identity (client id " + miID + ")",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		{
			name:       ".NET form with a quoted password: password mode",
			prefix:     "NEON_POSTGRESQL",
			env:        map[string]string{"NEON_POSTGRESQL_CONNECTIONSTRING": `Host=` + neonHost + `; Database=neondb; Port=5432; SSL Mode=VerifyFull; Username=neondb_owner; Password="a;b""c"`},
			wantConn:   "host=" + neonHost + ` port=5432 dbname=neondb user=neondb_owner password='a;b"c' sslmode=verify-full`,
			wantKind:   "password",
			wantPW:     `a;b"c`,
			wantFields: [4]string{neonHost, "5432", "neondb", "neondb_owner"},
		},
		{
			name:       "key/value with a password: password mode (Python, Go)",
			prefix:     "NEON_POSTGRESQL_", // a trailing underscore is fine
			env:        map[string]string{"NEON_POSTGRESQL_CONNECTIONSTRING": "dbname=neondb host=" + neonHost + " user=neondb_owner password=n30n-Pa55 port=5432 sslmode=require"},
			wantConn:   "host=" + neonHost + " port=5432 dbname=neondb user=neondb_owner password=n30n-Pa55 sslmode=require",
			wantKind:   "password",
			wantPW:     "n30n-Pa55",
			wantFields: [4]string{neonHost, "5432", "neondb", "neondb_owner"},
		},
		// Node.js and Django client types: parts.
		{
			name: "Node.js parts with a password",
			env: map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_PORT": "5432", "AZURE_POSTGRESQL_DATABASE": "app",
				"AZURE_POSTGRESQL_USER": "app_user", "AZURE_POSTGRESQL_PASSWORD": envTestPassword, "AZURE_POSTGRESQL_SSL": "true"},
			wantConn:   "host=" + azHost + ` port=5432 dbname=app user=app_user password='S3cr3t pa55\'w\\rd' sslmode=verify-full`,
			wantKind:   "password",
			wantPW:     envTestPassword,
			wantFields: [4]string{azHost, "5432", "app", "app_user"},
		},
		{
			name: "Node.js parts with a managed identity",
			env: map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_PORT": "5432", "AZURE_POSTGRESQL_DATABASE": "app",
				"AZURE_POSTGRESQL_USER": "aad_app", "AZURE_POSTGRESQL_SSL": "true", "AZURE_POSTGRESQL_CLIENTID": miID},
			wantConn:   wantAzVerified,
			wantCred:   typeMI,
			wantKind:   "managed-identity (client id " + miID + ")",
			wantFields: [4]string{azHost, "5432", "app", "aad_app"},
		},
		{
			name: "Django parts (NAME), SSLMODE disable",
			env: map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_NAME": "app", "AZURE_POSTGRESQL_USER": "app_user",
				"AZURE_POSTGRESQL_PASSWORD": "dj4ng0-Pa55", "AZURE_POSTGRESQL_SSLMODE": "disable"},
			wantConn:   "host=" + azHost + " dbname=app user=app_user password=dj4ng0-Pa55 sslmode=disable",
			wantKind:   "password",
			wantPW:     "dj4ng0-Pa55",
			wantFields: [4]string{azHost, "", "app", "app_user"},
		},
		{
			name: "parts: USERNAME, SSLMODE, DATABASE and NAME agreeing, empty variables ignored",
			env: map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_DATABASE": "app", "AZURE_POSTGRESQL_NAME": "app",
				"AZURE_POSTGRESQL_USERNAME": "aad_app", "AZURE_POSTGRESQL_SSLMODE": "verify-full", "AZURE_POSTGRESQL_PASSWORD": "",
				"AZURE_POSTGRESQL_CLIENTID": ""},
			wantConn:   "host=" + azHost + " dbname=app user=aad_app sslmode=verify-full",
			wantCred:   typeDefault,
			wantKind:   "default",
			wantFields: [4]string{azHost, "", "app", "aad_app"},
		},
		{
			name: "connection string completed by parts that agree with it",
			env: map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "host=" + azHost + " dbname=app",
				"AZURE_POSTGRESQL_HOST": strings.ToUpper(azHost), "AZURE_POSTGRESQL_USER": "app_user",
				"AZURE_POSTGRESQL_PASSWORD": envTestPassword, "AZURE_POSTGRESQL_SSL": "require"},
			wantConn:   "host=" + azHost + ` dbname=app user=app_user password='S3cr3t pa55\'w\\rd' sslmode=require`,
			wantKind:   "password",
			wantPW:     envTestPassword,
			wantFields: [4]string{azHost, "", "app", "app_user"},
		},

		// Missing and contradictory variables.
		{
			name:       "nothing at all",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": ""},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
			wantErrHas: "AZURE_POSTGRESQL_HOST",
		},
		{
			name:       "nothing with this prefix",
			prefix:     "NEON_POSTGRESQL",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV},
			wantErrVar: "NEON_POSTGRESQL_CONNECTIONSTRING",
		},
		{
			name:       "a client id alone, no server",
			env:        map[string]string{"AZURE_POSTGRESQL_CLIENTID": miID},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
		},
		{
			name:       "client secret without tenant",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_CLIENTID": miID, "AZURE_POSTGRESQL_CLIENTSECRET": envTestSecret},
			wantErrVar: "AZURE_POSTGRESQL_TENANTID",
		},
		{
			name:       "client secret without client id",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_TENANTID": tenant, "AZURE_POSTGRESQL_CLIENTSECRET": envTestSecret},
			wantErrVar: "AZURE_POSTGRESQL_CLIENTID",
		},
		{
			name:       "tenant and client id without secret",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_CLIENTID": miID, "AZURE_POSTGRESQL_TENANTID": tenant},
			wantErrVar: "AZURE_POSTGRESQL_CLIENTSECRET",
		},
		{
			name: "a service principal with a malformed tenant",
			env: map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_CLIENTID": miID,
				"AZURE_POSTGRESQL_CLIENTSECRET": envTestSecret, "AZURE_POSTGRESQL_TENANTID": "not a tenant!"},
			wantErrVar: "AZURE_POSTGRESQL_TENANTID",
		},
		{
			name:       "a password and a client id",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV + " password=" + quoteValue(envTestPassword), "AZURE_POSTGRESQL_CLIENTID": miID},
			wantErrVar: "AZURE_POSTGRESQL_CLIENTID",
			wantErrHas: "not both",
		},
		{
			name:       "a password variable and a tenant",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_PASSWORD": envTestPassword, "AZURE_POSTGRESQL_TENANTID": tenant},
			wantErrVar: "AZURE_POSTGRESQL_TENANTID",
		},
		{
			name:       "HOST disagrees with the connection string",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": azKV, "AZURE_POSTGRESQL_HOST": "other.postgres.database.azure.com"},
			wantErrVar: "AZURE_POSTGRESQL_HOST",
			wantErrHas: "AZURE_POSTGRESQL_CONNECTIONSTRING",
		},
		{
			name:       "NAME disagrees with DATABASE",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_DATABASE": "app", "AZURE_POSTGRESQL_NAME": "other"},
			wantErrVar: "AZURE_POSTGRESQL_NAME",
			wantErrHas: "AZURE_POSTGRESQL_DATABASE",
		},
		{
			name:       "USERNAME disagrees with USER",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_USER": "a", "AZURE_POSTGRESQL_USERNAME": "b"},
			wantErrVar: "AZURE_POSTGRESQL_USERNAME",
		},
		{
			name:       "SSLMODE disagrees with SSL",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_SSL": "true", "AZURE_POSTGRESQL_SSLMODE": "require"},
			wantErrVar: "AZURE_POSTGRESQL_SSLMODE",
		},
		{
			name: "PASSWORD disagrees with the connection string's password",
			env: map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "host=" + azHost + " password=n30n-Pa55",
				"AZURE_POSTGRESQL_PASSWORD": envTestPassword},
			wantErrVar: "AZURE_POSTGRESQL_PASSWORD",
		},
		{
			name:       "a port that is no number",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_PORT": "54x32"},
			wantErrVar: "AZURE_POSTGRESQL_PORT",
		},
		{
			name:       "SSL neither true nor false",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_SSL": "maybe"},
			wantErrVar: "AZURE_POSTGRESQL_SSL",
		},
		{
			name:       "an unterminated quote after a password",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "host=" + azHost + " password='" + envTestSecret},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
			wantErrHas: "unterminated",
		},
		{
			name:       "an unquoted password with a space",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "host=" + azHost + " password=" + envTestPassword},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
		},
		{
			name:       "an unknown .NET keyword",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "Server=" + azHost + ";Password=" + envTestSecret + ";" + envTestSecret + "=1;"},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
			wantErrHas: "unsupported keyword",
		},
		{
			name:       "an sslmode pgx does not know, next to a password",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "host=" + azHost + " sslmode=sometimes password=" + envTestSecret},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
			wantErrHas: "sslmode",
		},
		{
			name:       "a URL password with bad percent-encoding",
			env:        map[string]string{"AZURE_POSTGRESQL_CONNECTIONSTRING": "postgres://u:" + envTestSecret + "%zz@" + azHost + "/app"},
			wantErrVar: "AZURE_POSTGRESQL_CONNECTIONSTRING",
			wantErrHas: "percent-encoding in the password",
		},
		{
			name:       "a NUL byte in a part",
			env:        map[string]string{"AZURE_POSTGRESQL_HOST": azHost, "AZURE_POSTGRESQL_USER": "a\x00b"},
			wantErrVar: "AZURE_POSTGRESQL_USER",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ec, err := loadEnv(tt.prefix, lookupIn(tt.env), slog.New(slog.DiscardHandler))
			if tt.wantErrVar != "" {
				checkEnvError(t, err, tt.wantErrVar, tt.wantErrHas)
				if ec != nil {
					t.Errorf("got a config with the error: %v", ec)
				}
				return
			}
			if err != nil {
				t.Fatalf("loadEnv: %v", err)
			}
			if ec.ConnString != tt.wantConn {
				t.Errorf("ConnString:\n got %s\nwant %s", ec.ConnString, tt.wantConn)
			}
			if got := reflect.TypeOf(ec.Credential); got != tt.wantCred {
				t.Errorf("credential type %v, want %v", got, tt.wantCred)
			}
			if ec.CredentialKind != tt.wantKind {
				t.Errorf("CredentialKind %q, want %q", ec.CredentialKind, tt.wantKind)
			}
			if ec.PasswordAuth != (tt.wantPW != "") {
				t.Errorf("PasswordAuth %v, want %v", ec.PasswordAuth, tt.wantPW != "")
			}
			if got := [4]string{ec.Host, ec.Port, ec.Database, ec.User}; got != tt.wantFields {
				t.Errorf("Host, Port, Database, User = %q, want %q", got, tt.wantFields)
			}
			wantPrefix := strings.TrimSuffix(tt.prefix, "_")
			if wantPrefix == "" {
				wantPrefix = DefaultEnvPrefix
			}
			if ec.Prefix != wantPrefix {
				t.Errorf("Prefix %q, want %q", ec.Prefix, wantPrefix)
			}
			// pgx reads back what the environment said.
			cfg, err := pgconn.ParseConfig(ec.ConnString)
			if err != nil {
				t.Fatalf("pgx cannot parse the connection string: %v", err)
			}
			if tt.wantPW != "" && cfg.Password != tt.wantPW {
				t.Errorf("pgx reads a password of %d bytes, want the %d-byte one", len(cfg.Password), len(tt.wantPW))
			}
			if firstHost, _, _ := strings.Cut(tt.wantFields[0], ","); cfg.Host != firstHost {
				t.Errorf("pgx reads host %q, want %q", cfg.Host, firstHost)
			}
			if tt.wantFields[3] != "" && cfg.User != tt.wantFields[3] {
				t.Errorf("pgx reads user %q, want %q", cfg.User, tt.wantFields[3])
			}
			checkNoSecrets(t, printed(ec))
			if tt.wantPW != "" && !strings.Contains(printed(ec), "password=[REDACTED]") {
				t.Errorf("printed config does not show a redacted password: %s", printed(ec))
			}
		})
	}
}

// checkEnvError checks err is an *EnvError for wantVar that wraps ErrEnv,
// mentions wantHas and shows no secret.
func checkEnvError(t *testing.T, err error, wantVar, wantHas string) {
	t.Helper()
	t.Log(err)
	var ee *EnvError
	if !errors.As(err, &ee) {
		t.Fatalf("error %v (%T), want an *EnvError", err, err)
	}
	if !errors.Is(err, ErrEnv) {
		t.Errorf("errors.Is(err, ErrEnv) is false for %v", err)
	}
	if ee.Var != wantVar {
		t.Errorf("EnvError.Var %q, want %q (error: %v)", ee.Var, wantVar, err)
	}
	if !strings.Contains(err.Error(), wantVar) {
		t.Errorf("error does not name %s: %v", wantVar, err)
	}
	if wantHas != "" && !strings.Contains(err.Error(), wantHas) {
		t.Errorf("error does not mention %q: %v", wantHas, err)
	}
	checkNoSecrets(t, err.Error()+fmt.Sprintf(" %v %+v %#v", err, err, err))
}

// printed returns everything fmt and slog show of v.
func printed(v any) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%v %+v %#v %s %q ", v, v, v, v, v)
	slog.New(slog.NewJSONHandler(&b, nil)).Info("config", "cfg", v)
	slog.New(slog.NewTextHandler(&b, nil)).Info("config", "cfg", v)
	return b.String()
}

func checkNoSecrets(t *testing.T, s string) {
	t.Helper()
	for _, secret := range envTestSecrets {
		if strings.Contains(s, secret) {
			t.Errorf("output shows the secret %q: %s", secret, s)
		}
	}
	// The quoted spelling of the password in a connection string.
	if q := quoteValue(envTestPassword); strings.Contains(s, q) || strings.Contains(s, strings.Trim(q, "'")) {
		t.Errorf("output shows the quoted password: %s", s)
	}
}

func TestEnvConfigPrintsNoPassword(t *testing.T) {
	t.Parallel()
	ec := &EnvConfig{Prefix: "P", ConnString: "host=h password=" + quoteValue(envTestPassword) + " sslpassword=" + envTestSecret, CredentialKind: "password", PasswordAuth: true}
	out := printed(ec) + printed(*ec) + everyEncoding(t, ec) + everyEncoding(t, *ec)
	checkNoSecrets(t, out)
	// JSON (json.Marshal, and slog's JSON handler for a nested value) and
	// text show the redacted configuration.
	j, err := json.Marshal(struct{ C EnvConfig }{*ec})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"C":{"prefix":"P","conn_string":"host=h password=[REDACTED] sslpassword=[REDACTED]","credential":"password","password_auth":true}}`; string(j) != want {
		t.Errorf("json.Marshal:\n got %s\nwant %s", j, want)
	}
	if text, err := ec.MarshalText(); err != nil || string(text) != ec.String() {
		t.Errorf("MarshalText: %q, %v; want String()", text, err)
	}
	if err := gob.NewEncoder(io.Discard).Encode(ec); err == nil {
		t.Error("gob encoded an EnvConfig")
	}
	for _, want := range []string{"password=[REDACTED]", "sslpassword=[REDACTED]", "host=h"} {
		if !strings.Contains(out, want) {
			t.Errorf("printed config lacks %q: %s", want, out)
		}
	}
	// A connection string changed into something unparsable is not shown.
	ec.ConnString = "host=h password='" + envTestSecret
	out = printed(ec)
	checkNoSecrets(t, out)
	if !strings.Contains(out, "not shown") {
		t.Errorf("unparsable connection string: %s", out)
	}
}

func TestLoadEnvUsesTheProcessEnvironment(t *testing.T) {
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "host="+azHost+" dbname=app")
	t.Setenv("AZURE_POSTGRESQL_CLIENTID", miID)
	ec, err := LoadEnv("")
	if err != nil {
		t.Fatal(err)
	}
	if ec.Host != azHost || reflect.TypeOf(ec.Credential) != typeMI {
		t.Errorf("LoadEnv: %v", ec)
	}
}

func TestEnvPoolAndDBReportErrorsEarly(t *testing.T) {
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if pool, err := NewPoolFromEnv(ctx, ""); err == nil {
		pool.Close()
		t.Fatal("NewPoolFromEnv: no error with no environment")
	} else {
		checkEnvError(t, err, "AZURE_POSTGRESQL_CONNECTIONSTRING", "")
	}
	if db, err := OpenDBFromEnv(""); err == nil {
		_ = db.Close()
		t.Fatal("OpenDBFromEnv: no error with no environment")
	} else {
		checkEnvError(t, err, "AZURE_POSTGRESQL_CONNECTIONSTRING", "")
	}

	// An invalid option is reported before the environment is read.
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "host="+azHost)
	if _, err := OpenDBFromEnv("", WithUser("")); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("OpenDBFromEnv with an invalid option: %v, want ErrInvalidOption", err)
	}
	if _, err := NewPoolFromEnv(ctx, "", WithFetchTimeout(-1)); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("NewPoolFromEnv with an invalid option: %v, want ErrInvalidOption", err)
	}

	// pgxpool's own settings are checked by NewPoolFromEnv, without the password.
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "host="+azHost+" pool_max_conns=lots password="+envTestSecret)
	if pool, err := NewPoolFromEnv(ctx, ""); err == nil {
		pool.Close()
		t.Fatal("NewPoolFromEnv accepted pool_max_conns=lots")
	} else {
		checkEnvError(t, err, "AZURE_POSTGRESQL_CONNECTIONSTRING", "pool_max_conns")
	}
}

// envServer starts an entratest server that checks tokens from a new
// issuer, relaying sessions to the package's shared PostgreSQL.
func envServer(t *testing.T) (*entratest.Issuer, *entratest.Server) {
	t.Helper()
	pg := testServer(t)
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss, BackendDSN: pg.AdminConnString(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return iss, srv
}

// clearPGEnv keeps the machine's PG… and Service Connector variables out
// of a test.
func clearPGEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"PGUSER", "PGPASSWORD", "PGHOST", "PGPORT", "PGDATABASE", "PGSSLMODE", "PGSSLROOTCERT",
		"AZURE_POSTGRESQL_CONNECTIONSTRING", "AZURE_POSTGRESQL_HOST", "AZURE_POSTGRESQL_CLIENTID",
		"AZURE_POSTGRESQL_CLIENTSECRET", "AZURE_POSTGRESQL_TENANTID", "AZURE_CLIENT_ID"} {
		t.Setenv(k, "")
	}
}

// checkEnvPoolAndDB connects through NewPoolFromEnv and OpenDBFromEnv and
// checks the user each logs in as.
func checkEnvPoolAndDB(t *testing.T, prefix, wantUser string, opts ...Option) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := NewPoolFromEnv(ctx, prefix, opts...)
	if err != nil {
		t.Fatalf("NewPoolFromEnv: %v", err)
	}
	defer pool.Close()
	if user, err := currentUser(ctx, pool); err != nil || user != wantUser {
		t.Errorf("pool: current_user %q, %v; want %q", user, err, wantUser)
	}
	db, err := OpenDBFromEnv(prefix, opts...)
	if err != nil {
		t.Fatalf("OpenDBFromEnv: %v", err)
	}
	defer db.Close()
	var user string
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil || user != wantUser {
		t.Errorf("database/sql: current_user %q, %v; want %q", user, err, wantUser)
	}
}

func TestEnvManagedIdentityEndToEnd(t *testing.T) {
	clearPGEnv(t)
	iss, srv := envServer(t)
	id := entratest.ManagedIdentity("env-test-identity")
	ctx := context.Background()
	if err := srv.AddRole(ctx, "env-test-identity", id.ObjectID); err != nil {
		t.Fatal(err)
	}
	mi, err := entratest.NewManagedIdentityEndpoint(iss, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mi.Close)
	mi.Setenv(t)
	// No user in the connection string: it is the identity's name, from
	// the xms_mirid claim of a Resource Manager token.
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", srv.ConnString())
	t.Setenv("AZURE_POSTGRESQL_CLIENTID", id.ClientID)
	checkEnvPoolAndDB(t, "", "env-test-identity", WithRequireVerifiedTLS())

	// The client ID reaches the endpoint, which refuses another one.
	t.Setenv("AZURE_POSTGRESQL_CLIENTID", entratest.ManagedIdentity("someone-else").ClientID)
	pool, err := NewPoolFromEnv(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = pool.Ping(pctx)
	var ce *CredentialError
	if !errors.As(err, &ce) {
		t.Errorf("ping with another client ID: %v, want a *CredentialError", err)
	}
}

func TestEnvDefaultCredentialEndToEnd(t *testing.T) {
	clearPGEnv(t)
	iss, srv := envServer(t)
	alice := entratest.User("env-alice@contoso.com")
	if err := srv.AddRole(context.Background(), alice.UPN, alice.ObjectID); err != nil {
		t.Fatal(err)
	}
	az, err := entratest.NewAzureCLI(iss, alice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(az.Close)
	az.Setenv(t)
	// DefaultAzureCredential, told to use the Azure CLI (on this machine
	// the IMDS address answers, which would stop the chain there).
	t.Setenv("AZURE_TOKEN_CREDENTIALS", "AzureCLICredential")
	// The Node.js parts, with the user from the token.
	t.Setenv("AZURE_POSTGRESQL_HOST", srv.Host())
	t.Setenv("AZURE_POSTGRESQL_PORT", strconv.Itoa(int(srv.Port())))
	t.Setenv("AZURE_POSTGRESQL_DATABASE", "postgres")
	t.Setenv("AZURE_POSTGRESQL_SSL", "true") // verify-full, as in node-postgres
	t.Setenv("PGSSLROOTCERT", srv.CAFile())
	checkEnvPoolAndDB(t, "", alice.UPN)
	// One token for the pool's connection and one for the database
	// handle's: each has its own credential and token source.
	if n := az.Invocations(); n != 2 {
		t.Errorf("az ran %d times; want 2, one per handle", n)
	}
}

func TestEnvPasswordModeEndToEnd(t *testing.T) {
	clearPGEnv(t)
	pg := testServer(t)
	const role, password = "env_neondb_owner", "n30n-Pa55 w'rd"
	// The role may exist from an earlier run (go test -count) on the shared server.
	if err := pg.CreateRole(context.Background(), role, password); err != nil {
		if err := pg.SetPassword(context.Background(), role, password); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("NEON_POSTGRESQL_CONNECTIONSTRING", pg.ConnString(role, password))
	checkEnvPoolAndDB(t, "NEON_POSTGRESQL", role, WithRequireVerifiedTLS())

	// The parts, as for Node.js, with SSL=true: verified TLS, as
	// node-postgres does. Without the test CA the server is refused.
	t.Setenv("NEON_POSTGRESQL_CONNECTIONSTRING", "")
	t.Setenv("NEON_POSTGRESQL_HOST", pg.Host)
	t.Setenv("NEON_POSTGRESQL_PORT", strconv.Itoa(int(pg.Port)))
	t.Setenv("NEON_POSTGRESQL_DATABASE", "postgres")
	t.Setenv("NEON_POSTGRESQL_USER", role)
	t.Setenv("NEON_POSTGRESQL_PASSWORD", password)
	t.Setenv("NEON_POSTGRESQL_SSL", "true")
	checkEnvRefusesUnverifiedServer(t, "NEON_POSTGRESQL")
	t.Setenv("PGSSLROOTCERT", pg.CAFile)
	checkEnvPoolAndDB(t, "NEON_POSTGRESQL", role, WithRequireVerifiedTLS())

	// SSL=no-verify (node-postgres's spelling): TLS without verification.
	t.Setenv("PGSSLROOTCERT", "")
	t.Setenv("NEON_POSTGRESQL_SSL", "no-verify")
	checkEnvPoolAndDB(t, "NEON_POSTGRESQL", role)

	// WithRequireVerifiedTLS refuses it, before connecting.
	if pool, err := NewPoolFromEnv(context.Background(), "NEON_POSTGRESQL", WithRequireVerifiedTLS()); !errors.Is(err, ErrInsecureTransport) {
		if pool != nil {
			pool.Close()
		}
		t.Errorf("NewPoolFromEnv with sslmode=require and WithRequireVerifiedTLS: %v, want ErrInsecureTransport", err)
	}
	if db, err := OpenDBFromEnv("NEON_POSTGRESQL", WithRequireVerifiedTLS()); !errors.Is(err, ErrInsecureTransport) {
		if db != nil {
			_ = db.Close()
		}
		t.Errorf("OpenDBFromEnv with sslmode=require and WithRequireVerifiedTLS: %v, want ErrInsecureTransport", err)
	}
}

// checkEnvRefusesUnverifiedServer checks that a pool and a database handle
// from the environment refuse the server's certificate.
func checkEnvRefusesUnverifiedServer(t *testing.T, prefix string, opts ...Option) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := NewPoolFromEnv(ctx, prefix, opts...)
	if err != nil {
		t.Fatalf("NewPoolFromEnv: %v", err)
	}
	defer pool.Close()
	var verr *tls.CertificateVerificationError
	if err := pool.Ping(ctx); !errors.As(err, &verr) {
		t.Errorf("pool: ping %v; want a certificate verification error", err)
	}
	db, err := OpenDBFromEnv(prefix, opts...)
	if err != nil {
		t.Fatalf("OpenDBFromEnv: %v", err)
	}
	defer db.Close()
	if err := db.PingContext(ctx); !errors.As(err, &verr) {
		t.Errorf("database/sql: ping %v; want a certificate verification error", err)
	}
}

// TestEnvJDBCEndToEnd logs in with a JDBC URL as Service Connector writes
// it for Java, with pgjdbc-only properties: they are dropped (PostgreSQL
// refused them as settings, FATAL 42704) and logged by name, and ssl=true
// verifies the server, as pgjdbc does.
func TestEnvJDBCEndToEnd(t *testing.T) {
	clearPGEnv(t)
	pg := testServer(t)
	const role, password = "env_jdbc_user", "jdbc Pa55+w'rd"
	if err := pg.CreateRole(context.Background(), role, password); err != nil {
		if err := pg.SetPassword(context.Background(), role, password); err != nil {
			t.Fatal(err)
		}
	}
	jdbc := fmt.Sprintf("jdbc:postgresql://%s:%d/postgres?ssl=true&user=%s&password=%s"+
		"&authenticationPluginClassName=com.azure.identity.extensions.jdbc.postgresql.AzurePostgresqlAuthenticationPlugin"+
		"&sslfactory=org.postgresql.ssl.NonValidatingFactory&loginTimeout=5&ApplicationName=env-jdbc-test",
		pg.Host, pg.Port, role, url.QueryEscape(password))
	t.Setenv("JAVA_POSTGRESQL_CONNECTIONSTRING", jdbc)
	checkEnvRefusesUnverifiedServer(t, "JAVA_POSTGRESQL")

	t.Setenv("JAVA_POSTGRESQL_CONNECTIONSTRING", jdbc+"&sslrootcert="+url.QueryEscape(pg.CAFile))
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	checkEnvPoolAndDB(t, "JAVA_POSTGRESQL", role, WithRequireVerifiedTLS(), WithLogger(logger))
	for _, name := range []string{"authenticationPluginClassName", "sslfactory", "loginTimeout"} {
		if !strings.Contains(logs.String(), name) {
			t.Errorf("the log does not name the dropped property %s:\n%s", name, logs.String())
		}
	}
	pool, err := NewPoolFromEnv(context.Background(), "JAVA_POSTGRESQL")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var app string
	if err := pool.QueryRow(context.Background(), "select current_setting('application_name')").Scan(&app); err != nil || app != "env-jdbc-test" {
		t.Errorf("application_name %q, %v; want ApplicationName's env-jdbc-test", app, err)
	}
	if strings.Contains(logs.String(), "ApplicationName") {
		t.Errorf("the log names ApplicationName, which is kept as application_name:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "Pa55") {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
}

// everyEncoding returns all that fmt, slog, JSON, XML, text and gob show
// of v, on its own and nested in a struct, a pointer, a slice and a map.
func everyEncoding(t *testing.T, v any) string {
	t.Helper()
	var b bytes.Buffer
	type wrapper struct {
		Config any
	}
	for _, w := range []any{v, &v, wrapper{v}, &wrapper{v}, []any{v}, map[string]any{"config": v}} {
		fmt.Fprintf(&b, "%v %+v %#v %s %q\n", w, w, w, w, w)
		slog.New(slog.NewJSONHandler(&b, nil)).Info("config", "cfg", w)
		slog.New(slog.NewTextHandler(&b, nil)).Info("config", "cfg", w)
		if j, err := json.Marshal(w); err == nil {
			b.Write(j)
		}
		if x, err := xml.Marshal(w); err == nil {
			b.Write(x)
		}
	}
	if tm, ok := v.(encoding.TextMarshaler); ok {
		text, err := tm.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		b.Write(text)
	}
	_ = gob.NewEncoder(&b).Encode(v) // gob may refuse a type; what it writes is searched
	return b.String()
}

// TestEnvNeverPrintsAPassword loads a password-mode environment in every
// shape (each connection-string form, escaped and not, and the parts) with
// passwords holding the characters that split them, connects (to a closed
// port), and searches everything printed, encoded, logged or returned as an
// error for the password or any part of it.
func TestEnvNeverPrintsAPassword(t *testing.T) {
	clearPGEnv(t)
	const prefix = "LEAK_POSTGRESQL"
	passwords := []string{"pwAq1/pwBq2@pwCq3", "pwAq1@pwBq2", "pwAq1?pwBq2=pwCq3", "pwAq1;pwBq2=pwCq3",
		`pwAq1 pwBq2'pwCq3\`, "pwAq1#pwBq2:pwCq3", "pwAq1&pwBq2+pwCq3", "pwAq1%pwBq2", "pwAq1"}
	type shape struct {
		name  string
		skip  string
		write func(pw string) string
	}
	var shapes []shape
	for _, s := range connStringShapes {
		shapes = append(shapes, shape{s.name, s.skip, s.write})
	}
	shapes = append(shapes, shape{name: "parts"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	checked := 0
	for _, s := range shapes {
		for _, pw := range passwords {
			if strings.ContainsAny(pw, s.skip) {
				continue
			}
			for _, k := range []string{"CONNECTIONSTRING", "HOST", "PORT", "DATABASE", "USER", "PASSWORD", "SSLMODE"} {
				t.Setenv(prefix+"_"+k, "")
			}
			if s.write == nil {
				t.Setenv(prefix+"_HOST", "127.0.0.1")
				t.Setenv(prefix+"_PORT", "1")
				t.Setenv(prefix+"_DATABASE", "db")
				t.Setenv(prefix+"_USER", "user")
				t.Setenv(prefix+"_PASSWORD", pw)
				t.Setenv(prefix+"_SSLMODE", "require")
			} else {
				cs := strings.ReplaceAll(strings.ReplaceAll(s.write(pw), "host.example", "127.0.0.1"), "5432", "1")
				t.Setenv(prefix+"_CONNECTIONSTRING", cs)
			}
			var out, logs bytes.Buffer
			logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			showErr := func(err error) {
				if err != nil {
					fmt.Fprintf(&out, "%s %v %+v %#v\n", err.Error(), err, err, err)
					out.WriteString(everyEncoding(t, err))
				}
			}
			ec, err := LoadEnv(prefix)
			showErr(err)
			if ec != nil {
				out.WriteString(everyEncoding(t, ec))
				out.WriteString(everyEncoding(t, *ec))
				out.WriteString(ec.String() + ec.Host + ec.Port + ec.Database + ec.User)
			}
			if pool, err := NewPoolFromEnv(ctx, prefix, WithLogger(logger)); err != nil {
				showErr(err)
			} else {
				showErr(pool.Ping(ctx))
				pool.Close()
			}
			if db, err := OpenDBFromEnv(prefix, WithLogger(logger)); err != nil {
				showErr(err)
			} else {
				showErr(db.PingContext(ctx))
				_ = db.Close()
			}
			all := out.String() + logs.String()
			if loc := passwordChunk.FindStringIndex(all); loc != nil || strings.Contains(all, pw) {
				if loc == nil {
					loc = []int{strings.Index(all, pw), strings.Index(all, pw) + len(pw)}
				}
				t.Errorf("%s, password %q: the output shows it or a part of it: …%s…", s.name, pw,
					all[max(0, loc[0]-300):min(len(all), loc[1]+100)])
			}
			if ec != nil && !strings.Contains(all, "[REDACTED]") {
				t.Errorf("%s, password %q: no redacted password in the output:\n%s", s.name, pw, all)
			}
			checked++
		}
	}
	t.Logf("%d environments checked", checked)
}

// TestEnvErrorsHoldNoPgxParseError checks that no error from the env
// functions lets errors.As reach pgx's *pgconn.ParseConfigError, whose
// ConnString field holds the connection string as given, password and all
// (issue 15, item 7), while errors.Is still finds ErrEnv and the message
// still says what pgx objected to.
func TestEnvErrorsHoldNoPgxParseError(t *testing.T) {
	clearPGEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, connString, wantHas string
		open                      func() error
	}{
		{"LoadEnv, a bad port", "host=" + azHost + " port=notaport password=" + envTestSecret, "port",
			func() error { _, err := LoadEnv(""); return err }},
		{"NewPoolFromEnv, a bad pool setting", "host=" + azHost + " pool_max_conns=lots password=" + envTestSecret, "pool_max_conns",
			func() error {
				pool, err := NewPoolFromEnv(ctx, "")
				if err == nil {
					pool.Close()
				}
				return err
			}},
		{"OpenDBFromEnv, a bad pgx setting, password mode", "host=" + azHost + " statement_cache_capacity=lots password=" + envTestSecret, "statement_cache_capacity",
			func() error {
				db, err := OpenDBFromEnv("")
				if err == nil {
					_ = db.Close()
				}
				return err
			}},
		{"OpenDBFromEnv, a bad pgx setting, token mode", "host=" + azHost + " statement_cache_capacity=lots", "statement_cache_capacity",
			func() error {
				db, err := OpenDBFromEnv("")
				if err == nil {
					err = db.PingContext(ctx)
					_ = db.Close()
				}
				return err
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", tc.connString)
			err := tc.open()
			checkEnvError(t, err, "AZURE_POSTGRESQL_CONNECTIONSTRING", tc.wantHas)
			var pce *pgconn.ParseConfigError
			if errors.As(err, &pce) {
				t.Errorf("errors.As reaches a *pgconn.ParseConfigError holding %d bytes of connection string", len(pce.ConnString))
			}
		})
	}
}

// TestLoadEnvLogsDroppedJDBCProperties checks that LoadEnv, which takes no
// options, names the JDBC properties it drops at Debug to slog.Default.
func TestLoadEnvLogsDroppedJDBCProperties(t *testing.T) {
	var logs bytes.Buffer
	old, oldOut, oldFlags := slog.Default(), log.Writer(), log.Flags()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer func() {
		// Setting slog's default back does not give the log package its
		// writer back.
		slog.SetDefault(old)
		log.SetOutput(oldOut)
		log.SetFlags(oldFlags)
	}()
	t.Setenv("AZURE_POSTGRESQL_CONNECTIONSTRING", "jdbc:postgresql://"+azHost+"/app?user=u&password="+envTestSecret+
		"&sslmode=verify-full&loginTimeout=5&sslfactory=org.postgresql.ssl.DefaultJavaSSLFactory")
	ec, err := LoadEnv("")
	if err != nil {
		t.Fatal(err)
	}
	if want := "host=" + azHost + " dbname=app user=u password=" + envTestSecret + " sslmode=verify-full"; ec.ConnString != want {
		t.Errorf("ConnString %q; want %q", ec.ConnString, want)
	}
	if !strings.Contains(logs.String(), "level=DEBUG") || !strings.Contains(logs.String(), "properties=\"[loginTimeout sslfactory]\"") ||
		!strings.Contains(logs.String(), "variable=AZURE_POSTGRESQL_CONNECTIONSTRING") {
		t.Errorf("log:\n%s", logs.String())
	}
	checkNoSecrets(t, logs.String())
}
