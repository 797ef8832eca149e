package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Exec runs sql as the superuser over the unix socket. Without args it
// uses the simple protocol, so sql may hold several statements.
func (s *Server) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := s.pool.Exec(ctx, sql, args...)
	return err
}

// CreateRole runs CREATE ROLE "name" LOGIN PASSWORD '<password>'. name may
// contain any characters but NUL (e.g. a UPN like "alice.smith@contoso.com")
// and at most 63 bytes, PostgreSQL's limit (a longer one would be silently
// truncated). The password never appears in the returned error.
func (s *Server) CreateRole(ctx context.Context, name, password string) error {
	return s.rolePassword(ctx, "CREATE ROLE %s LOGIN PASSWORD %s", "create role", name, password)
}

// SetPassword runs ALTER ROLE "name" PASSWORD '<password>'. The password
// never appears in the returned error.
func (s *Server) SetPassword(ctx context.Context, name, password string) error {
	return s.rolePassword(ctx, "ALTER ROLE %s PASSWORD %s", "set password of", name, password)
}

func (s *Server) rolePassword(ctx context.Context, format, what, name, password string) error {
	ident, err := quoteIdent(name)
	if err != nil {
		return fmt.Errorf("pgtest: %s %q: %w", what, name, err)
	}
	if strings.ContainsRune(password, 0) {
		return fmt.Errorf("pgtest: %s %q: password contains a NUL byte", what, name)
	}
	// PASSWORD takes no bind parameter: the literal is quoted instead.
	if err := s.Exec(ctx, fmt.Sprintf(format, ident, quoteLiteral(password))); err != nil {
		return fmt.Errorf("pgtest: %s %q: %w", what, name, err)
	}
	return nil
}

// quoteIdent double-quotes a role name for SQL.
func quoteIdent(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case strings.ContainsRune(name, 0):
		return "", errors.New("name contains a NUL byte")
	case len(name) > 63:
		return "", fmt.Errorf("name is %d bytes, PostgreSQL keeps only 63", len(name))
	}
	return pgx.Identifier{name}.Sanitize(), nil
}

// quoteLiteral quotes s as an SQL string literal that means s whatever
// standard_conforming_strings is: quotes are doubled, and a string with
// backslashes becomes an E” literal with the backslashes doubled.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return `'` + s + `'`
}

// quoteConnValue quotes a value for a key/value connection string if it
// needs it (empty, whitespace, quote or backslash).
func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	return `'` + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + `'`
}

// confQuote quotes a string value for postgresql.conf.
func confQuote(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

func hbaContent(lines []string) []byte {
	var b strings.Builder
	b.WriteString("# written by entraauth internal/pgtest; the first line always stays\n")
	b.WriteString(adminLine + "\n")
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return []byte(b.String())
}

// SetHBA replaces the non-admin part of pg_hba.conf with lines (the admin
// line "local all postgres trust" always stays first), reloads the
// configuration and returns once new connections use it. Lines PostgreSQL
// cannot parse are reported as an error, and the previous file is put
// back. SetHBA(ctx, DefaultHBA()...) restores the initial rules.
func (s *Server) SetHBA(ctx context.Context, lines ...string) error {
	for _, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			return fmt.Errorf("pgtest: SetHBA: line %q contains a line break", l)
		}
	}
	s.hbaMu.Lock()
	defer s.hbaMu.Unlock()

	path := filepath.Join(s.DataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("pgtest: SetHBA: %w", err)
	}
	before, err := s.confLoadTime(ctx)
	if err != nil {
		return fmt.Errorf("pgtest: SetHBA: %w", err)
	}
	if err := s.writeServerFile("pg_hba.conf", hbaContent(lines), 0o600); err != nil {
		return err
	}
	if err := s.checkHBA(ctx); err != nil {
		if rerr := s.writeServerFile("pg_hba.conf", old, 0o600); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("pgtest: SetHBA: %w", err)
	}
	if err := s.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("pgtest: SetHBA: reload: %w", err)
	}
	// A new session reports the postmaster's last load time, and the
	// postmaster loads pg_hba.conf in the same reload as the other files
	// before it forks another backend: once a new session sees a later
	// time, new connections are checked against the new rules.
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		after, err := s.confLoadTime(ctx)
		if err != nil {
			return fmt.Errorf("pgtest: SetHBA: waiting for the reload: %w", err)
		}
		if after.After(before) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: SetHBA: the server did not reload its configuration: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// confLoadTime returns pg_conf_load_time() seen by a new session, that is
// the postmaster's.
func (s *Server) confLoadTime(ctx context.Context) (time.Time, error) {
	conn, err := pgx.Connect(ctx, s.AdminConnString())
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var t time.Time
	err = conn.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&t)
	return t, err
}

// checkHBA asks the server to parse pg_hba.conf as it is on disk and
// reports the lines it rejects.
func (s *Server) checkHBA(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number")
	if err != nil {
		return err
	}
	var problems []string
	var line *int32
	var msg string
	_, err = pgx.ForEachRow(rows, []any{&line, &msg}, func() error {
		n := int32(0)
		if line != nil {
			n = *line
		}
		problems = append(problems, fmt.Sprintf("line %d: %s", n, msg))
		return nil
	})
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return fmt.Errorf("pg_hba.conf rejected: %s", strings.Join(problems, "; "))
	}
	return nil
}
