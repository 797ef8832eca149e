package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
)

const tokenHelp = `Usage: pgentra token [flags]

Prints an access token for Azure Database for PostgreSQL and a newline on
stdout, and nothing else; on failure, the reason on stderr and exit status
1. For PGPASSWORD=$(pgentra token), and pgAdmin's "Password exec command"
(with "Password exec expiration" a few minutes under the token's lifetime,
such as 3000 seconds). A credential's answer that is not a JWT is refused.

Token flags:
  --output FORMAT    text (default): the token alone; json: one JSON object,
                     {"token", "expires_on", "user", "scope"}, for scripts
                     that cache the token: expires_on in Unix seconds (as
                     az account get-access-token prints it), user the
                     database user name (--user, else the Service Connector
                     variables' user, else the one the token maps to, as
                     pgentra user finds it)
  --user NAME        the database user name for --output json
`

// tokenJSON is what pgentra token --output json prints.
type tokenJSON struct {
	Token     string `json:"token"`
	ExpiresOn int64  `json:"expires_on"`
	User      string `json:"user"`
	Scope     string `json:"scope"`
}

// runToken prints a token.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	var output string
	fs := newFlagSet("token", stderr, &o)
	fs.StringVar(&output, "output", "text", "")
	fs.StringVar(&o.user, "user", "", "")
	o.envUser = true
	if code, ok := parseFlags(fs, args, tokenHelp, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return fail(stderr, "token", fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0)))
	}
	if output != "text" && output != "json" {
		return fail(stderr, "token", fmt.Errorf("%w: --output must be text or json, not %q", errUsage, output))
	}
	if output == "text" && o.user != "" {
		return fail(stderr, "token", fmt.Errorf("%w: --user goes with --output json", errUsage))
	}
	t, err := o.resolve("")
	if err != nil {
		return fail(stderr, "token", err)
	}
	if t.ts == nil {
		return fail(stderr, "token", t.passwordModeError())
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	tok, err := t.ts.Token(ctx)
	if err == nil {
		err = checkJWT(tok.Value)
	}
	if err != nil {
		return fail(stderr, "token", err)
	}
	if output == "text" {
		if _, err := fmt.Fprintln(stdout, tok.Value); err != nil {
			return fail(stderr, "token", fmt.Errorf("writing the token: %w", err))
		}
		return exitOK
	}
	_, user, err := t.tokenAndUser(ctx)
	if err != nil {
		return fail(stderr, "token", err)
	}
	out := tokenJSON{Token: tok.Value, ExpiresOn: tok.ExpiresOn.Unix(), User: user, Scope: t.scope}
	if err := json.NewEncoder(stdout).Encode(out); err != nil {
		return fail(stderr, "token", fmt.Errorf("writing the token: %w", err))
	}
	return exitOK
}
