package main

import (
	"context"
	"fmt"
	"io"
)

const userHelp = `Usage: pgentra user [flags]

Prints the database user name the token maps to, by the library's rules:
the token's upn, preferred_username or unique_name claim, else, for a
managed identity, its name (from an Azure Resource Manager token's
xms_mirid claim). A user name named elsewhere (PGUSER, the Service
Connector connection string) is not consulted.
`

// runUser prints the user name the token maps to.
func runUser(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlagSet("user", stderr, &o)
	if code, ok := parseFlags(fs, args, userHelp, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgentra user: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	t, err := o.resolve("")
	if err != nil {
		return fail(stderr, "user", err)
	}
	if t.ts == nil {
		return fail(stderr, "user", t.passwordModeError())
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	_, user, err := t.tokenAndUser(ctx)
	if err != nil {
		return fail(stderr, "user", err)
	}
	if _, err := fmt.Fprintln(stdout, user); err != nil {
		return fail(stderr, "user", err)
	}
	return exitOK
}
