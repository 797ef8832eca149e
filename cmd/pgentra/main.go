// Command pgentra gets Microsoft Entra ID access tokens for Azure Database
// for PostgreSQL, for tools that take a password: psql, pgAdmin, scripts.
//
// Install it with
//
//	go install github.com/pgentra/entraauth/cmd/pgentra@latest
//
// Subcommands:
//
//	pgentra token [flags]                      print an access token and a newline, nothing else
//	pgentra user [flags]                       print the database user name the token maps to
//	pgentra psql [flags] [--] [psql args...]   run psql with the token as its password
//	pgentra proxy --upstream HOST [flags]      a local PostgreSQL proxy that logs clients in with tokens
//	pgentra doctor [flags] [-h HOST ...]       check each step of an Entra login and say what to fix
//	pgentra version                            print the version, VCS revision and Go version
//
// In pgAdmin, set the server's "Password exec command" to
// "pgentra token --host <server>" and its "Password exec expiration" to a
// few minutes under the token lifetime, such as 3000 seconds.
//
// pgentra reads Azure Service Connector's variables
// (AZURE_POSTGRESQL_CONNECTIONSTRING and the others, see
// entraauth.LoadEnv) when they are set, for the server and the credential;
// flags override them. Run "pgentra help", and "pgentra COMMAND --help", for
// the flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses of pgentra's own (psql's are passed on).
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// commands are pgentra's subcommands.
var commands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) int{
	"token":   runToken,
	"user":    runUser,
	"psql":    runPsql,
	"proxy":   runProxy,
	"doctor":  runDoctor,
	"version": runVersion,
}

// run runs one subcommand and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	if f, ok := commands[cmd]; ok {
		return f(ctx, rest, stdout, stderr)
	}
	switch cmd {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	case "-version", "--version":
		return runVersion(ctx, rest, stdout, stderr)
	}
	fmt.Fprintf(stderr, "pgentra: unknown command %q%s; run \"pgentra help\"\n", cmd, didYouMean(cmd))
	return exitUsage
}

// didYouMean suggests the command closest to an unknown one, as
// "; did you mean \"token\"?", or returns "" when none is close.
func didYouMean(cmd string) string {
	best, bestDist := "", 3 // farther than two edits is no typo
	for _, name := range append(slices.Sorted(maps.Keys(commands)), "help") {
		if d := editDistance(strings.ToLower(cmd), name); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// errUsage marks an error in the command line.
var errUsage = errors.New("usage")

// commonFlagsHelp describes the flags every subcommand takes, for the
// subcommand cmd.
func commonFlagsHelp(cmd string) string {
	header, host := "Credential flags:", "the server, whose cloud picks the token scope"
	switch cmd {
	case "psql":
		header = "pgentra flags (before psql's arguments, or end them with --):"
		host = "the server: sets PGHOST; its cloud picks the token scope"
	case "proxy":
		host = "the server when --upstream is not given; its cloud picks the token scope"
	case "doctor":
		host = "the server to check: sets PGHOST; its cloud picks the token scope"
	}
	return header + `
  --credential KIND  where the token comes from: default (DefaultAzureCredential),
                     cli (az login), azd (azd auth login), managed-identity,
                     workload-identity, environment (AZURE_CLIENT_ID, AZURE_TENANT_ID,
                     AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH),
                     device-code; default: the Service Connector variables'
                     credential when they are set, else default
  --client-id ID     client ID of a user-assigned managed identity (managed-identity,
                     default) or of an app (workload-identity, device-code)
  --tenant ID        Microsoft Entra tenant to get the token from
  --host HOST        ` + host + `
  --scope SCOPE      the token scope; default: the one for --host, else
                     https://ossrdbms-aad.database.windows.net/.default
  --env-prefix P     prefix of the Service Connector variables (default AZURE_POSTGRESQL)
  --timeout D        give up getting a token after D (default 2m)
` + versionHelp(cmd) + `  --help             show this help
`
}

// versionHelp describes --version, which psql leaves to psql.
func versionHelp(cmd string) string {
	if cmd == "psql" {
		return ""
	}
	return "  --version          print pgentra's version, as pgentra version does\n"
}

const usage = `pgentra: Microsoft Entra ID access tokens for Azure Database for PostgreSQL.

Usage:
  pgentra token [flags]                      print an access token, for PGPASSWORD or pgAdmin
  pgentra user [flags]                       print the database user name the token maps to
  pgentra psql [flags] [--] [psql args...]   run psql with the token as its password
  pgentra proxy --upstream HOST [flags]      local proxy for any PostgreSQL client
  pgentra doctor [flags] [-h HOST ...]       check each step of an Entra login: credential,
                                             token, user, DNS, TCP, TLS, login; say what to fix
  pgentra version                            print pgentra's version (also --version)

Run "pgentra COMMAND --help" for a command's flags. token, user, psql,
proxy and doctor take the credential flags (--credential, --client-id, --tenant,
--host, --scope, --env-prefix, --timeout).

pgentra proxy runs as a sidecar too: --health-check, --prometheus,
--run-connection-test, --structured-logs, and every flag as a PGENTRA_…
variable (PGENTRA_UPSTREAM, PGENTRA_HEALTH_CHECK=true); see
"pgentra proxy --help".

Service Connector: when AZURE_POSTGRESQL_CONNECTIONSTRING (or _HOST) is set,
its server, user and credential (_CLIENTID, _CLIENTSECRET, _TENANTID) are used
unless flags say otherwise.

Examples:
  PGPASSWORD=$(pgentra token) psql "host=mysrv.postgres.database.azure.com dbname=postgres user=alice@contoso.com sslmode=verify-full"
  pgentra psql -h mysrv.postgres.database.azure.com -d postgres
  pgentra psql --credential managed-identity --client-id 00000000-0000-0000-0000-000000000000 -h mysrv.postgres.database.azure.com
  pgentra token --host mysrv.postgres.database.chinacloudapi.cn
  pgentra token --output json
  pgentra user --credential cli
  pgentra doctor -h mysrv.postgres.database.azure.com -U app

pgAdmin (server properties, Advanced tab; leave the password empty):
  Password exec command:    pgentra token --host mysrv.postgres.database.azure.com
  Password exec expiration: 3000 (seconds, a few minutes under the token's hour)
`
