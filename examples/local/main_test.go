package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
)

// TestMain fails the tests if the demo leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runDemo runs the demo, skipping the test without PostgreSQL binaries
// (failing instead under ENTRAAUTH_REQUIRE_PG=1).
func runDemo(t *testing.T, ctx context.Context, opts options) (result, string) {
	t.Helper()
	var out bytes.Buffer
	return runDemoTo(t, ctx, opts, &out), out.String()
}

// runDemoTo is runDemo writing to out.
func runDemoTo(t *testing.T, ctx context.Context, opts options, out io.Writer) result {
	t.Helper()
	t.Setenv("PGUSER", "")
	res, err := run(ctx, opts, out)
	if errors.Is(err, entratest.ErrNoPostgreSQL) {
		pgtest.SkipOrFail(t, err)
	}
	if err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out)
	}
	return res
}

// stopWhenRunning is an output buffer that calls stop a moment after the
// demo prints its progress header, that is once the emulator is up and the
// queries run, whatever the start took on a loaded machine.
type stopWhenRunning struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	stop    func()
	stopper *time.Timer
}

func (w *stopWhenRunning) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if w.stopper == nil && strings.Contains(w.buf.String(), "current_user\n") {
		w.stopper = time.AfterFunc(1500*time.Millisecond, w.stop)
	}
	return n, err
}

func (w *stopWhenRunning) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// summaryNumber returns the first number the summary line starting with
// label prints after the label.
func summaryNumber(t *testing.T, out, label string) int64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + label + `\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q line in the summary:\n%s", label, out)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestDemoRotatesTokensWithoutErrors(t *testing.T) {
	res, out := runDemo(t, context.Background(), options{duration: 5 * time.Second, workers: 4, tokenLifetime: 2 * time.Second})
	t.Logf("output:\n%s", out)

	if res.failed != 0 || res.poolQueries == 0 || res.dbQueries == 0 {
		t.Errorf("%d failed; %d through pgxpool, %d through database/sql; want none failed and both used", res.failed, res.poolQueries, res.dbQueries)
	}
	if res.server.DistinctTokens < 2 || res.tokensMinted < 2 {
		t.Errorf("%d tokens minted, %d accepted; want at least 2 (tokens live 2s for 5s)", res.tokensMinted, res.server.DistinctTokens)
	}
	if res.server.TotalRejected() != 0 || res.server.PlaintextPasswords != 0 {
		t.Errorf("server rejected %v, %d tokens without TLS; want none", res.server.Rejected, res.server.PlaintextPasswords)
	}
	if res.user != "alice@contoso.com" {
		t.Errorf("user %q, want alice@contoso.com from the token", res.user)
	}

	// What it prints agrees.
	if !strings.Contains(out, "0 failed") || !strings.Contains(out, "\nOK: ") {
		t.Errorf("summary does not say 0 failed and OK:\n%s", out)
	}
	if n := summaryNumber(t, out, "queries"); n != res.poolQueries+res.dbQueries {
		t.Errorf("summary prints %d queries, want %d", n, res.poolQueries+res.dbQueries)
	}
	if n := summaryNumber(t, out, "tokens"); n != res.credentialCalls || n < 2 {
		t.Errorf("summary prints %d credential calls, want %d (at least 2)", n, res.credentialCalls)
	}
	if !regexp.MustCompile(`(?m)^\s+\d+s\s+\d+\s+0\s+\d+\s+\d+\s+\d+\s+\d+  alice@contoso.com$`).MatchString(out) {
		t.Errorf("no progress line with 0 errors and the user:\n%s", out)
	}
}

func TestDemoStopsEarlyWithSummary(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Stop as Ctrl-C does, a moment after the queries start.
	w := &stopWhenRunning{stop: cancel}
	res := runDemoTo(t, ctx, options{duration: time.Hour, workers: 2, tokenLifetime: 10 * time.Second}, w)
	out := w.String()
	if res.poolQueries == 0 || res.dbQueries == 0 {
		t.Errorf("%d queries through pgxpool, %d through database/sql before the stop; want both used", res.poolQueries, res.dbQueries)
	}
	if res.elapsed >= time.Hour || res.failed != 0 {
		t.Errorf("ran %v with %d failed queries, want an early stop and none failed", res.elapsed, res.failed)
	}
	if !strings.Contains(out, "\nsummary after ") || !strings.Contains(out, "\nOK: ") {
		t.Errorf("no summary after stopping early:\n%s", out)
	}
}

func TestDemoWithoutPostgreSQL(t *testing.T) {
	t.Setenv("PG_BIN", t.TempDir()) // a directory without initdb and postgres
	var out bytes.Buffer
	_, err := run(context.Background(), options{duration: time.Second, workers: 1, tokenLifetime: 10 * time.Second}, &out)
	if !errors.Is(err, entratest.ErrNoPostgreSQL) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("run without binaries: %v; want ErrNoPostgreSQL saying how to install them", err)
	}
	if out.Len() != 0 {
		t.Errorf("printed %q before failing", out.String())
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	for _, opts := range []options{
		{duration: 0, workers: 1, tokenLifetime: 10 * time.Second},
		{duration: time.Second, workers: 0, tokenLifetime: 10 * time.Second},
		{duration: time.Second, workers: 1, tokenLifetime: time.Second},
	} {
		var out bytes.Buffer
		if _, err := run(context.Background(), opts, &out); err == nil || !strings.HasPrefix(err.Error(), "-") {
			t.Errorf("run(%+v): %v, want an error naming the flag", opts, err)
		}
	}
}
