package entraauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestTokenNeverAppearsInOutput drives every path that logs or fails and
// searches everything captured for the tokens minted.
func TestTokenNeverAppearsInOutput(t *testing.T) {
	t.Setenv("PGUSER", "")
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts, cred, clock := newClockedSource(t, 10*time.Second, WithLogger(logger))
	cred.upn = ""
	cred.mirid = testMIRID
	ctx := context.Background()
	var captured []string

	cfg := connConfig(t, "host=srv.postgres.database.azure.com sslmode=require")
	if err := ts.BeforeConnect(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(6 * time.Second)
	cred.failWith(errBoom)
	if _, err := ts.Token(ctx); err != nil { // background refresh fails
		t.Fatal(err)
	}
	cred.waitReturned(t, 3)
	waitIdle(t, ts)
	clock.Advance(4 * time.Second)
	_, err = ts.Token(ctx) // expired, fetch fails
	captured = append(captured, err.Error())
	err = ts.BeforeConnect(ctx, connConfig(t, "host=db sslmode=disable"))
	captured = append(captured, err.Error())
	_, err = UsernameFromToken(tok.Value + "x")
	if err != nil {
		captured = append(captured, err.Error())
	}
	_, err = UsernameFromToken(strings.ReplaceAll(tok.Value, ".", "!"))
	captured = append(captured, err.Error())
	c := ts.current.Load()
	err = &TokenExpiredError{ExpiresOn: c.token.ExpiresOn}
	captured = append(captured, err.Error())

	for _, v := range []any{tok, &tok, ts, ts.Stats(), []Token{tok}, map[string]Token{"t": tok}, struct{ T Token }{tok}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			captured = append(captured, fmt.Sprintf(verb, v))
		}
	}
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("user logs a token", "token", tok)
	captured = append(captured, logs.String())

	all := strings.Join(captured, "\n")
	if !strings.Contains(logs.String(), "token fetch failed") || !strings.Contains(logs.String(), "token fetched") {
		t.Fatalf("expected fetch log lines, got:\n%s", logs.String())
	}
	for _, minted := range cred.allMinted() {
		for _, part := range append(strings.Split(minted, "."), minted) {
			if strings.Contains(all, part) {
				t.Fatalf("a token (or a segment of one) appears in captured output:\n%s", all)
			}
		}
	}
}

func TestPanicValuesDoNotCarryTheToken(t *testing.T) {
	ts, _, _ := newClockedSource(t, time.Hour)
	tok, err := ts.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	msg := func() (msg string) {
		defer func() { msg = fmt.Sprint(recover()) }()
		panic(tok)
	}()
	if strings.Contains(msg, tok.Value) {
		t.Fatal("panicking with a Token prints its value")
	}
}

func TestInvalidOptionsAreReported(t *testing.T) {
	for name, tc := range map[string]struct {
		cred *fakeCredential
		opts []Option
	}{
		"contradicting TLS options": {newFakeCredential("a"), []Option{WithRequireVerifiedTLS(), WithInsecurePlaintextForLocalDevelopment()}},
		"empty scope":               {newFakeCredential("a"), []Option{WithScope("")}},
		"empty user":                {newFakeCredential("a"), []Option{WithUser("")}},
		"zero fetch timeout":        {newFakeCredential("a"), []Option{WithFetchTimeout(0)}},
		"nil credential":            {nil, nil},
	} {
		t.Run(name, func(t *testing.T) {
			var ts *TokenSource
			if tc.cred == nil {
				ts = NewTokenSource(nil)
			} else {
				ts = NewTokenSource(tc.cred, tc.opts...)
			}
			if _, err := ts.Token(context.Background()); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("Token: err = %v, want ErrInvalidOption", err)
			}
			if err := ts.BeforeConnect(context.Background(), connConfig(t, "host=h sslmode=require")); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("BeforeConnect: err = %v, want ErrInvalidOption", err)
			}
			if _, err := ts.Connector("host=h sslmode=require").Connect(context.Background()); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("Connect: err = %v, want ErrInvalidOption", err)
			}
			if tc.cred != nil && tc.cred.calls.Load() != 0 {
				t.Fatal("credential called despite invalid options")
			}
		})
	}
}

func TestFetchTimeoutBoundsAHangingCredential(t *testing.T) {
	ts, cred, _ := newClockedSource(t, time.Hour, WithFetchTimeout(50*time.Millisecond))
	release := cred.hold()
	defer release()
	_, err := ts.Token(context.Background()) // the caller has no deadline
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the fetch timeout's DeadlineExceeded", err)
	}
}
