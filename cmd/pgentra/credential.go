package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth"
)

// options are the flags every subcommand takes.
type options struct {
	credential string
	clientID   string
	tenant     string
	host       string
	scope      string
	envPrefix  string
	timeout    time.Duration
	// user, when set, is the database user name: the TokenSource gets it
	// through entraauth.WithUser, so it is used as it is, even when it is
	// the OS user's name. A subcommand that takes --user sets it.
	user string
	// envUser makes the Service Connector variables' user, if any, the
	// user when --user is not given.
	envUser bool
}

// credentialKinds are the values of --credential.
var credentialKinds = []string{"default", "cli", "azd", "managed-identity", "workload-identity", "environment", "device-code"}

// newFlagSet returns a flag set for a subcommand with the common flags.
// Its errors go to stderr; parseFlags prints the help.
func newFlagSet(name string, stderr io.Writer, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("pgentra "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	fs.StringVar(&o.credential, "credential", "", "")
	fs.StringVar(&o.clientID, "client-id", "", "")
	fs.StringVar(&o.tenant, "tenant", "", "")
	fs.StringVar(&o.host, "host", "", "")
	fs.StringVar(&o.scope, "scope", "", "")
	fs.StringVar(&o.envPrefix, "env-prefix", entraauth.DefaultEnvPrefix, "")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "")
	if name != "psql" { // psql's --version is psql's
		fs.Bool("version", false, "")
	}
	return fs
}

// parseFlags parses a subcommand's flags. It returns false with the exit
// status when the command ends here: after printing help on stdout for
// --help (the subcommand's help, then the common flags), or after a flag
// error (which flag has printed on stderr), or after printing the
// version for --version.
func parseFlags(fs *flag.FlagSet, args []string, help string, stdout, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, help+"\n"+commonFlagsHelp(strings.TrimPrefix(fs.Name(), "pgentra ")))
			return exitOK, false
		}
		fmt.Fprintf(stderr, "run \"%s --help\" for help\n", fs.Name())
		return exitUsage, false
	}
	if v := fs.Lookup("version"); v != nil && v.Value.String() == "true" {
		return runVersion(context.Background(), nil, stdout, stderr), false
	}
	return exitOK, true
}

// target is what a subcommand works with: a token source, or a password,
// and the server settings from the environment.
type target struct {
	ts  *entraauth.TokenSource // nil in password mode
	env *entraauth.EnvConfig   // nil without Service Connector variables
	// host is --host, else the Service Connector host, else "".
	host string
	// scope is the scope of the tokens.
	scope string
	// cred is the credential the token source asks, and tenant the
	// tenant it asks it for ("" for the credential's own); nil in
	// password mode.
	cred   azcore.TokenCredential
	tenant string
}

// resolve reads the Service Connector variables, if set, and builds the
// credential and token source the flags and variables ask for. hostHint is
// a host found elsewhere (psql's arguments, PGHOST), used for the scope
// when neither --host nor the variables name one.
func (o *options) resolve(hostHint string) (*target, error) {
	if o.timeout <= 0 {
		return nil, fmt.Errorf("%w: --timeout must be positive", errUsage)
	}
	t := &target{host: o.host}
	prefix := strings.TrimSuffix(o.envPrefix, "_")
	if os.Getenv(prefix+"_CONNECTIONSTRING") != "" || os.Getenv(prefix+"_HOST") != "" {
		ec, err := entraauth.LoadEnv(prefix)
		if err != nil {
			return nil, err
		}
		t.env = ec
		if t.host == "" {
			t.host, _, _ = strings.Cut(ec.Host, ",")
		}
	}
	scope := o.scope
	if scope == "" {
		host := t.host
		if host == "" {
			host = hostHint
		}
		scope = entraauth.ScopeForHost(host)
	}
	t.scope = scope
	opts := []entraauth.Option{entraauth.WithScope(scope), entraauth.WithFetchTimeout(o.timeout)}
	user := o.user
	if user == "" && o.envUser && t.env != nil {
		user = t.env.User
	}
	if user != "" {
		opts = append(opts, entraauth.WithUser(user))
	}

	var cred azcore.TokenCredential
	switch {
	case o.credential != "" || o.clientID != "":
		var err error
		if cred, err = o.newCredential(); err != nil {
			return nil, err
		}
	case t.env != nil && t.env.PasswordAuth:
		return t, nil // no token: the variables hold a password
	case t.env != nil:
		cred = t.env.Credential
		if o.tenant != "" {
			opts = append(opts, entraauth.WithTenantID(o.tenant))
			t.tenant = o.tenant
		}
	default:
		o.credential = "default"
		var err error
		if cred, err = o.newCredential(); err != nil {
			return nil, err
		}
	}
	t.cred = cred
	t.ts = entraauth.NewTokenSource(cred, opts...)
	return t, nil
}

// newCredential builds the credential --credential names.
func (o *options) newCredential() (azcore.TokenCredential, error) {
	kind := o.credential
	if kind == "" {
		kind = "default"
	}
	noClientID := func() error {
		if o.clientID != "" {
			return fmt.Errorf("%w: --client-id does not apply to --credential %s", errUsage, kind)
		}
		return nil
	}
	noTenant := func() error {
		if o.tenant != "" {
			return fmt.Errorf("%w: --tenant does not apply to --credential %s", errUsage, kind)
		}
		return nil
	}
	switch kind {
	case "default":
		if o.clientID != "" {
			// DefaultAzureCredential takes a user-assigned managed identity's
			// (or workload identity's) client ID from the environment.
			if err := os.Setenv("AZURE_CLIENT_ID", o.clientID); err != nil {
				return nil, err
			}
		}
		return azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{TenantID: o.tenant})
	case "cli":
		if err := noClientID(); err != nil {
			return nil, err
		}
		return azidentity.NewAzureCLICredential(&azidentity.AzureCLICredentialOptions{TenantID: o.tenant})
	case "azd":
		if err := noClientID(); err != nil {
			return nil, err
		}
		return azidentity.NewAzureDeveloperCLICredential(&azidentity.AzureDeveloperCLICredentialOptions{TenantID: o.tenant})
	case "managed-identity":
		if err := noTenant(); err != nil {
			return nil, err
		}
		var mo azidentity.ManagedIdentityCredentialOptions
		if o.clientID != "" {
			mo.ID = azidentity.ClientID(o.clientID)
		}
		return azidentity.NewManagedIdentityCredential(&mo)
	case "workload-identity":
		return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{ClientID: o.clientID, TenantID: o.tenant})
	case "environment":
		if err := noClientID(); err != nil {
			return nil, err
		}
		if err := noTenant(); err != nil {
			return nil, err
		}
		return azidentity.NewEnvironmentCredential(nil)
	case "device-code":
		return azidentity.NewDeviceCodeCredential(&azidentity.DeviceCodeCredentialOptions{
			ClientID: o.clientID,
			TenantID: o.tenant,
			// The prompt goes to stderr: stdout is for the token.
			UserPrompt: func(_ context.Context, m azidentity.DeviceCodeMessage) error {
				_, err := fmt.Fprintln(os.Stderr, m.Message)
				return err
			},
		})
	}
	return nil, fmt.Errorf("%w: unknown --credential %q (want one of %s)", errUsage, kind, strings.Join(credentialKinds, ", "))
}

// tokenAndUser returns a token and the database user name: --user's
// (WithUser), else the one the token maps to by the library's rules
// (claims, then a managed identity's name), found by readying a
// connection config the way a pool's BeforeConnect does.
func (t *target) tokenAndUser(ctx context.Context) (token, user string, err error) {
	// The config only carries the user name in and out: the scope is fixed
	// by WithScope, and a unix socket host needs no TLS. Nothing connects.
	// It is built here rather than parsed, so that no PG… variable or
	// service file of psql's can make it fail or name a user.
	cfg := &pgx.ConnConfig{Config: pgconn.Config{Host: "/nonexistent-pgentra-socket-dir", Port: 5432}}
	if err := t.ts.BeforeConnect(ctx, cfg); err != nil {
		return "", "", err
	}
	return cfg.Password, cfg.User, nil
}

// checkJWT refuses a token that is not a JWT, with the error the library
// gives when it reads one (ErrMalformedToken).
func checkJWT(token string) error {
	if _, err := entraauth.UsernameFromToken(token); errors.Is(err, entraauth.ErrMalformedToken) {
		return err
	}
	return nil
}

// passwordModeError explains why there is no token to print.
func (t *target) passwordModeError() error {
	return fmt.Errorf("the Service Connector variables (%s_…) configure password authentication: there is no Entra token; "+
		"use --credential to get one anyway, or --env-prefix for other variables", t.env.Prefix)
}
