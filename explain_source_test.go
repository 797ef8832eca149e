package entraauth_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// A user named where entraauth cannot see it (a command's -U) is read as
// named once the caller says where it came from.
func TestExplainUserSource(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	gina, hank := entratest.User("explain-gina@contoso.com"), entratest.User("explain-hank@contoso.com")
	addRole(t, srv, gina.UPN, gina.ObjectID)
	addRole(t, srv, hank.UPN, hank.ObjectID)
	tok, err := iss.Mint(gina, entratest.ScopePublic, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(srv.ConnString("user=" + hank.UPN))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = tok.Token
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		conn.Close(ctx)
		t.Fatal("logged in as another principal's role")
	}
	var le *entraauth.LoginError
	// Without a source, the reading still says the name is not the
	// token's, and offers no SQL creating a role for the wrong principal.
	if !errors.As(entraauth.Explain(err), &le) || le.UserSource != "" || le.CreateRoleSQL != "" ||
		!strings.Contains(le.Fix, "Remove the user name from the application's connection settings") {
		t.Fatalf("Explain without a source: %+v", le)
	}
	if !errors.As(entraauth.ExplainUserSource(err, "-U"), &le) {
		t.Fatalf("ExplainUserSource gave no *LoginError")
	}
	if le.UserSource != "-U" || !strings.Contains(le.Fix, "Remove the user name from -U") || le.CreateRoleSQL != "" {
		t.Errorf("ExplainUserSource(err, \"-U\") = %+v", le)
	}
	if strings.Contains(le.Error(), tok.Token) {
		t.Error("the error holds the token")
	}
	var pe *pgconn.PgError
	if !errors.As(le, &pe) || pe.Code != "28P01" {
		t.Errorf("errors.As does not reach the server's error: %v", pe)
	}
}
