package main

import (
	"debug/buildinfo"
	"runtime/debug"
	"strings"
	"testing"
)

// TestVersion: pgentra --version and pgentra version print the module
// version, VCS revision and Go version the binary was built with.
func TestVersion(t *testing.T) {
	bi, err := buildinfo.ReadFile(pgentraBin)
	if err != nil {
		t.Fatal(err)
	}
	var rev string
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			rev = s.Value
		}
	}
	for _, args := range [][]string{{"--version"}, {"version"}, {"-version"}} {
		r := pgentra(t, childEnv(), args...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("pgentra %q: %+v", args, r)
		}
		for _, want := range []string{"pgentra " + bi.Main.Version + "\n", "module: github.com/pgentra/entraauth\n", "go: " + bi.GoVersion + " "} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("pgentra %q printed %q; want %q in it", args, r.stdout, want)
			}
		}
		if args[0] == "version" {
			t.Logf("pgentra version:\n%s", r.stdout)
		}
		if rev != "" && !strings.Contains(r.stdout, "revision: "+rev) {
			t.Errorf("pgentra %q printed %q; want the revision %s", args, r.stdout, rev)
		}
	}
	if r := pgentra(t, childEnv(), "version", "extra"); r.code != 2 {
		t.Errorf("pgentra version extra: %+v; want exit status 2", r)
	}
}

func TestVersionText(t *testing.T) {
	t.Parallel()
	bi := &debug.BuildInfo{
		GoVersion: "go1.99.1",
		Main:      debug.Module{Path: "github.com/pgentra/entraauth", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "GOOS", Value: "plan9"}, {Key: "GOARCH", Value: "arm"},
			{Key: "vcs.revision", Value: "0123abc"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"}},
	}
	want := "pgentra v1.2.3\nmodule: github.com/pgentra/entraauth\nrevision: 0123abc (modified) 2026-01-02T03:04:05Z\ngo: go1.99.1 plan9/arm\n"
	if got := versionText(bi); got != want {
		t.Errorf("versionText = %q, want %q", got, want)
	}
	bi.Settings = nil
	if got := versionText(bi); !strings.Contains(got, "revision: (unknown)\n") {
		t.Errorf("without VCS information: %q", got)
	}
	if got := versionText(nil); !strings.Contains(got, "no build information") {
		t.Errorf("without build information: %q", got)
	}
}
