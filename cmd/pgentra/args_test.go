package main

import (
	"reflect"
	"slices"
	"testing"
)

func TestSplitPsqlArgs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args, ours, rest []string
	}{
		{[]string{"-c", "select 1"}, []string{}, []string{"-c", "select 1"}},
		{[]string{"--credential", "cli", "-h", "srv", "-c", "select 1"}, []string{"--credential", "cli"}, []string{"-h", "srv", "-c", "select 1"}},
		{[]string{"--credential=cli", "--host", "srv", "--timeout", "5s", "-d", "app"}, []string{"--credential=cli", "--host", "srv", "--timeout", "5s"}, []string{"-d", "app"}},
		{[]string{"-client-id", "x", "--", "--host", "other"}, []string{"-client-id", "x"}, []string{"--host", "other"}},
		{[]string{"--help"}, []string{"--help"}, []string{}},
		{[]string{"--help=commands"}, []string{}, []string{"--help=commands"}},
		{[]string{"app", "--credential", "cli"}, []string{}, []string{"app", "--credential", "cli"}},
		{[]string{"--credential"}, []string{"--credential"}, []string{}},
	} {
		ours, rest := splitPsqlArgs(tt.args)
		if !slices.Equal(ours, tt.ours) || !slices.Equal(rest, tt.rest) {
			t.Errorf("splitPsqlArgs(%q) = %q, %q; want %q, %q", tt.args, ours, rest, tt.ours, tt.rest)
		}
	}
}

func TestScanPsqlArgs(t *testing.T) {
	t.Parallel()
	type want struct {
		host, port, user, db string
		dbArg, dbOff         int
		list, infoOnly       bool
	}
	for _, tt := range []struct {
		args  []string
		posix bool
		want  want
	}{
		{nil, false, want{dbArg: -1}},
		{[]string{"-c", "select 1", "-X"}, false, want{dbArg: -1}},
		{[]string{"-h", "srv.postgres.database.chinacloudapi.cn", "-d", "app"}, false, want{host: "srv.postgres.database.chinacloudapi.cn", db: "app", dbArg: 3}},
		{[]string{"-hsrv", "-Ualice", "-p5433"}, false, want{host: "srv", user: "alice", port: "5433", dbArg: -1}},
		{[]string{"-XAtc", "select 1", "--host=srv", "--user", "bob"}, false, want{host: "srv", user: "bob", dbArg: -1}}, // --user abbreviates --username
		{[]string{"-c", "-U", "app"}, false, want{db: "app", dbArg: 2}},                                                  // -U is -c's value; app is the database
		{[]string{"app", "alice"}, false, want{db: "app", user: "alice", dbArg: 0}},                                      // the second positional argument is the user
		{[]string{"-d", "app", "alice"}, false, want{db: "app", user: "alice", dbArg: 1}},                                // with -d, the first one is
		{[]string{"-U", "bob", "app", "alice"}, false, want{db: "app", user: "bob", dbArg: 2}},                           // -U wins
		{[]string{"-v", "x=1", "app"}, false, want{db: "app", dbArg: 2}},                                                 // -v's value is no connection string
		{[]string{"-d", "a", "--dbname=b", "-Xdc"}, false, want{db: "c", dbArg: 3, dbOff: 3}},                            // the last -d wins
		{[]string{"--db=x y", "z"}, false, want{db: "x y", dbArg: 0, dbOff: 5, user: "z"}},
		{[]string{"--", "-app-", "bob"}, false, want{db: "-app-", user: "bob", dbArg: 1}},
		{[]string{"-l"}, false, want{dbArg: -1, list: true}},
		{[]string{"-XV"}, false, want{dbArg: -1, infoOnly: true}},
		{[]string{"-h", "x", "--help=variables"}, false, want{host: "x", dbArg: -1, infoOnly: true}},
		{[]string{"--vers"}, false, want{dbArg: -1, infoOnly: true}},
		{[]string{"-?"}, false, want{dbArg: -1, infoOnly: true}},
		{[]string{"app", "-U", "bob"}, false, want{db: "app", user: "bob", dbArg: 0}}, // getopt permutes
		{[]string{"app", "-U", "bob"}, true, want{db: "app", user: "-U", dbArg: 0}},   // POSIXLY_CORRECT: it does not
	} {
		pa := scanPsqlArgs(tt.args, tt.posix)
		got := want{pa.host, pa.port, pa.user, pa.db, pa.dbArg, pa.dbOff, pa.list, pa.infoOnly}
		if got != tt.want {
			t.Errorf("scanPsqlArgs(%q, %v) = %+v, want %+v", tt.args, tt.posix, got, tt.want)
		}
	}
}

func TestWithEnv(t *testing.T) {
	t.Parallel()
	got := withEnv([]string{"A=1", "PGUSER=old", "B=2=3"}, map[string]string{"PGUSER": "new", "PGPASSWORD": "x"})
	slices.Sort(got)
	if want := []string{"A=1", "B=2=3", "PGPASSWORD=x", "PGUSER=new"}; !reflect.DeepEqual(got, want) {
		t.Errorf("withEnv = %q, want %q", got, want)
	}
}
