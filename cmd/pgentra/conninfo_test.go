package main

import (
	"maps"
	"strings"
	"testing"
)

func TestParseConnInfo(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want map[string]string
	}{
		{"host=h dbname=app", map[string]string{"host": "h", "dbname": "app"}},
		{"  host = h\tsslmode=prefer  ", map[string]string{"host": "h", "sslmode": "prefer"}},
		{"host='my srv' password='it''s' user=a\\ b", nil}, // '' is not an escape: "s" follows the quote
		{`host='my srv' password='it\'s' user=a\ b`, map[string]string{"host": "my srv", "password": "it's", "user": "a b"}},
		{"application_name='nightly user=etl sslmode=disable' host=h", map[string]string{"application_name": "nightly user=etl sslmode=disable", "host": "h"}},
		{"sslmode=disable sslmode=require", map[string]string{"sslmode": "require"}}, // the last one wins
		{"sslmode=''", map[string]string{"sslmode": ""}},
		{"requiressl=1", map[string]string{"sslmode": "require"}},
		{"requiressl=0", map[string]string{"sslmode": "prefer"}},
		{"a='x'b=y", map[string]string{"a": "x", "b": "y"}},
		{"host", nil},
		{"host='x", nil},
		{"postgresql://", map[string]string{}},
		{"postgres://alice:p%40ss@srv:5433/app?sslmode=prefer&application_name=a%20b",
			map[string]string{"user": "alice", "password": "p@ss", "host": "srv", "port": "5433", "dbname": "app", "sslmode": "prefer", "application_name": "a b"}},
		{"postgresql://[::1]:5432,other,%2Ftmp%2Fsock/app", map[string]string{"host": "::1,other,/tmp/sock", "port": "5432,,", "dbname": "app"}},
		{"postgresql://a,/b", map[string]string{"host": "a,", "port": ",", "dbname": "b"}}, // "/" ends the hosts (and libpq keeps the empty ports)
		{"postgresql://srv?sslmode=disable", map[string]string{"host": "srv", "sslmode": "disable"}},
		{"postgresql:///app?host=%2Fvar%2Frun%2Fpostgresql", map[string]string{"dbname": "app", "host": "/var/run/postgresql"}},
		{"postgresql://srv/?ssl=true", map[string]string{"host": "srv", "sslmode": "require"}},
		{"postgresql://srv/db?sslmode=require&sslmode=allow", map[string]string{"host": "srv", "dbname": "db", "sslmode": "allow"}},
		{"postgresql://srv/db?sslmode", nil},
		{"postgresql://srv/db?a=b=c", nil},
		{"postgresql://srv/db?a=%zz", nil},
		{"postgresql://[::1/db", nil},
	} {
		c, err := parseConnInfo(tt.in)
		if tt.want == nil {
			if err == nil {
				t.Errorf("parseConnInfo(%q) = %v; want an error", tt.in, c.vals)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseConnInfo(%q): %v", tt.in, err)
			continue
		}
		if got := c.vals; !maps.Equal(got, tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
			t.Errorf("parseConnInfo(%q) = %v, want %v", tt.in, got, tt.want)
		}
		// What String writes parses back to the same settings.
		again, err := parseConnInfo(c.String())
		if err != nil || !maps.Equal(again.vals, c.vals) && len(c.vals) > 0 {
			t.Errorf("parseConnInfo(%q).String() = %q parses to %v, %v", tt.in, c.String(), again, err)
		}
	}
}

func TestParseConnInfoErrorsHideValues(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"password='s3cret", "postgresql://u:s3cret%zz@h/db", "postgresql://h/db?password=s3cret%zz", "host=h password=s3cret s3cret"} {
		_, err := parseConnInfo(in)
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("parseConnInfo(%q): %v; want an error without the password", in, err)
		}
	}
}

func FuzzParseConnInfo(f *testing.F) {
	for _, s := range []string{"host=h dbname='a b'", `x=\'`, "postgresql://u:p@[::1]:5/d?sslmode=prefer", "postgres://h,/s,x:1/?a=%41"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseConnInfo(s)
		if err != nil {
			return
		}
		again, err := parseConnInfo(c.String())
		if err != nil {
			t.Fatalf("%q: String() = %q does not parse: %v", s, c.String(), err)
		}
		if !maps.Equal(again.vals, c.vals) {
			t.Fatalf("%q: %v, then %v", s, c.vals, again.vals)
		}
	})
}
