package compat

import (
	"slices"
	"strings"
	"testing"
)

// events writes go test -json lines for package pkg (short) and
// "test action" pairs.
func events(pkg string, pairs ...string) string {
	var b strings.Builder
	full := pgxModule
	if pkg != "." {
		full += "/" + pkg
	}
	for _, p := range pairs {
		test, action, _ := strings.Cut(p, " ")
		if test == "-" {
			test = ""
		}
		b.WriteString(`{"Action":"output","Package":"` + full + `","Test":"` + test + `","Output":"out ` + test + `\n"}` + "\n")
		b.WriteString(`{"Action":"` + action + `","Package":"` + full + `","Test":"` + test + `"}` + "\n")
	}
	return b.String()
}

func mustParse(t *testing.T, s string) *suiteRun {
	t.Helper()
	r, err := parseTestJSON(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// proxyOnly reports a test that passed directly and failed, skipped or
// went missing through the proxy, by its failing leaf rather than its
// parent, a test that failed without running directly, and a package that
// failed with no test to show for it; it reports nothing that failed
// both ways.
func TestProxyOnly(t *testing.T) {
	direct := mustParse(t, events("pgconn",
		"TestA/x pass", "TestA/y pass", "TestA pass", "TestB pass", "TestC pass", "TestD fail", "TestE skip",
		"TestTmp//tmp/TestTmp1234567/001/svc pass", "- fail")+
		events("stdlib", "TestF pass", "- pass"))
	proxied := mustParse(t, events("pgconn",
		"TestA/x pass", "TestA/y fail", "TestA fail", "TestB skip", "TestD fail", "TestE skip", "TestG fail",
		"TestTmp//tmp/TestTmp7654321/001/svc pass", "- fail")+
		events("stdlib", "- fail"))
	var got []string
	for _, d := range proxyOnly(direct, proxied) {
		got = append(got, d.String())
	}
	want := []string{
		"pgconn TestA/y: pass directly, fail through the proxy",
		"pgconn TestB: pass directly, skip through the proxy",
		"pgconn TestC: pass directly, missing through the proxy",
		"pgconn TestG: missing directly, fail through the proxy",
		"stdlib TestF: pass directly, missing through the proxy",
	}
	if !slices.Equal(got, want) {
		t.Errorf("proxyOnly:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if f := proxied.failures(); len(f) != 3 || f[0].Name != "TestA/y" {
		t.Errorf("failures = %v, want TestA/y, TestD and TestG (not the parent TestA)", f)
	}
	if out := proxied.output[testID{Pkg: "pgconn", Name: "TestA/y"}]; !slices.Equal(out, []string{"out TestA/y"}) {
		t.Errorf("output of a failed test = %q", out)
	}
}

// A package that failed through the proxy with no failing test (a panic
// or timeout) is reported by itself.
func TestProxyOnlyPackage(t *testing.T) {
	direct := mustParse(t, events("pgxpool", "TestP pass", "- pass"))
	proxied := mustParse(t, events("pgxpool", "TestP pass", "- fail"))
	got := proxyOnly(direct, proxied)
	if len(got) != 1 || got[0].ID != (testID{Pkg: "pgxpool"}) {
		t.Errorf("proxyOnly = %v, want the package pgxpool", got)
	}
}

func TestException(t *testing.T) {
	if exception(testID{Pkg: "pgconn", Name: "TestConnectInvalidUser"}) == "" {
		t.Error("TestConnectInvalidUser is not an exception")
	}
	if exception(testID{Pkg: ".", Name: "TestConnectInvalidUser"}) != "" || exception(testID{Pkg: "pgconn", Name: "TestConnectInvalidUserX"}) != "" {
		t.Error("an exception covers another package's test or a longer name")
	}
}
