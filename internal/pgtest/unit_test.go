package pgtest

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// fakeBin creates dir holding executables with the given names.
func fakeBin(t *testing.T, dir string, names ...string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindBinDir(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	full := fakeBin(t, filepath.Join(tmp, "full"), "initdb", "postgres")
	client := fakeBin(t, filepath.Join(tmp, "client"), "psql", "pg_config")
	empty := fakeBin(t, filepath.Join(tmp, "empty"))
	noexec := filepath.Join(tmp, "noexec")
	fakeBin(t, noexec, "postgres")
	if err := os.WriteFile(filepath.Join(noexec, "initdb"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Versions: 16 lacks postgres, so 10 is the best complete one; 9.6
	// sorts below 10 numerically though above it as a string.
	fakeBin(t, filepath.Join(tmp, "pg", "9.6", "bin"), "initdb", "postgres")
	v10 := fakeBin(t, filepath.Join(tmp, "pg", "10", "bin"), "initdb", "postgres")
	fakeBin(t, filepath.Join(tmp, "pg", "16", "bin"), "initdb")
	glob := filepath.Join(tmp, "pg", "*", "bin")
	// PATH holds a symlink to the real initdb.
	linkDir := filepath.Join(tmp, "usr-local-bin")
	if err := os.Mkdir(linkDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(full, "initdb"), filepath.Join(linkDir, "initdb")); err != nil {
		t.Fatal(err)
	}

	env := func(pgBin string) func(string) string {
		return func(k string) string {
			if k == "PG_BIN" {
				return pgBin
			}
			return ""
		}
	}
	pgConfig := func(dir string) func() (string, error) { return func() (string, error) { return dir, nil } }
	noPgConfig := func() (string, error) { return "", errors.New("not found") }
	look := func(p string) func(string) (string, error) {
		return func(string) (string, error) { return p, nil }
	}
	notOnPath := func(string) (string, error) { return "", errors.New("not found") }

	tests := []struct {
		name    string
		search  binSearch
		want    string
		wantErr bool
	}{
		{"PG_BIN", binSearch{getenv: env(full), pgConfig: pgConfig(v10), globs: []string{glob}, lookPath: notOnPath}, full, false},
		{"PG_BIN without binaries is not ignored", binSearch{getenv: env(empty), pgConfig: pgConfig(full), globs: []string{glob}, lookPath: notOnPath}, "", true},
		{"PG_BIN with a non-executable initdb", binSearch{getenv: env(noexec), lookPath: notOnPath}, "", true},
		{"pg_config", binSearch{getenv: env(""), pgConfig: pgConfig(full), globs: []string{glob}, lookPath: notOnPath}, full, false},
		{"pg_config reporting the client dir", binSearch{getenv: env(""), pgConfig: pgConfig(client), globs: []string{glob}, lookPath: notOnPath}, v10, false},
		{"glob, highest complete version", binSearch{getenv: env(""), pgConfig: noPgConfig, globs: []string{glob}, lookPath: notOnPath}, v10, false},
		{"PATH symlink resolved", binSearch{getenv: env(""), pgConfig: noPgConfig, lookPath: look(filepath.Join(linkDir, "initdb"))}, full, false},
		{"nothing", binSearch{getenv: env(""), pgConfig: noPgConfig, globs: []string{filepath.Join(tmp, "none", "*")}, lookPath: notOnPath}, "", true},
	}
	for _, tt := range tests {
		got, err := tt.search.find()
		if tt.wantErr {
			if !errors.Is(err, ErrNoBinaries) {
				t.Errorf("%s: find() = %q, %v; want ErrNoBinaries", tt.name, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: find() = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

func TestVersionOf(t *testing.T) {
	t.Parallel()
	for path, want := range map[string][]int{
		"/usr/lib/postgresql/15/bin":  {15},
		"/usr/lib/postgresql/9.6/bin": {9, 6},
		"/usr/pgsql-16/bin":           {16},
		"/usr/local/pgsql/bin":        nil,
	} {
		if got := versionOf(path); !slices.Equal(got, want) {
			t.Errorf("versionOf(%q) = %v, want %v", path, got, want)
		}
	}
}

// Not parallel: clears PG* environment variables pgconn would read.
func TestConnString(t *testing.T) {
	for _, k := range []string{"PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT", "PGCONNECT_TIMEOUT", "PGAPPNAME", "PGUSER", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE"} {
		t.Setenv(k, "")
	}
	files, err := newTLSFiles()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "a b'c")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, files.caCert, 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Server{Host: "127.0.0.1", Port: 54321, CAFile: caFile, SocketDir: dir}

	cfg, err := pgconn.ParseConfig(s.ConnString("alice@contoso.com", trickyPassword, "application_name=my app", "connect_timeout=3", "password="))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "127.0.0.1" || cfg.Port != 54321 || cfg.Database != "postgres" || cfg.User != "alice@contoso.com" {
		t.Errorf("host/port/db/user = %s/%d/%s/%s", cfg.Host, cfg.Port, cfg.Database, cfg.User)
	}
	if cfg.Password != "" {
		t.Errorf("password = %q, want the later empty password= to win", cfg.Password)
	}
	if cfg.RuntimeParams["application_name"] != "my app" || cfg.ConnectTimeout != 3*time.Second {
		t.Errorf("application_name = %q, connect_timeout = %v", cfg.RuntimeParams["application_name"], cfg.ConnectTimeout)
	}
	if c := cfg.TLSConfig; c == nil || c.InsecureSkipVerify || c.RootCAs == nil || c.ServerName != "127.0.0.1" {
		t.Error("sslmode=verify-full with the CA file did not give a verifying TLS config")
	}

	cfg, err = pgconn.ParseConfig(s.ConnString("bob", trickyPassword))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != trickyPassword || cfg.ConnectTimeout != 10*time.Second {
		t.Errorf("password = %q, connect_timeout = %v; want %q, 10s", cfg.Password, cfg.ConnectTimeout, trickyPassword)
	}

	cfg, err = pgconn.ParseConfig(s.AdminConnString())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != dir || cfg.User != "postgres" || cfg.TLSConfig != nil {
		t.Errorf("admin: host=%q user=%q tls=%v", cfg.Host, cfg.User, cfg.TLSConfig != nil)
	}
}

func TestRemoveStale(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	mk := func(name string) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	dead := mk(rootPrefix + "dead")
	if err := os.WriteFile(filepath.Join(dead, lockName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	live := mk(rootPrefix + "live")
	lock, err := lockRoot(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	unlocked := mk(rootPrefix + "nolock")
	other := mk("something-else")
	if err := os.WriteFile(filepath.Join(other, lockName), nil, 0o644); err != nil {
		t.Fatal(err)
	}

	removeStaleIn(t.Logf, base)

	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if exists(dead) {
		t.Error("root with an unheld lock was not removed")
	}
	for _, d := range []string{live, unlocked, other} {
		if !exists(d) {
			t.Errorf("%s was removed", d)
		}
	}
}
