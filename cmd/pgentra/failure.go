package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pgentra/entraauth"
)

// fail prints err on stderr, prefixed with the command, and returns
// exitUsage for a usage error, else exitFail. A message of several lines
// (azidentity's have the credentials tried and a troubleshooting link on
// lines of their own) keeps its lines, indented under the first. Errors
// never contain a token: entraauth and azidentity keep them out.
func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "pgentra %s: %s\n", cmd, indent(cliMessage(cmd, err)))
	if errors.Is(err, errUsage) {
		return exitUsage
	}
	return exitFail
}

// indent returns msg's first line as it is and each further line
// indented by two spaces, without blank lines or trailing space.
func indent(msg string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(msg), "\n") {
		line = strings.TrimRight(line, " \t\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(line)
	}
	return b.String()
}

// cliMessage returns err's message in the CLI's terms: where the library
// points to one of its Go options, the CLI names its flag.
func cliMessage(cmd string, err error) string {
	if errors.Is(err, entraauth.ErrNoUsername) {
		return "no database user name: the token has none of the claims upn, preferred_username or unique_name, " +
			"and no managed identity's name was found (service principals' tokens carry none); " + nameTheUser(cmd)
	}
	msg := strings.TrimPrefix(err.Error(), errUsage.Error()+": ")
	return goOptionFlags(cmd).Replace(msg)
}

// nameTheUser says how to name the database user with cmd.
func nameTheUser(cmd string) string {
	switch cmd {
	case "psql":
		return "name the user with -U NAME (or PGUSER, or user= in the connection string)"
	case "user":
		return "name the role you log in as to psql (-U NAME) or pgentra token (--user NAME)"
	}
	return "name the user with --user NAME"
}

// goOptionFlags replaces the names of entraauth's Go options in a
// message with the flags of cmd that set the same thing.
func goOptionFlags(cmd string) *strings.Replacer {
	user := "--user"
	switch cmd {
	case "psql":
		user = "-U (or PGUSER)"
	case "user":
		user = "psql -U or pgentra token --user"
	}
	return strings.NewReplacer(
		"entraauth.WithUser", user, "WithUser", user,
		"entraauth.WithScope", "--scope", "WithScope", "--scope",
		"entraauth.WithTenantID", "--tenant", "WithTenantID", "--tenant",
		"entraauth.WithFetchTimeout", "--timeout", "WithFetchTimeout", "--timeout",
	)
}
