package entraauth

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// LoginError is a failed login with an Entra token, explained: the
// server's error, the user name sent and where it came from, who the token
// was for, and what the failure most likely means. Explain returns it;
// Connector's connections return it by themselves. errors.As reaches the
// driver's errors through it (*pgconn.ConnectError, *pgconn.PgError). It
// never holds the token.
type LoginError struct {
	// Err is the driver's error.
	Err error
	// User is the user name sent to the server.
	User string
	// UserSource says where User came from, such as "PGUSER", "the
	// connection string", "entraauth.WithUser" or "the token's upn claim";
	// empty when entraauth did not see it named.
	UserSource string
	// Token is what the token sent as the password says about its
	// principal.
	Token TokenInfo
	// ServerDetail and ServerHint are the DETAIL and HINT of the server's
	// error, which pgx's message leaves out.
	ServerDetail, ServerHint string
	// Reading is what the server's answer most likely means, in a sentence
	// or two.
	Reading string
	// Fix is what to do about it, in one sentence.
	Fix string
	// CreateRoleSQL, when the role may be missing, is the SQL an Entra
	// administrator of the server runs (in the postgres database) to
	// create the role for the token's principal.
	CreateRoleSQL string
}

// Error returns the driver's message with the server's detail and hint,
// then on a line of its own the user sent, its source, the token's
// principal, the reading and the fix.
func (e *LoginError) Error() string {
	src := ""
	if e.UserSource != "" {
		src = " (from " + e.UserSource + ")"
	}
	server := ""
	if e.ServerDetail != "" {
		server += " DETAIL: " + e.ServerDetail
	}
	if e.ServerHint != "" {
		server += " HINT: " + e.ServerHint
	}
	return fmt.Sprintf("%s%s\nentraauth: sent user %q%s with a token for %s: %s Fix: %s",
		e.Err.Error(), server, e.User, src, e.Token.principalLabel(), e.Reading, e.Fix)
}

// Unwrap returns the driver's error.
func (e *LoginError) Unwrap() error { return e.Err }

// Explain returns err explained as a *LoginError when it is a login that
// a server refused after being sent an Entra token (an authentication
// error, SQLSTATE class 28, on a connection readied by entraauth), and err
// itself otherwise. Use it on the errors of a pgx pool whose
// BeforeConnect is entraauth's:
//
//	if err := pool.Ping(ctx); err != nil {
//		return entraauth.Explain(err)
//	}
//
// Connector's connections explain their login failures by themselves.
func Explain(err error) error {
	var le *LoginError
	if err == nil || errors.As(err, &le) {
		return err
	}
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	if !errors.As(err, &ce) || ce.Config == nil || !errors.As(err, &pe) || !strings.HasPrefix(pe.Code, "28") {
		return err
	}
	info, ierr := InspectToken(ce.Config.Password)
	if ierr != nil {
		return err // not a token: a password login, not ours to explain
	}
	le = &LoginError{Err: err, User: ce.Config.User, Token: info, ServerDetail: pe.Detail, ServerHint: pe.Hint}
	le.UserSource = userSourceOf(le.User, &le.Token)
	le.read(pe, time.Now())
	return le
}

// ExplainUserSource is Explain for a caller that knows where the user name
// it sent came from, such as a command's -U flag, which entraauth did not
// see: the reading and the fix take userSource into account. An empty
// userSource keeps the one entraauth found.
func ExplainUserSource(err error, userSource string) error {
	err = Explain(err)
	var le *LoginError
	var pe *pgconn.PgError
	if userSource == "" || !errors.As(err, &le) || le.UserSource == userSource || !errors.As(le.Err, &pe) {
		return err
	}
	le.UserSource = userSource
	le.Reading, le.Fix, le.CreateRoleSQL = "", "", ""
	le.read(pe, time.Now())
	return le
}

// Prefixes of Azure Database for PostgreSQL's messages for refused tokens.
const (
	azureTokenExpired  = "The access token has expired"
	azureTokenAudience = "The access token does not have a valid audience claim"
	azureTokenInvalid  = "An error occurred while validating the access token"
)

// read fills in the reading, the fix and the SQL for the server's error.
func (e *LoginError) read(pe *pgconn.PgError, now time.Time) {
	info, msg := e.Token, pe.Message
	wantAud := strings.TrimSuffix(ScopeForHost(""), "/.default")
	switch {
	case strings.HasPrefix(msg, azureTokenExpired) || (!info.ExpiresOn.IsZero() && now.After(info.ExpiresOn)):
		e.Reading = fmt.Sprintf("The server found the token expired; its exp is %s, %s by this machine's clock.",
			info.ExpiresOn.UTC().Format(time.RFC3339), relative(info.ExpiresOn, now))
		e.Fix = "Check that this machine's clock is right (NTP): entraauth never sends a token it knows to be expired, so the clocks disagree or the credential handed out a stale token."
	case strings.HasPrefix(msg, azureTokenAudience) || (info.Audience != "" && !strings.HasPrefix(info.Audience, "https://ossrdbms-aad.")):
		e.Reading = fmt.Sprintf("The token is for %q, not for Azure Database for PostgreSQL (%s).", info.Audience, wantAud)
		e.Fix = "Get the token for the scope " + ScopePublic + " (or the national cloud's): leave out a custom entraauth.WithScope, and let entraauth pick the scope from the host name."
	case strings.HasPrefix(msg, azureTokenInvalid):
		e.Reading = fmt.Sprintf("The server could not validate the token: it may be from another tenant than the server's (this one is from tenant %s), not yet valid by the server's clock (iat %s), or not signed by Entra ID.",
			orUnknown(info.TenantID), info.IssuedAt.UTC().Format(time.RFC3339))
		e.Fix = "Get the token from the server's tenant (entraauth.WithTenantID, or az login --tenant) and check this machine's clock."
	case strings.Contains(msg, "no pg_hba.conf entry"):
		e.Reading = "The server accepts no login from this client's address, with this user and TLS setting."
		e.Fix = "Allow this client's address in the server's firewall rules (or private endpoint), and connect with TLS."
	case strings.Contains(msg, "does not exist") && strings.Contains(msg, "role"):
		e.Reading = fmt.Sprintf("The server has no role %q.", e.User)
		e.CreateRoleSQL = createRoleSQL(e.User, info)
		e.Fix = "Ask an Entra administrator of the server to create it: " + e.CreateRoleSQL
	case info.Name != "" && !strings.EqualFold(e.User, info.Name):
		from := e.UserSource
		if from == "" {
			from = "the application's connection settings"
		}
		e.Reading = fmt.Sprintf("The user name came from %s, but the token is for %s: Azure logs a token in only as the role created for the token's principal (its oid).",
			from, info.Name)
		e.Fix = fmt.Sprintf("Remove the user name from %s, so that entraauth sends the token's (%q), or get a token for the principal role %q was created for.",
			from, info.Name, e.User)
	case pe.Code == "28P01" || strings.Contains(msg, "authentication failed"):
		e.CreateRoleSQL = createRoleSQL(e.User, info)
		e.Reading = fmt.Sprintf("The server refused a valid-looking token for role %q: no role was created for this principal, or role %q was created for another principal (another oid), or Microsoft Entra authentication is not enabled on the server. Whether the role exists cannot be told from outside: Azure answers the same.",
			e.User, e.User)
		e.Fix = "Ask an Entra administrator of the server to create the role for this principal: " + e.CreateRoleSQL
	default:
		e.Reading = "The server refused the login (SQLSTATE " + pe.Code + ")."
		e.Fix = "Read the server's message above; pgentra doctor checks each step of the login."
	}
}

// createRoleSQL is the SQL that creates a role for the token's principal.
func createRoleSQL(user string, info TokenInfo) string {
	q := quoteLiteral(user)
	if info.Type == PrincipalUser || info.ObjectID == "" {
		return fmt.Sprintf("select * from pgaadauth_create_principal(%s, false, false);", q)
	}
	return fmt.Sprintf("select * from pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false);", q, quoteLiteral(info.ObjectID))
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func orUnknown(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// relative says how far t is from now, as "3m0s ago" or "in 3m0s".
func relative(t, now time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	d := now.Sub(t).Round(time.Second)
	if d >= 0 {
		return d.String() + " ago"
	}
	return "in " + (-d).String()
}

// userSources remembers where named user names came from, as connections
// are readied, so that Explain can say it: a user name and its source, and
// a managed identity's object ID and the name found for it. It holds no
// token. It is written only when entraauth first sees a connection string,
// an option or a principal, never on a warm connect.
var userSources = struct {
	sync.Mutex
	named   map[string]string // user name → where it was named
	derived map[string]string // managed identity's oid → its name
}{named: map[string]string{}, derived: map[string]string{}}

// maxUserSources bounds each of userSources' maps; a program naming more
// users than this starts them over.
const maxUserSources = 256

func rememberUserSource(user, source string) {
	if user == "" {
		return
	}
	userSources.Lock()
	defer userSources.Unlock()
	if len(userSources.named) >= maxUserSources {
		clear(userSources.named)
	}
	userSources.named[user] = source
}

func rememberManagedIdentity(oid, name string) {
	userSources.Lock()
	defer userSources.Unlock()
	if len(userSources.derived) >= maxUserSources {
		clear(userSources.derived)
	}
	userSources.derived[oid] = name
}

// userSourceOf says where user, sent with a token for info's principal,
// came from: a source remembered for the name, else the token. A
// principal whose name entraauth found as a managed identity's is marked
// as one in info.
func userSourceOf(user string, info *TokenInfo) string {
	userSources.Lock()
	src, named := userSources.named[user]
	mi, derived := userSources.derived[info.ObjectID]
	userSources.Unlock()
	if derived && info.ObjectID != "" {
		info.Type = PrincipalManagedIdentity
	}
	switch {
	case named:
		return src
	case info.Name != "" && user == info.Name:
		return "the token's " + info.NameClaim + " claim"
	case derived && user == mi:
		return "the managed identity's name (xms_mirid of a Resource Manager token)"
	}
	return ""
}
