package entraauth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestLoginErrorReadings checks the reading of each server answer, with
// Azure Database for PostgreSQL's own messages.
func TestLoginErrorReadings(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	user := TokenInfo{Name: "a@contoso.com", NameClaim: "upn", ObjectID: "oid-1", TenantID: "tid-1", Type: PrincipalUser,
		Audience: "https://ossrdbms-aad.database.windows.net", IssuedAt: now.Add(-time.Minute), ExpiresOn: now.Add(time.Hour)}
	expired := user
	expired.ExpiresOn = now.Add(-3 * time.Minute)
	obrien := user
	obrien.Name = "o'brien"
	otherAud := user
	otherAud.Audience = "https://management.azure.com"
	for _, c := range []struct {
		name    string
		info    TokenInfo
		source  string
		user    string
		code    string
		msg     string
		reading string
		fix     string
	}{
		{"expired by Azure", user, "the token's upn claim", "a@contoso.com", "28P01",
			"The access token has expired. Please acquire a new token and retry.", "expired", "clock"},
		{"expired by the claims", expired, "the token's upn claim", "a@contoso.com", "28P01",
			`password authentication failed for user "a@contoso.com"`, "3m0s ago", "clock"},
		{"audience", otherAud, "the token's upn claim", "a@contoso.com", "28P01",
			"The access token does not have a valid audience claim. Please acquire a new token for the resource.", "management.azure.com", ScopePublic},
		{"invalid", user, "the token's upn claim", "a@contoso.com", "28P01",
			"An error occurred while validating the access token. Please acquire a new token and retry.", "tenant tid-1", "WithTenantID"},
		{"firewall", user, "", "a@contoso.com", "28000",
			`no pg_hba.conf entry for host "10.0.0.1", user "a@contoso.com", database "postgres", no encryption`, "address", "firewall"},
		{"role does not exist", user, "the token's upn claim", "a@contoso.com", "28000",
			`role "a@contoso.com" does not exist`, `no role "a@contoso.com"`, "pgaadauth_create_principal('a@contoso.com', false, false)"},
		{"named user not the token's", user, "the connection string", "b@contoso.com", "28P01",
			`password authentication failed for user "b@contoso.com"`, "came from the connection string", "Remove the user name from the connection string"},
		{"named user not the token's, source unknown", user, "", "b@contoso.com", "28P01",
			`password authentication failed for user "b@contoso.com"`, "came from the application's connection settings", "the token's (\"a@contoso.com\")"},
		{"missing role", user, "the token's upn claim", "a@contoso.com", "28P01",
			`password authentication failed for user "a@contoso.com"`, "cannot be told from outside", "pgaadauth_create_principal('a@contoso.com'"},
		{"quoting", obrien, "the token's upn claim", "o'brien", "28P01",
			`password authentication failed for user "o'brien"`, "cannot be told", "pgaadauth_create_principal('o''brien', false, false)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			le := &LoginError{Err: errors.New("x"), User: c.user, UserSource: c.source, Token: c.info}
			le.read(&pgconn.PgError{Code: c.code, Message: c.msg}, now)
			if !strings.Contains(le.Reading, c.reading) || !strings.Contains(le.Fix, c.fix) {
				t.Errorf("reading %q\nfix %q\nwant %q and %q", le.Reading, le.Fix, c.reading, c.fix)
			}
		})
	}
}
