package entraauth

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestScopeForHost(t *testing.T) {
	for host, want := range map[string]string{
		"srv.postgres.database.azure.com":         ScopePublic,
		"srv.postgres.database.chinacloudapi.cn":  ScopeChina,
		"SRV.Postgres.Database.ChinaCloudAPI.cn.": ScopeChina,
		"srv.postgres.database.usgovcloudapi.net": ScopeUSGov,
		"localhost":                    ScopePublic,
		"127.0.0.1":                    ScopePublic,
		"::1":                          ScopePublic,
		"/var/run/postgresql":          ScopePublic,
		"chinacloudapi.cn.example.com": ScopePublic,
	} {
		if got := ScopeForHost(host); got != want {
			t.Errorf("ScopeForHost(%q) = %q, want %q", host, got, want)
		}
	}
	if got := armScopeFor(ScopeChina); got != "https://management.chinacloudapi.cn/.default" {
		t.Errorf("armScopeFor(China) = %q", got)
	}
	if got := armScopeFor("api://custom/.default"); got != "https://management.azure.com/.default" {
		t.Errorf("armScopeFor(custom) = %q", got)
	}
}

func connConfig(t *testing.T, connString string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestScopeIsChosenFromTheHostAndFixedPerSource(t *testing.T) {
	cred := newFakeCredential("a@x.com")
	ts := NewTokenSource(cred)
	ctx := context.Background()
	if err := ts.BeforeConnect(ctx, connConfig(t, "host=srv.postgres.database.chinacloudapi.cn sslmode=require user=u")); err != nil {
		t.Fatal(err)
	}
	if got := cred.requestedScopes(); len(got) != 1 || got[0] != ScopeChina {
		t.Fatalf("scopes requested = %v, want [%s]", got, ScopeChina)
	}
	err := ts.BeforeConnect(ctx, connConfig(t, "host=srv.postgres.database.azure.com sslmode=require user=u"))
	if !errors.Is(err, ErrScopeMismatch) {
		t.Fatalf("err = %v, want ErrScopeMismatch", err)
	}
	if tok, err := ts.Token(ctx); err != nil || tok.Value != cred.allMinted()[0] {
		t.Fatalf("Token = %v, %v; want the China token", tok, err)
	}
}

func TestWithScopeAndTenant(t *testing.T) {
	cred := newFakeCredential("a@x.com")
	ts := NewTokenSource(cred, WithScope("api://custom/.default"), WithTenantID("tenant-1"))
	if err := ts.BeforeConnect(context.Background(), connConfig(t, "host=srv.postgres.database.chinacloudapi.cn sslmode=require user=u")); err != nil {
		t.Fatal(err)
	}
	if got := cred.requestedScopes(); len(got) != 1 || got[0] != "api://custom/.default" {
		t.Fatalf("scopes = %v", got)
	}
	if cred.tenants[0] != "tenant-1" {
		t.Fatalf("tenant = %q", cred.tenants[0])
	}
}
