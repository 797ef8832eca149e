package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSecureSSLMode checks the rule applied to psql's sslmode, however it
// is given: disable refused over TCP, allow and prefer raised to require,
// none made verify-full, the others kept; and that the result lands where
// libpq reads it first.
func TestSecureSSLMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	serviceFile := filepath.Join(dir, "pg_service.conf")
	if err := os.WriteFile(serviceFile, []byte("[weak]\nhost=srv\nsslmode=prefer\n[plain]\nhost=srv\n[off]\nhost=srv\nsslmode=disable\n[strict]\nsslmode=verify-ca\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		args     []string
		env      map[string]string
		wantArgs []string // psql's arguments after; nil: unchanged
		wantEnv  string   // PGSSLMODE set for psql (for the first connection, or for later ones), "" for none
		refused  bool
		notice   bool
	}{
		{name: "nothing named", args: []string{"-h", "srv"}, wantEnv: "verify-full"},
		{name: "PGSSLMODE=prefer", args: []string{"-h", "srv"}, env: map[string]string{"PGSSLMODE": "prefer"}, wantEnv: "require", notice: true},
		{name: "PGSSLMODE=allow", env: map[string]string{"PGSSLMODE": "allow", "PGHOST": "srv"}, wantEnv: "require", notice: true},
		{name: "PGSSLMODE=disable", env: map[string]string{"PGSSLMODE": "disable", "PGHOST": "srv"}, refused: true},
		{name: "PGSSLMODE=require kept", env: map[string]string{"PGSSLMODE": "require"}},
		{name: "PGSSLMODE=verify-ca kept", env: map[string]string{"PGSSLMODE": "verify-ca"}},
		{name: "PGREQUIRESSL=1 is require", env: map[string]string{"PGREQUIRESSL": "1"}},
		{name: "PGSSLMODE=bogus", env: map[string]string{"PGSSLMODE": "bogus"}, refused: true},
		{name: "key/value disable", args: []string{"host=srv sslmode=disable"}, refused: true},
		{name: "key/value disable, hostaddr", args: []string{"host=/tmp hostaddr=127.0.0.1 sslmode=disable"}, refused: true},
		{name: "key/value disable, a TCP host among sockets", args: []string{"host=/tmp,srv sslmode=disable"}, refused: true},
		{name: "key/value disable over a unix socket", args: []string{"host=/var/run/postgresql sslmode=disable"}, wantEnv: "verify-full"},
		{name: "disable over the default unix socket", env: map[string]string{"PGSSLMODE": "disable"}},
		{name: "key/value prefer", args: []string{"-X", "host=srv sslmode=prefer", "bob"},
			wantArgs: []string{"-X", "host='srv' sslmode='require'", "bob"}, wantEnv: "verify-full", notice: true},
		{name: "key/value over PGSSLMODE", args: []string{"host=srv sslmode=verify-full"}, env: map[string]string{"PGSSLMODE": "disable"}, wantEnv: "require"},
		{name: "key/value, quoted sslmode is data", args: []string{"host=srv application_name='x sslmode=verify-full'"}, wantEnv: "verify-full"},
		{name: "URL prefer", args: []string{"-d", "postgresql://srv/app?sslmode=prefer"}, wantArgs: []string{"-d", "host='srv' dbname='app' sslmode='require'"}, wantEnv: "verify-full", notice: true},
		{name: "URL allow in --dbname=", args: []string{"--dbname=postgres://srv/app?sslmode=allow"}, wantArgs: []string{"--dbname=host='srv' dbname='app' sslmode='require'"}, wantEnv: "verify-full", notice: true},
		{name: "URL disable", args: []string{"postgres://u@srv:5432/app?sslmode=disable"}, refused: true},
		{name: "URL ssl=true is require", args: []string{"postgres://srv/app?ssl=true"}, wantEnv: "verify-full"},
		{name: "URL without sslmode", args: []string{"postgres://srv/app"}, wantEnv: "verify-full"},
		{name: "URL without sslmode, PGSSLMODE=prefer", args: []string{"postgres://srv/app"}, env: map[string]string{"PGSSLMODE": "prefer"}, wantEnv: "require", notice: true},
		{name: "service with prefer, named in the argument", args: []string{"service=weak"}, env: map[string]string{"PGSERVICEFILE": serviceFile},
			wantArgs: []string{"service='weak' sslmode='require'"}, wantEnv: "verify-full", notice: true},
		{name: "service with prefer, from PGSERVICE, beats PGSSLMODE", args: []string{"-Xd", "app"}, env: map[string]string{"PGSERVICE": "weak", "PGSERVICEFILE": serviceFile, "PGSSLMODE": "verify-full"},
			wantArgs: []string{"-Xd", "dbname='app' sslmode='require'"}, notice: true},
		{name: "service with disable", env: map[string]string{"PGSERVICE": "off", "PGSERVICEFILE": serviceFile}, refused: true},
		{name: "service without sslmode: pinned in an added argument", args: []string{"-c", "select 1"}, env: map[string]string{"PGSERVICE": "plain", "PGSERVICEFILE": serviceFile},
			wantArgs: []string{"--dbname=sslmode='verify-full'", "-c", "select 1"}, wantEnv: "verify-full"},
		{name: "service with verify-ca kept, pinned", args: []string{"-l"}, env: map[string]string{"PGSERVICE": "strict", "PGSERVICEFILE": serviceFile},
			wantArgs: []string{"--dbname=dbname='postgres' sslmode='verify-ca'", "-l"}, wantEnv: "verify-full"},
		{name: "service not found: PGSSLMODE's, pinned", args: []string{"app"}, env: map[string]string{"PGSERVICE": "nowhere", "PGSERVICEFILE": serviceFile, "PGSSLMODE": "require", "PGSYSCONFDIR": dir + "/none"},
			wantArgs: []string{"dbname='app' sslmode='require'"}},
		{name: "explicit sslmode beats the service", args: []string{"service=off sslmode=verify-full"}, env: map[string]string{"PGSERVICEFILE": serviceFile}, wantEnv: "verify-full"},
		{name: "empty sslmode", args: []string{"host=srv sslmode="}, refused: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			pa := scanPsqlArgs(tt.args, false)
			pc, err := newPsqlConn(pa, getenv)
			if err != nil {
				t.Fatal(err)
			}
			set := map[string]string{}
			notice, err := pc.secureSSLMode(set)
			if tt.refused {
				if !errors.Is(err, errUsage) {
					t.Fatalf("err = %v; want a usage error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.wantArgs
			if want == nil {
				want = tt.args
			}
			if !slices.Equal(pc.args.args, want) && len(want)+len(pc.args.args) > 0 {
				t.Errorf("psql's arguments %q; want %q", pc.args.args, want)
			}
			if set["PGSSLMODE"] != tt.wantEnv || len(set) > 1 {
				t.Errorf("variables set %q; want PGSSLMODE=%q", set, tt.wantEnv)
			}
			if (notice != "") != tt.notice {
				t.Errorf("notice %q; want one: %v", notice, tt.notice)
			}
			// The original arguments are not modified.
			if tt.wantArgs != nil && slices.Equal(pa.args, pc.args.args) {
				t.Errorf("the caller's arguments were changed")
			}
		})
	}
}

func TestSecureSSLModeMessages(t *testing.T) {
	t.Parallel()
	pc, err := newPsqlConn(scanPsqlArgs([]string{"host=srv password=s3cret sslmode=disable"}, false), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	_, err = pc.secureSSLMode(map[string]string{})
	if msg := cliMessage("psql", err); !strings.Contains(msg, "sslmode=disable (from psql's connection string argument)") ||
		!strings.Contains(msg, "verify-full") || strings.Contains(msg, "s3cret") {
		t.Errorf("message %q", msg)
	}
}
