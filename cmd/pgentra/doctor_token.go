package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/log"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/pgentra/entraauth"
)

// authLog collects azidentity's authentication log lines, which say which
// credential of a chain answered ("DefaultAzureCredential authenticated
// with AzureCLICredential") and which endpoint a managed identity uses.
type authLog struct {
	mu    sync.Mutex
	lines []string
}

// listenAuthLog starts collecting; stop ends it. The listener is the
// process's: pgentra runs one command.
func listenAuthLog() *authLog {
	a := &authLog{}
	log.SetEvents(azidentity.EventAuthentication)
	log.SetListener(func(_ log.Event, msg string) {
		a.mu.Lock()
		a.lines = append(a.lines, msg)
		a.mu.Unlock()
	})
	return a
}

func (a *authLog) stop() { log.SetListener(nil) }

func (a *authLog) get() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.lines...)
}

// chainAnswered matches azidentity's line for the chain's credential that
// answered.
var chainAnswered = regexp.MustCompile(`^(\S+) authenticated with (\S+)$`)

// credentialName is the type name of cred, such as AzureCLICredential.
func credentialName(cred azcore.TokenCredential) string {
	name := fmt.Sprintf("%T", cred)
	return name[strings.LastIndexByte(name, '.')+1:]
}

// credentialStep gets a token straight from the credential, so that a bad
// one is inspected rather than refused, and says which credential
// answered. The token is "" when none came.
func (d *doctor) credentialStep(ctx context.Context) (*step, string) {
	var from string
	switch {
	case d.o.credential != "":
		from = "--credential " + d.o.credential
	case d.o.clientID != "" || d.t.env == nil:
		from = "--credential default"
	default:
		from = fmt.Sprintf("the Service Connector variables (%s_…)", d.t.env.Prefix)
	}
	tok, err := d.t.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{d.t.scope}, TenantID: d.t.tenant})
	d.authLines.stop()
	lines := d.authLines.get()
	if err != nil {
		s := failed("credential", credentialName(d.t.cred)+" gave no token", d.credentialFix(err))
		s.fact("from", from).fact("scope", d.t.scope).fact("error", err.Error())
		return s.fact("azidentity", strings.Join(lines, "\n")), ""
	}
	answered := credentialName(d.t.cred)
	for _, l := range lines {
		if m := chainAnswered.FindStringSubmatch(l); m != nil {
			answered = m[2] + " (in " + m[1] + "'s chain)"
		}
	}
	s := passed("credential", answered+" answered")
	s.fact("from", from).fact("scope", d.t.scope)
	return s.fact("azidentity", strings.Join(lines, "\n")), tok.Token
}

// credentialFix says in one sentence how to get the credential to answer.
func (d *doctor) credentialFix(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "the credential did not answer within --timeout: check the network path to Microsoft Entra ID (or to the managed identity endpoint), or give a longer --timeout"
	}
	switch d.o.credential {
	case "cli":
		if strings.Contains(err.Error(), "executable not found") {
			return "install the Azure CLI (az) and sign in with az login, or choose another credential with --credential"
		}
		return "sign in with az login (az account show says who is signed in), or choose another credential with --credential"
	case "azd":
		return "sign in with azd auth login, or choose another credential with --credential"
	case "managed-identity":
		return "run where the managed identity is assigned (App Service, VM, Container Apps, AKS) and check that --client-id names one assigned to this resource"
	case "workload-identity":
		return "check AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE, which AKS workload identity sets in the pod"
	case "environment":
		return "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH) for the app registration"
	case "device-code":
		return "complete the device code sign-in within --timeout"
	}
	return "sign in with az login, or run where a managed identity is assigned; the error lists what each credential of the chain answered"
}

// tokenInfo is what the doctor reads from a token.
type tokenInfo = entraauth.TokenInfo

// clockTolerance is how far the token's times may be from this machine's
// before the clock is blamed (Azure's own leeway is five minutes).
const clockTolerance = 5 * time.Minute

// tokenStep reads the claims that matter from the token.
func (d *doctor) tokenStep(tok string) (*step, *tokenInfo) {
	if tok == "" {
		return skipped("token", "no token to inspect: the credential gave none"), nil
	}
	info, err := entraauth.InspectToken(tok)
	if err != nil {
		return failed("token", "the credential's answer is not a JWT: "+err.Error(),
			"a Microsoft Entra access token is a JWT: check that the credential is Entra's (not a secret or a password set by mistake)"), nil
	}
	now := time.Now()
	wantAud := strings.TrimSuffix(entraauth.ScopeForHost(d.host), "/.default")
	name := info.Name
	if name == "" {
		name = "(no name claim)"
	} else {
		name += " (" + info.NameClaim + " claim)"
	}
	var s *step
	switch {
	case strings.TrimSuffix(info.Audience, "/") != wantAud:
		fix := fmt.Sprintf("ask for a token for %s: ", wantAud+"/.default")
		if d.o.scope != "" {
			fix += "drop --scope, which chooses the scope from the server's host name"
		} else {
			fix += "give --scope " + wantAud + "/.default"
		}
		s = failed("token", fmt.Sprintf("the token is for %s, not for Azure Database for PostgreSQL (%s)", info.Audience, wantAud), fix)
	case !info.ExpiresOn.IsZero() && !now.Before(info.ExpiresOn):
		s = failed("token", fmt.Sprintf("the token expired %s ago", roundDur(now.Sub(info.ExpiresOn))),
			"the credential handed out an expired token: sign in again (az login, azd auth login) or clear its cache, and check this machine's clock")
	case !info.IssuedAt.IsZero() && info.IssuedAt.Sub(now) > clockTolerance:
		s = failed("token", fmt.Sprintf("the token was issued %s in this machine's future", roundDur(info.IssuedAt.Sub(now))),
			"this machine's clock is behind: synchronise it (NTP, w32tm /resync), as the server checks the token's times against its own")
	default:
		s = passed("token", fmt.Sprintf("%s %s, expires in %s", info.Type, name, roundDur(info.ExpiresOn.Sub(now))))
	}
	s.fact("principal", name).fact("type", info.Type).fact("oid", info.ObjectID).fact("appid", info.AppID)
	s.fact("tenant", info.TenantID).fact("audience", info.Audience).fact("issuer", info.Issuer)
	if !info.IssuedAt.IsZero() {
		s.fact("issued", info.IssuedAt.UTC().Format(time.RFC3339))
	}
	if !info.ExpiresOn.IsZero() {
		s.fact("expires", info.ExpiresOn.UTC().Format(time.RFC3339))
	}
	s.fact("clock skew", clockSkew(now, info.IssuedAt))
	return s, &info
}

// clockSkew describes the gap between this machine's clock and the token's
// issue time.
func clockSkew(now, iat time.Time) string {
	switch {
	case iat.IsZero():
		return "unknown (no iat claim)"
	case iat.After(now):
		return fmt.Sprintf("this machine's clock is %s behind the token's issue time", roundDur(iat.Sub(now)))
	}
	return fmt.Sprintf("none ahead of the token: issued %s ago by this machine's clock (a cached token can be older)", roundDur(now.Sub(iat)))
}

// roundDur rounds d to the second.
func roundDur(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	return d.Round(time.Second).String()
}

// userStep says which database user name will be sent, and where it comes
// from. A name found as a managed identity's sets info's type.
func (d *doctor) userStep(ctx context.Context, tok string, info *tokenInfo) (*step, string) {
	if d.user != "" {
		s := passed("user", fmt.Sprintf("%s, from %s", d.user, d.userFrom))
		s.fact("user", d.user).fact("from", d.userFrom)
		if info != nil && info.Name != "" && !strings.EqualFold(info.Name, d.user) {
			s.fact("note", fmt.Sprintf("the token's principal is %s (%s claim): %s must be a role created for it, or for a group it is in",
				info.Name, info.NameClaim, d.user))
		}
		return s, d.user
	}
	if tok == "" || info == nil {
		return skipped("user", "the token would name the user, and there is none; nothing names it otherwise (-U, PGUSER, --user)"), ""
	}
	if info.Name != "" {
		from := fmt.Sprintf("the token's %s claim", info.NameClaim)
		return passed("user", fmt.Sprintf("%s, from %s", info.Name, from)).fact("user", info.Name).fact("from", from), info.Name
	}
	// No name claim: the library asks Azure Resource Manager for a managed
	// identity's name, as a connection does.
	_, user, err := d.t.tokenAndUser(ctx)
	if err != nil {
		fix := "name the role with -U NAME, PGUSER or --user: a service principal's tokens carry no name"
		if info.Type == "user" {
			fix = "name the role with -U NAME, PGUSER or --user"
		}
		s := failed("user", "no user name: the token has no upn, preferred_username or unique_name claim, and no managed identity's name was found", fix)
		return s.fact("error", cliMessage("doctor", err)), ""
	}
	info.Type = entraauth.PrincipalManagedIdentity // a name found in xms_mirid is a managed identity's
	from := "the managed identity's name (xms_mirid of an Azure Resource Manager token)"
	return passed("user", fmt.Sprintf("%s, from %s", user, from)).fact("user", user).fact("from", from), user
}
