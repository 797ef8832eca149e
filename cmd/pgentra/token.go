package main

import (
	"context"
	"fmt"
	"io"
)

const tokenHelp = `Usage: pgentra token [flags]

Prints an access token for Azure Database for PostgreSQL and a newline on
stdout, and nothing else; on failure, one line on stderr and exit status 1.
For PGPASSWORD=$(pgentra token), and pgAdmin's "Password exec command"
(with "Password exec expiration" a few minutes under the token's lifetime,
such as 3000 seconds).
`

// runToken prints a token.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlagSet("token", stderr, &o)
	if code, ok := parseFlags(fs, args, tokenHelp, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgentra token: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
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
	if err != nil {
		return fail(stderr, "token", err)
	}
	if _, err := fmt.Fprintln(stdout, tok.Value); err != nil {
		return fail(stderr, "token", fmt.Errorf("writing the token: %w", err))
	}
	return exitOK
}
