package compat

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgentra/entraauth/internal/pgtest"
)

// exitGuard bounds how long a client may take to exit once it has sent a
// query on a session the server ended. Directly, they exit at once; it is
// a hang guard, not a timing assertion.
const exitGuard = 10 * time.Second

// realClient is a PostgreSQL client program that runs one session,
// reading a query per line of stdin.
type realClient struct {
	name string
	// find returns the command for a session on c, or an error when the
	// client is not installed.
	find func(t *testing.T, f *fixture, c conn) (*exec.Cmd, error)
	// endedLine, if set, is how the client reports by itself that its
	// idle connection ended (node-postgres reads while idle): the test
	// waits for it before the next query, as a user of the client would
	// see it.
	endedLine string
}

var realClients = []realClient{
	{"psql", psqlSession, ""},
	{"psycopg2", psycopg2Session, ""},
	{"node-postgres", nodeSession, "ASYNC - Connection terminated unexpectedly"},
}

// serverEnd is a way the server ends an idle session.
type serverEnd struct {
	name    string
	options string // server options for the session
	// end makes the server end the session of the backend named appName;
	// nil when the options do it by themselves.
	end func(ctx context.Context, f *fixture, appName string) error
}

var serverEnds = []serverEnd{
	{name: "pg_terminate_backend", end: terminateBackend},
	{name: "idle_session_timeout", options: "-c idle_session_timeout=1000"},
}

// Each real client, directly and through the proxy, runs a query, the
// server ends its session, and it runs another query: through the proxy
// it must exit as promptly as directly, with the same status and the same
// error.
func TestClientsServerEndsSession(t *testing.T) {
	f := newFixture(t, "compat-clients@contoso.com")
	for _, cl := range realClients {
		for _, se := range serverEnds {
			t.Run(cl.name+"/"+se.name, func(t *testing.T) {
				t.Parallel()
				direct := runSession(t, f, cl, se, "direct", f.direct("postgres"))
				proxied := runSession(t, f, cl, se, "proxied", f.proxied("postgres"))
				if direct.exit != proxied.exit || !slices.Equal(direct.sortedOutput(), proxied.sortedOutput()) {
					t.Errorf("through the proxy, %s exited %d with:\n%s\ndirectly, it exited %d with:\n%s",
						cl.name, proxied.exit, strings.Join(proxied.output, "\n"), direct.exit, strings.Join(direct.output, "\n"))
				}
				if direct.exit == 0 {
					t.Errorf("directly, %s exited 0 after its session ended; the test proves nothing:\n%s", cl.name, strings.Join(direct.output, "\n"))
				}
			})
		}
	}
}

// session is how a client's session ended.
type session struct {
	output []string // the lines it printed after its first query's result
	exit   int
}

// sortedOutput is the output in order: a client that reads while idle
// (node-postgres) may report the server's message before or after the
// next query's error.
func (s session) sortedOutput() []string {
	return slices.Sorted(slices.Values(s.output))
}

// runSession starts cl on c, runs "select 1", has the server end the
// session as se says, waits until the backend is gone, sends "select 2"
// and waits for the client to exit.
func runSession(t *testing.T, f *fixture, cl realClient, se serverEnd, how string, c conn) session {
	t.Helper()
	c.AppName = "compat " + cl.name + " " + se.name + " " + how
	c.Options = se.options
	cmd, err := cl.find(t, f, c)
	if err != nil {
		if pgtest.Required() {
			t.Fatalf("%s: %v (clients are required because %s=1)", cl.name, err, pgtest.RequireEnv)
		}
		t.Skipf("%s: %v", cl.name, err)
	}
	cmd.Env = append(suiteBaseEnv(), cmd.Env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w // one stream, in the order written
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
		r.Close()
	}()
	kill := func() {
		cmd.Process.Kill()
		<-exited
		for range lines {
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	io.WriteString(stdin, "select 1;\n")
	select {
	case line, ok := <-lines:
		if line != "1" && line != "ROW 1" {
			rest := drain(lines, exited)
			t.Fatalf("%s %s: first query gave %q (open %v), then:\n%s", cl.name, how, line, ok, strings.Join(rest, "\n"))
		}
	case <-ctx.Done():
		kill()
		t.Fatalf("%s %s: no result of the first query within a minute", cl.name, how)
	}

	if se.end != nil {
		if err := se.end(ctx, f, c.AppName); err != nil {
			kill()
			t.Fatal(err)
		}
	}
	if err := waitBackendGone(ctx, f, c.AppName); err != nil {
		kill()
		t.Fatal(err)
	}

	var s session
	if cl.endedLine != "" {
		guard := time.NewTimer(exitGuard)
		defer guard.Stop()
		for !slices.Contains(s.output, cl.endedLine) {
			select {
			case line, ok := <-lines:
				if !ok {
					kill()
					t.Fatalf("%s %s: exited before the next query; it printed:\n%s", cl.name, how, strings.Join(s.output, "\n"))
				}
				s.output = append(s.output, line)
			case <-guard.C:
				kill()
				t.Fatalf("%s %s: did not notice within %v that the server ended its idle session; it printed:\n%s",
					cl.name, how, exitGuard, strings.Join(s.output, "\n"))
			}
		}
	}

	io.WriteString(stdin, "select 2;\n")
	stdin.Close()
	guard := time.NewTimer(exitGuard)
	defer guard.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			s.output = append(s.output, line)
			continue
		case err := <-exited:
			if lines != nil {
				for line := range lines {
					s.output = append(s.output, line)
				}
			}
			var exitErr *exec.ExitError
			switch {
			case err == nil:
			case errors.As(err, &exitErr):
				s.exit = exitErr.ExitCode()
			default:
				t.Fatal(err)
			}
			return s
		case <-guard.C:
			kill()
			t.Fatalf("%s %s: still running %v after its next query on a session the server ended (a hang); it printed:\n%s",
				cl.name, how, exitGuard, strings.Join(s.output, "\n"))
		}
	}
}

// drain collects what a client prints until it exits, for a report.
func drain(lines <-chan string, exited <-chan error) []string {
	var out []string
	timeout := time.After(exitGuard)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return out
			}
			out = append(out, line)
		case <-timeout:
			return append(out, "(still running)")
		}
	}
}

func terminateBackend(ctx context.Context, f *fixture, appName string) error {
	var n int
	err := f.pg.Admin().QueryRow(ctx,
		"select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = $1", appName).Scan(&n)
	if err == nil && n != 1 {
		err = fmt.Errorf("%d backends named %q, want 1", n, appName)
	}
	return err
}

// waitBackendGone waits until no backend has the application name.
func waitBackendGone(ctx context.Context, f *fixture, appName string) error {
	for {
		var n int
		err := f.pg.Admin().QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = $1", appName).Scan(&n)
		if err != nil {
			return fmt.Errorf("waiting for the backend %q to end: %w", appName, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the backend %q did not end: %w", appName, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// psqlSession runs psql (the server's own, else PATH's) on stdin.
func psqlSession(t *testing.T, f *fixture, c conn) (*exec.Cmd, error) {
	path := filepath.Join(f.pg.BinDir, "psql")
	if _, err := os.Stat(path); err != nil {
		if path, err = exec.LookPath("psql"); err != nil {
			return nil, err
		}
	}
	return exec.Command(path, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", c.String()), nil
}

// psycopg2Session runs testdata/session.py with a Python that has
// psycopg2: Debian's /usr/bin/python3 (python3-psycopg2), else PATH's.
func psycopg2Session(t *testing.T, f *fixture, c conn) (*exec.Cmd, error) {
	for _, python := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(python, "-c", "import psycopg2").Run() == nil {
			return exec.Command(python, "testdata/session.py", c.String()), nil
		}
	}
	return nil, errors.New("no python3 with psycopg2 (Debian: apt-get install python3-psycopg2)")
}

// nodeSession runs testdata/node/session.js with the pg module that
// `npm ci` installed in testdata/node.
func nodeSession(t *testing.T, f *fixture, c conn) (*exec.Cmd, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat("testdata/node/node_modules/pg/package.json"); err != nil {
		return nil, errors.New("node-postgres not installed: run `npm ci` in proxy/compat/testdata/node")
	}
	cfg, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return exec.Command(node, "testdata/node/session.js", string(cfg)), nil
}
