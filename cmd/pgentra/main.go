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
//
// In pgAdmin, set the server's "Password exec command" to
// "pgentra token --host <server>" and its "Password exec expiration" to a
// few minutes under the token lifetime, such as 3000 seconds.
//
// pgentra reads Azure Service Connector's variables
// (AZURE_POSTGRESQL_CONNECTIONSTRING and the others, see
// entraauth.LoadEnv) when they are set, for the server and the credential;
// flags override them. Run "pgentra help" for the flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
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

// run runs one subcommand and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "token":
		return runToken(ctx, rest, stdout, stderr)
	case "user":
		return runUser(ctx, rest, stdout, stderr)
	case "psql":
		return runPsql(ctx, rest, stdout, stderr)
	case "proxy":
		return runProxy(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "pgentra: unknown command %q; run \"pgentra help\"\n", cmd)
	return exitUsage
}

// fail prints err as one line on stderr and returns exitFail. Errors never
// contain a token: entraauth and azidentity keep them out.
func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "pgentra %s: %s\n", cmd, oneLine(err.Error()))
	if errors.Is(err, errUsage) {
		return exitUsage
	}
	return exitFail
}

// oneLine joins a multi-line message (azidentity's have troubleshooting
// links on lines of their own) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// errUsage marks an error in the command line.
var errUsage = errors.New("usage")

const flagsHelp = `Flags (for psql, before its own arguments, or end them with --):
  --credential KIND  where the token comes from: default (DefaultAzureCredential),
                     cli (az login), azd (azd auth login), managed-identity,
                     workload-identity, environment (AZURE_CLIENT_ID, AZURE_TENANT_ID,
                     AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH),
                     device-code; default: the Service Connector variables'
                     credential when they are set, else default
  --client-id ID     client ID of a user-assigned managed identity (managed-identity,
                     default) or of an app (workload-identity, device-code)
  --tenant ID        Microsoft Entra tenant to get the token from
  --host HOST        the server; picks the cloud's token scope (and psql's host)
  --scope SCOPE      the token scope; default: the one for --host, else
                     https://ossrdbms-aad.database.windows.net/.default
  --env-prefix P     prefix of the Service Connector variables (default AZURE_POSTGRESQL)
  --timeout D        give up getting a token after D (default 2m)
  --help             show this help
`

const usage = `pgentra: Microsoft Entra ID access tokens for Azure Database for PostgreSQL.

Usage:
  pgentra token [flags]                      print an access token, for PGPASSWORD or pgAdmin
  pgentra user [flags]                       print the database user name the token maps to
  pgentra psql [flags] [--] [psql args...]   run psql with the token as its password
  pgentra proxy --upstream HOST [flags]      local proxy for any PostgreSQL client ("pgentra proxy --help")

` + flagsHelp + `
Service Connector: when AZURE_POSTGRESQL_CONNECTIONSTRING (or _HOST) is set,
its server, user and credential (_CLIENTID, _CLIENTSECRET, _TENANTID) are used
unless flags say otherwise.

Examples:
  PGPASSWORD=$(pgentra token) psql "host=mysrv.postgres.database.azure.com dbname=postgres user=alice@contoso.com"
  pgentra psql -h mysrv.postgres.database.azure.com -d postgres
  pgentra psql --credential managed-identity --client-id 00000000-0000-0000-0000-000000000000 -h mysrv.postgres.database.azure.com
  pgentra token --host mysrv.postgres.database.chinacloudapi.cn
  pgentra user --credential cli

pgAdmin (server properties, Advanced tab; leave the password empty):
  Password exec command:    pgentra token --host mysrv.postgres.database.azure.com
  Password exec expiration: 3000 (seconds, a few minutes under the token's hour)
`
