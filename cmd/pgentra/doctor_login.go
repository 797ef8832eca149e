package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth"
)

// loginStep logs in with the token, when every step before it allows:
// the token goes only to a server verified as sslmode asks, and only when
// it is for that server.
func (d *doctor) loginStep(ctx context.Context, tok string, info *tokenInfo, user string, rep *report) *step {
	for _, dep := range []struct{ name, why string }{
		{"credential", "no token to log in with"},
		{"token", "the token is not one the server accepts, and a token for another resource is not sent"},
		{"user", "no user name to log in as"},
		{"tcp", "the server cannot be reached"},
		{"tls", "the token is sent only over TLS to a server verified as sslmode asks"},
	} {
		if s := rep.step(dep.name); s != nil && s.Status != statusPass {
			return skipped("login", fmt.Sprintf("not tried: %s (the %s step)", dep.why, dep.name))
		}
	}
	if tok == "" || user == "" || info == nil {
		return skipped("login", "not tried: no token or no user name")
	}
	tlsConf, err := d.tlsConfig()
	if err != nil {
		return failed("login", "the root certificates cannot be read", "see the tls step").fact("error", err.Error())
	}
	// Only what is set below is used: the TLS configuration is the
	// doctor's own, for the sslmode resolved as pgentra psql resolves it.
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return failed("login", "the PG… environment variables cannot be read", "fix the PG… variables pgx reads (PGSERVICE, PGSSLCERT and the others)").
			fact("error", err.Error())
	}
	cfg.Host, cfg.Port = d.host, d.port
	if d.hostaddr != "" {
		cfg.Host = d.hostaddr
	}
	cfg.Database, cfg.User, cfg.Password = d.dbname, user, tok
	cfg.TLSConfig, cfg.Fallbacks = tlsConf, nil
	cfg.RuntimeParams = map[string]string{"application_name": "pgentra doctor"}
	cfg.ConnectTimeout = d.o.timeout
	cfg.OnNotice, cfg.OnNotification = nil, nil

	db := d.dbname
	if db == "" {
		db = user + " (the user name: no database named)"
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		version := conn.ParameterStatus("server_version")
		_ = conn.Close(ctx)
		return passed("login", fmt.Sprintf("logged in as %s", user)).fact("database", db).fact("server version", version)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return failed("login", "the login failed before the server answered", "see the error").
			fact("user", user).fact("database", db).fact("error", err.Error())
	}
	s := failed("login", fmt.Sprintf("the server refused the login: %s", pgErr.Message), "see the server's message and detail")
	// A user the doctor named (-U, PGUSER, --user, a service) has its
	// source; one from the token, the library finds as a connection's.
	source := ""
	if d.user != "" {
		source = d.userFrom
	}
	var le *entraauth.LoginError
	if !errors.As(entraauth.ExplainUserSource(err, source), &le) {
		s.fact("user", user).fact("database", db)
		return s.fact("message", pgErr.Message).fact("detail", pgErr.Detail).fact("hint", pgErr.Hint).fact("sqlstate", pgErr.Code)
	}
	s.fact("user", user).fact("from", le.UserSource).fact("database", db)
	s.fact("message", pgErr.Message).fact("detail", pgErr.Detail).fact("hint", pgErr.Hint).fact("sqlstate", pgErr.Code)
	s.Fix = goOptionFlags("doctor").Replace(le.Fix)
	s.fact("reading", goOptionFlags("doctor").Replace(le.Reading))
	if pgErr.Code == "28P01" && !strings.Contains(le.Reading, "cannot be told from outside") {
		s.fact("role exists?", fmt.Sprintf("cannot be told from outside: Azure answers the same for a role %q that does not exist and for one created for another principal", user))
	}
	return s.fact("create the role", le.CreateRoleSQL)
}
