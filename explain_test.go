package entraauth_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
)

// mintingCredential mints every token for one principal and one scope,
// whatever scope it is asked for: a credential configured for the wrong
// resource.
type mintingCredential struct {
	iss    *entratest.Issuer
	p      entratest.Principal
	scope  string
	tokens []string
}

func (c *mintingCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	at, err := c.iss.Mint(c.p, c.scope, time.Hour)
	c.tokens = append(c.tokens, at.Token)
	return at, err
}

// loginError connects a pool through ts to srv and returns the explained
// error, failing the test if the error is no *entraauth.LoginError reaching the
// server's *pgconn.PgError.
func loginError(t *testing.T, srv *entratest.Server, ts *entraauth.TokenSource) (*entraauth.LoginError, *pgconn.PgError) {
	t.Helper()
	pool := newPool(t, srv.ConnString(), ts.BeforeConnect, nil)
	err := entraauth.Explain(pool.Ping(context.Background()))
	var le *entraauth.LoginError
	var pe *pgconn.PgError
	if !errors.As(err, &le) || !errors.As(err, &pe) {
		t.Fatalf("entraauth.Explain gave %T %v; want a *entraauth.LoginError reaching a *pgconn.PgError", err, err)
	}
	return le, pe
}

func TestExplainRoleMissing(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	carol := entratest.User("explain-carol@contoso.com") // no role
	cred := entratest.NewCredential(iss, carol)
	le, pe := loginError(t, srv, entraauth.NewTokenSource(cred))
	if pe.Code != "28P01" {
		t.Errorf("SQLSTATE %s, want 28P01", pe.Code)
	}
	msg := le.Error()
	for _, want := range []string{
		pe.Message, // the server's message is kept
		`sent user "explain-carol@contoso.com" (from the token's upn claim)`,
		"user explain-carol@contoso.com (oid " + carol.ObjectID,
		"cannot be told from outside",
		"select * from pgaadauth_create_principal('explain-carol@contoso.com', false, false);",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if le.UserSource != "the token's upn claim" || le.Token.Type != entraauth.PrincipalUser || le.Token.ObjectID != carol.ObjectID {
		t.Errorf("entraauth.LoginError = %+v", le)
	}
	assertNoTokens(t, msg, cred)
}

func TestExplainPGUSERNamingAnotherRole(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	dave, erin := entratest.User("explain-dave@contoso.com"), entratest.User("explain-erin@contoso.com")
	addRole(t, srv, dave.UPN, dave.ObjectID)
	addRole(t, srv, erin.UPN, erin.ObjectID)
	t.Setenv("PGUSER", erin.UPN)
	cred := entratest.NewCredential(iss, dave)
	le, _ := loginError(t, srv, entraauth.NewTokenSource(cred))
	if le.User != erin.UPN || le.UserSource != "PGUSER" {
		t.Errorf("user %q from %q, want %q from PGUSER", le.User, le.UserSource, erin.UPN)
	}
	msg := le.Error()
	for _, want := range []string{
		`sent user "explain-erin@contoso.com" (from PGUSER)`,
		"the token is for explain-dave@contoso.com",
		"Remove the user name from PGUSER",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if le.CreateRoleSQL != "" {
		t.Errorf("CreateRoleSQL = %q for a named user that is not the token's", le.CreateRoleSQL)
	}
	assertNoTokens(t, msg, cred)
}

func TestExplainWrongAudience(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	frank := entratest.User("explain-frank@contoso.com")
	addRole(t, srv, frank.UPN, frank.ObjectID)
	cred := &mintingCredential{iss: iss, p: frank, scope: entratest.ScopeARMPublic}
	le, _ := loginError(t, srv, entraauth.NewTokenSource(cred))
	msg := le.Error()
	for _, want := range []string{`The token is for "https://management.azure.com"`, "WithScope"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	for _, tok := range cred.tokens {
		if strings.Contains(msg, tok) {
			t.Fatal("the error holds the token")
		}
	}
}

func TestExplainServicePrincipalGetsTheOIDForm(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	app := entratest.ServicePrincipal("explain-app")
	cred := entratest.NewCredential(iss, app)
	le, _ := loginError(t, srv, entraauth.NewTokenSource(cred, entraauth.WithUser("explain-app")))
	want := "select * from pgaadauth_create_principal_with_oid('explain-app', '" + app.ObjectID + "', 'service', false, false);"
	if le.CreateRoleSQL != want || le.UserSource != "entraauth.WithUser" || le.Token.Type != entraauth.PrincipalApp {
		t.Errorf("entraauth.LoginError = %+v\nwant SQL %s", le, want)
	}
	assertNoTokens(t, le.Error(), cred)
}

func TestConnectorExplainsLoginFailures(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	gina := entratest.User("explain-gina@contoso.com") // no role
	cred := entratest.NewCredential(iss, gina)
	db := sql.OpenDB(entraauth.Connector(srv.ConnString(), cred))
	t.Cleanup(func() { db.Close() })
	err := db.PingContext(context.Background())
	var le *entraauth.LoginError
	var pe *pgconn.PgError
	if !errors.As(err, &le) || !errors.As(err, &pe) || pe.Code != "28P01" {
		t.Fatalf("Ping: %T %v; want a *entraauth.LoginError reaching the server's 28P01", err, err)
	}
	if !strings.Contains(err.Error(), "pgaadauth_create_principal('explain-gina@contoso.com'") {
		t.Errorf("error lacks the SQL: %v", err)
	}
	assertNoTokens(t, err.Error(), cred)
}

func TestExplainLeavesOtherErrorsAlone(t *testing.T) {
	clearAzureEnv(t)
	if entraauth.Explain(nil) != nil {
		t.Error("entraauth.Explain(nil) != nil")
	}
	for _, err := range []error{context.Canceled, entraauth.ErrInsecureTransport, errors.New("x")} {
		if got := entraauth.Explain(err); got != err {
			t.Errorf("entraauth.Explain(%v) = %v, want it unchanged", err, got)
		}
	}
	// A password login the server refuses is not a token's: unchanged.
	_, srv, _ := newEntraServer(t)
	_, err := pgconn.Connect(context.Background(), srv.ConnString("user=someone", "password=not-a-token"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("connect: %v; want a server error", err)
	}
	if got := entraauth.Explain(err); got != err {
		t.Errorf("entraauth.Explain changed a password login's error: %v", got)
	}
	// Explaining twice changes nothing.
	le := &entraauth.LoginError{Err: err}
	if got := entraauth.Explain(le); got != error(le) {
		t.Errorf("entraauth.Explain(*entraauth.LoginError) = %v", got)
	}
}

func TestInspectToken(t *testing.T) {
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p     entratest.Principal
		scope string
		typ   string
		name  string
	}{
		{entratest.User("inspect@contoso.com"), entratest.ScopePublic, entraauth.PrincipalUser, "inspect@contoso.com"},
		{entratest.ServicePrincipal("inspect-app"), entratest.ScopePublic, entraauth.PrincipalApp, ""},
		{entratest.ManagedIdentity("inspect-mi"), entratest.ScopePublic, entraauth.PrincipalApp, ""},
		{entratest.ManagedIdentity("inspect-mi"), entratest.ScopeARMPublic, entraauth.PrincipalManagedIdentity, ""},
	} {
		at, err := iss.Mint(c.p, c.scope, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		info, err := entraauth.InspectToken(at.Token)
		if err != nil {
			t.Fatal(err)
		}
		wantAud := strings.TrimSuffix(c.scope, "/.default")
		if info.Type != c.typ || info.Name != c.name || info.ObjectID != c.p.ObjectID || info.TenantID != iss.TenantID() ||
			info.Audience != wantAud || info.AppID != c.p.ClientID || !info.ExpiresOn.Equal(at.ExpiresOn) || info.IssuedAt.IsZero() {
			t.Errorf("%+v for %s: got %+v", c.p, c.scope, info)
		}
	}
	if _, err := entraauth.InspectToken("not-a-jwt"); !errors.Is(err, entraauth.ErrMalformedToken) || strings.Contains(err.Error(), "not-a-jwt") {
		t.Errorf("entraauth.InspectToken(not a JWT) = %v", err)
	}
}

// assertNoTokens fails the test if s holds any token cred minted.
func assertNoTokens(t *testing.T, s string, cred *entratest.Credential) {
	t.Helper()
	if cred.Calls() == 0 {
		t.Fatal("the credential was never called")
	}
	// entratest.Credential does not hand out its tokens; the tokens are
	// JWTs, whose three base64url segments start with "eyJ".
	if strings.Contains(s, "eyJ") {
		t.Fatalf("the message holds what looks like a JWT:\n%s", s)
	}
}

func TestExplainManagedIdentityNameAndType(t *testing.T) {
	clearAzureEnv(t)
	iss, srv, _ := newEntraServer(t)
	mi := entratest.ManagedIdentity("explain-mi")
	cred := entratest.NewCredential(iss, mi)
	le, _ := loginError(t, srv, entraauth.NewTokenSource(cred))
	want := "select * from pgaadauth_create_principal_with_oid('explain-mi', '" + mi.ObjectID + "', 'service', false, false);"
	if le.User != "explain-mi" || !strings.HasPrefix(le.UserSource, "the managed identity's name") ||
		le.Token.Type != entraauth.PrincipalManagedIdentity || le.CreateRoleSQL != want {
		t.Errorf("LoginError = %+v\nwant SQL %s", le, want)
	}
	assertNoTokens(t, le.Error(), cred)
}

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
