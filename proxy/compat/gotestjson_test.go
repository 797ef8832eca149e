package compat

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// pgxModule is the import path prefix of pgx's packages.
const pgxModule = "github.com/jackc/pgx/v5"

// testID names one test of pgx's suite: its package, shortened to the path
// inside the module ("." for the root package), and its name, with
// subtests after slashes as go test prints them.
type testID struct {
	Pkg  string
	Name string
}

func (id testID) String() string { return id.Pkg + " " + id.Name }

func shortPkg(pkg string) string {
	if pkg == pgxModule {
		return "."
	}
	return strings.TrimPrefix(pkg, pgxModule+"/")
}

// tempNames matches the temporary directories (t.TempDir) some subtests
// put in their names, which differ from run to run.
var tempNames = regexp.MustCompile(`/[^/]*?Test[A-Za-z0-9_]*?[0-9]{4,}/[0-9]{3}`)

// suiteRun is what one `go test -json` run reported.
type suiteRun struct {
	tests    map[testID]string   // "pass", "fail" or "skip"
	packages map[string]string   // short package -> "pass", "fail" or "skip"
	output   map[testID][]string // the output lines of tests that failed, and of packages (Name "")
}

// testEvent is a line of `go test -json` (cmd/test2json).
type testEvent struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// parseTestJSON reads `go test -json` output. Lines that are not JSON
// (a build failure printed by go itself) are kept as output of the
// package "?".
func parseTestJSON(r io.Reader) (*suiteRun, error) {
	run := &suiteRun{tests: map[testID]string{}, packages: map[string]string{}, output: map[testID][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev testEvent
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			run.output[testID{Pkg: "?"}] = append(run.output[testID{Pkg: "?"}], string(line))
			continue
		}
		id := testID{Pkg: shortPkg(ev.Package), Name: tempNames.ReplaceAllString(ev.Test, "$${TMP}")}
		switch ev.Action {
		case "output":
			run.output[id] = append(run.output[id], strings.TrimRight(ev.Output, "\n"))
		case "pass", "fail", "skip":
			if ev.Test == "" {
				run.packages[id.Pkg] = ev.Action
			} else {
				run.tests[id] = ev.Action
			}
		}
	}
	for id, lines := range run.output {
		if id.Name != "" && run.tests[id] != "fail" {
			delete(run.output, id) // keep only what a report needs
		} else if len(lines) > 60 {
			run.output[id] = lines[len(lines)-60:]
		}
	}
	return run, sc.Err()
}

// failures returns the tests that failed in their own right: those that
// failed with no failing subtest (a parent fails when a subtest does).
func (r *suiteRun) failures() []testID {
	var out []testID
	for id, action := range r.tests {
		if action == "fail" && !r.hasFailingSubtest(id) {
			out = append(out, id)
		}
	}
	sortIDs(out)
	return out
}

func (r *suiteRun) hasFailingSubtest(id testID) bool {
	for other, action := range r.tests {
		if action == "fail" && other.Pkg == id.Pkg && strings.HasPrefix(other.Name, id.Name+"/") {
			return true
		}
	}
	return false
}

// count returns how many tests ended with action.
func (r *suiteRun) count(action string) int {
	n := 0
	for _, a := range r.tests {
		if a == action {
			n++
		}
	}
	return n
}

// difference is a test that passed directly and did not pass through the
// proxy.
type difference struct {
	ID      testID
	Direct  string // "pass"
	Proxied string // "fail", "skip", or "missing"
}

func (d difference) String() string {
	return fmt.Sprintf("%s: %s directly, %s through the proxy", d.ID, d.Direct, d.Proxied)
}

// proxyOnly compares two runs: every test that passed directly and failed,
// skipped or did not run through the proxy, every test that failed only
// through the proxy and did not run directly at all, and every package
// that failed through the proxy with no failing test to show for it
// (a panic, a timeout) while it passed directly (its Name is empty).
func proxyOnly(direct, proxied *suiteRun) []difference {
	var out []difference
	for id, action := range direct.tests {
		if action != "pass" {
			continue
		}
		got, ok := proxied.tests[id]
		if !ok {
			got = "missing"
		}
		if got != "pass" && (got != "fail" || !proxied.hasFailingSubtest(id)) {
			out = append(out, difference{ID: id, Direct: action, Proxied: got})
		}
	}
	for _, id := range proxied.failures() {
		if _, ok := direct.tests[id]; !ok {
			out = append(out, difference{ID: id, Direct: "missing", Proxied: "fail"})
		}
	}
	for pkg, action := range proxied.packages {
		if action == "fail" && direct.packages[pkg] == "pass" && !slices.ContainsFunc(out, func(d difference) bool { return d.ID.Pkg == pkg }) {
			out = append(out, difference{ID: testID{Pkg: pkg}, Direct: "pass", Proxied: "fail"})
		}
	}
	sort.Slice(out, func(i, j int) bool { return less(out[i].ID, out[j].ID) })
	return out
}

func sortIDs(ids []testID) {
	sort.Slice(ids, func(i, j int) bool { return less(ids[i], ids[j]) })
}

func less(a, b testID) bool {
	if a.Pkg != b.Pkg {
		return a.Pkg < b.Pkg
	}
	return a.Name < b.Name
}
