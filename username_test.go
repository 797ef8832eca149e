package entraauth

import (
	"context"
	"errors"
	"sync"
	"testing"
)

const testMIRID = "/subscriptions/0000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders-api"

func TestUserNameRules(t *testing.T) {
	osUser := osUserName()
	for _, tc := range []struct {
		name       string
		connString string
		pguser     string
		opts       []Option
		upn, mirid string
		want       string
		wantErr    error
		wantScopes int
	}{
		{"named in key/value string", "host=h sslmode=require user=bob", "", nil, "alice@x.com", "", "bob", nil, 1},
		{"named in URL", "postgres://bob@h/db?sslmode=require", "", nil, "alice@x.com", "", "bob", nil, 1},
		{"OS user named explicitly is kept", "host=h sslmode=require user=" + osUser, "", nil, "alice@x.com", "", osUser, nil, 1},
		{"PGUSER is named", "host=h sslmode=require", "carol", nil, "alice@x.com", "", "carol", nil, 1},
		{"WithUser wins", "host=h sslmode=require user=bob", "", []Option{WithUser("dave")}, "alice@x.com", "", "dave", nil, 1},
		{"pgx's OS user default is not a name: from upn", "host=h sslmode=require", "", nil, "alice@x.com", "", "alice@x.com", nil, 1},
		{"managed identity from a Resource Manager token", "host=h sslmode=require", "", nil, "", testMIRID, "orders-api", nil, 2},
		{"service principal: no name anywhere", "host=h sslmode=require", "", nil, "", "", "", ErrNoUsername, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PGUSER", tc.pguser)
			cfg := connConfig(t, tc.connString)
			cred := newFakeCredential(tc.upn)
			cred.mirid = tc.mirid
			ts := NewTokenSource(cred, tc.opts...)
			err := ts.BeforeConnect(context.Background(), cfg)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			} else if err != nil || cfg.User != tc.want {
				t.Fatalf("user = %q, %v; want %q", cfg.User, err, tc.want)
			}
			if got := cred.requestedScopes(); len(got) != tc.wantScopes {
				t.Fatalf("scopes requested = %v, want %d", got, tc.wantScopes)
			}
			if tc.wantScopes == 2 && cred.requestedScopes()[1] != "https://management.azure.com/.default" {
				t.Fatalf("second scope = %q, want Resource Manager", cred.requestedScopes()[1])
			}
		})
	}
}

func TestManagedIdentityNameIsResolvedOncePerSource(t *testing.T) {
	t.Setenv("PGUSER", "")
	cred := newFakeCredential("")
	cred.mirid = testMIRID
	ts := NewTokenSource(cred)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			cfg := connConfig(t, "host=srv.postgres.database.usgovcloudapi.net sslmode=require")
			if err := ts.BeforeConnect(context.Background(), cfg); err != nil || cfg.User != "orders-api" {
				t.Errorf("user = %q, %v", cfg.User, err)
			}
		})
	}
	wg.Wait()
	scopes := cred.requestedScopes()
	if len(scopes) != 2 {
		t.Fatalf("scopes requested = %v", scopes)
	}
	if len(scopes) != 2 || scopes[0] != ScopeUSGov || scopes[1] != "https://management.usgovcloudapi.net/.default" {
		t.Fatalf("scopes requested = %v, want one database and one Resource Manager token of the US Gov cloud", scopes)
	}
}

func TestConnStringNamesUser(t *testing.T) {
	t.Setenv("PGUSER", "")
	t.Setenv("PGSERVICE", "")
	for s, want := range map[string]bool{
		"host=h user=x":                     true,
		"user = x host=h":                   true,
		"host=h dbname=user":                false,
		"host=h application_name=superuser": false,
		"postgres://x@h/db":                 true,
		"postgresql://x:pw@h/db":            true,
		"postgres://h/db?user=x":            true,
		"postgres://h/db":                   false,
	} {
		if got := newConnFacts(s).userNamed; got != want {
			t.Errorf("userNamed(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestNoUsernameIsKeptNotAskedAgain(t *testing.T) {
	t.Setenv("PGUSER", "")
	cred := newFakeCredential("")
	ts := NewTokenSource(cred)
	for range 3 {
		err := ts.BeforeConnect(context.Background(), connConfig(t, "host=h sslmode=require"))
		if !errors.Is(err, ErrNoUsername) {
			t.Fatalf("err = %v, want ErrNoUsername", err)
		}
	}
	if n := cred.calls.Load(); n != 2 {
		t.Fatalf("credential calls = %d, want 2 (one database token, one Resource Manager token)", n)
	}
}

func TestResourceManagerFailureIsNotKept(t *testing.T) {
	t.Setenv("PGUSER", "")
	cred := newFakeCredential("")
	cred.mirid = testMIRID
	ts := NewTokenSource(cred)
	if _, err := ts.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	cred.failWith(errBoom)
	err := ts.BeforeConnect(context.Background(), connConfig(t, "host=h sslmode=require"))
	var credErr *CredentialError
	if !errors.As(err, &credErr) || credErr.Scope != "https://management.azure.com/.default" {
		t.Fatalf("err = %v, want a CredentialError for the Resource Manager scope", err)
	}
	cred.failWith(nil)
	cfg := connConfig(t, "host=h sslmode=require")
	if err := ts.BeforeConnect(context.Background(), cfg); err != nil || cfg.User != "orders-api" {
		t.Fatalf("after recovery: user = %q, %v", cfg.User, err)
	}
}
