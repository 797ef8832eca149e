package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// runVersion prints pgentra's version: "pgentra version" and
// "pgentra --version".
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, "Usage: pgentra version (or pgentra --version)\n\nPrints pgentra's module version, the VCS revision it was built from, and the Go version.\n")
		return exitOK
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "pgentra version: unexpected argument %q\n", args[0])
		return exitUsage
	}
	bi, _ := debug.ReadBuildInfo() // nil without build information
	fmt.Fprint(stdout, versionText(bi))
	return exitOK
}

// versionText describes a build: the module and its version, the VCS
// revision it was built from (and whether the tree was modified), and the
// Go version, one per line. bi is nil when the binary has no build
// information.
func versionText(bi *debug.BuildInfo) string {
	if bi == nil {
		return fmt.Sprintf("pgentra (no build information)\ngo: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	}
	version := bi.Main.Version
	if version == "" {
		version = "(unknown)"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pgentra %s\n", version)
	fmt.Fprintf(&b, "module: %s\n", bi.Main.Path)
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += " (modified)"
		}
		if t := settings["vcs.time"]; t != "" {
			rev += " " + t
		}
		fmt.Fprintf(&b, "revision: %s\n", rev)
	} else {
		b.WriteString("revision: (unknown)\n")
	}
	goos, goarch := settings["GOOS"], settings["GOARCH"]
	if goos == "" {
		goos, goarch = runtime.GOOS, runtime.GOARCH
	}
	fmt.Fprintf(&b, "go: %s %s/%s\n", bi.GoVersion, goos, goarch)
	return b.String()
}
