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
	for _, tt := range []struct {
		args []string
		want psqlInfo
	}{
		{nil, psqlInfo{}},
		{[]string{"-c", "select 1", "-X"}, psqlInfo{}},
		{[]string{"-h", "srv.postgres.database.chinacloudapi.cn", "-d", "app"}, psqlInfo{host: "srv.postgres.database.chinacloudapi.cn"}},
		{[]string{"-hsrv", "-Ualice"}, psqlInfo{host: "srv", user: true}},
		{[]string{"-XAtc", "select 1", "--host=srv", "--user", "bob"}, psqlInfo{host: "srv", user: true}}, // --user abbreviates --username
		{[]string{"-c", "-U", "app"}, psqlInfo{}},                                                         // -U is -c's value; app is the database
		{[]string{"app", "alice"}, psqlInfo{user: true}},                                                  // the second positional argument is the user
		{[]string{"-v", "x=1", "app"}, psqlInfo{}},                                                        // -v's value is no connection string
		{[]string{"-h", "a", "host=b user=c"}, psqlInfo{host: "b", user: true}},                           // the connection string wins over -h
		{[]string{"--dbname", "host='my srv' port=5432"}, psqlInfo{host: "my srv"}},                       // quoted
		{[]string{"postgresql://alice@srv:5432/app"}, psqlInfo{host: "srv", user: true}},
		{[]string{"postgres://[::1]:5432,other/app?user=x"}, psqlInfo{host: "::1", user: true}},
		{[]string{"--", "-app-", "bob"}, psqlInfo{user: true}},
	} {
		if got := scanPsqlArgs(tt.args); got != tt.want {
			t.Errorf("scanPsqlArgs(%q) = %+v, want %+v", tt.args, got, tt.want)
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
