package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgentra/entraauth"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Each refused client counts once, under its reason; bytes count as they
// are relayed, before the session ends; a session's login counts in
// Logins and LastLogin.
func TestStatsFailedBy(t *testing.T) {
	const pw = "local-pw"
	f := newFixture(t, Config{LocalPassword: pw, MaxConnections: 1, StrictUser: true})
	want := map[FailureReason]int64{}
	open := 0 // the sessions the test holds open
	check := func(what string) {
		t.Helper()
		st := f.proxy.Stats()
		var sum int64
		for _, r := range FailureReasons() {
			sum += st.FailedBy[r]
			if st.FailedBy[r] != want[r] {
				t.Errorf("after %s: FailedBy[%s] = %d; want %d", what, r, st.FailedBy[r], want[r])
			}
		}
		if sum != st.Failed {
			t.Errorf("after %s: FailedBy adds up to %d, Failed is %d", what, sum, st.Failed)
		}
	}
	refused := func(what, code string, reason FailureReason, extra ...string) {
		t.Helper()
		_, err := pgx.Connect(testCtx(t), f.connString(extra...))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != code {
			t.Fatalf("%s: %v; want SQLSTATE %s", what, err, code)
		}
		want[reason]++
		// The refused client's slot frees just after it is told.
		waitFor(t, "the refusal to count and its slot to free", func() bool {
			st := f.proxy.Stats()
			return st.Failed == sumOf(want) && st.Open == open
		})
		check(what)
	}
	right := "password=" + pw
	refused("a wrong local password", "28P01", FailLocalAuth, "password=wrong")
	f.cred.FailWith(errors.New("no token today"))
	refused("a failing credential", "28000", FailToken, right, "user="+alice.UPN)
	f.cred.FailWith(nil)
	_ = f.token(t) // past the credential's backoff
	refused("another user with StrictUser", "28000", FailStrictUser, right, "user="+bob.UPN)
	refused("a missing database", "3D000", FailUpstreamLogin, right, "user="+alice.UPN, "dbname=no_such_db")

	// A malformed startup packet.
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte{0, 0, 0, 3, 0, 0, 0, 0})
	_, _ = c.Read(make([]byte, 512))
	c.Close()
	want[FailStartup]++
	waitFor(t, "the startup failure to count", func() bool { return f.proxy.Stats().FailedBy[FailStartup] == 1 })
	check("a malformed startup packet")

	if st := f.proxy.Stats(); st.Opened != 0 || st.Logins.Count != 0 || !st.LastLogin.IsZero() || st.BytesFromClients != 0 {
		t.Errorf("stats before any session: %+v", st)
	}
	before := time.Now()
	first := connect(t, f.connString(right, "user="+alice.UPN))
	open = 1
	if got := queryString(t, first, "select repeat('x', 50000)"); len(got) != 50000 {
		t.Fatalf("query returned %d bytes", len(got))
	}
	st := f.proxy.Stats()
	if st.Opened != 1 || st.Open != 1 || st.Logins.Count != 1 || st.LastLogin.Before(before) || st.Token.Fetches < 1 || st.Token.ExpiresOn.Before(time.Now()) {
		t.Errorf("stats with one session: %+v", st)
	}
	// The session is open: its bytes count already.
	if st.BytesToClients < 50000 || st.BytesFromClients < int64(len("select repeat('x', 50000)")) {
		t.Errorf("bytes relayed while the session is open: to clients %d, from clients %d", st.BytesToClients, st.BytesFromClients)
	}
	refused("a second session over MaxConnections", "53300", FailOverLimit, right, "user="+alice.UPN)

	// Shutting down: a new client is refused with 57P03.
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.proxy.Shutdown(sctx) }()
	waitFor(t, "the drain", f.proxy.isDraining)
	refused("a client during Shutdown", "57P03", FailShuttingDown, right, "user="+alice.UPN)
	first.Close(testCtx(t))
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if st := f.proxy.Stats(); st.Opened != 1 || st.Logins.Count != 1 {
		t.Errorf("refused clients counted as logins: %+v", st)
	}
}

func sumOf(m map[FailureReason]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// CheckUpstream logs in once with the proxy's user (StrictUser does not
// apply: there is no client), counts in Logins and LastLogin and not as a
// session, and its errors say why, without the token.
func TestCheckUpstream(t *testing.T) {
	f := newFixture(t, Config{StrictUser: true})
	if err := f.proxy.CheckUpstream(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	st := f.proxy.Stats()
	if st.Opened != 0 || st.Open != 0 || st.Logins.Count != 1 || st.LastLogin.IsZero() || st.Failed != 0 {
		t.Errorf("stats after CheckUpstream: %+v", st)
	}
	if got := f.srv.Stats().Accepted; got != 1 {
		t.Errorf("upstream logins: %d; want 1", got)
	}
	tok := f.token(t)
	f.cred.FailWith(errors.New("no token today"))
	// The cached token is still usable: the check passes without the
	// credential.
	if err := f.proxy.CheckUpstream(testCtx(t)); err != nil {
		t.Errorf("CheckUpstream with a cached token and a failing credential: %v", err)
	}

	// A server that refuses: the reason is the upstream login's.
	p, err := New(Config{Upstream: f.srv.ConnString(), User: bob.UPN, TokenSource: f.ts, Logger: f.proxy.log})
	if err != nil {
		t.Fatal(err)
	}
	err = p.CheckUpstream(testCtx(t))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || FailureReasonOf(err) != FailUpstreamLogin {
		t.Errorf("CheckUpstream as a user the token is not for: %v (%s); want 28P01, upstream_login", err, FailureReasonOf(err))
	}
	// Explained, with the user's source the proxy knows.
	var le *entraauth.LoginError
	if !errors.As(err, &le) || le.User != bob.UPN || le.UserSource != upstreamUserSource ||
		!strings.Contains(le.Fix, "Remove the user name from the proxy's upstream user") {
		t.Errorf("CheckUpstream's error is not explained with the proxy's user source: %#v", le)
	}
	if err != nil && strings.Contains(err.Error(), tok) {
		t.Error("the error holds the token")
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
}

// A token source with no token: FailToken.
func TestCheckUpstreamNoToken(t *testing.T) {
	f := newFixture(t, Config{})
	f.cred.FailWith(errors.New("no token today"))
	err := f.proxy.CheckUpstream(testCtx(t))
	if err == nil || FailureReasonOf(err) != FailToken || !strings.Contains(err.Error(), "no token today") {
		t.Errorf("CheckUpstream with no token: %v (%s); want the credential's error, token", err, FailureReasonOf(err))
	}
	if f.proxy.Stats().Logins.Count != 0 {
		t.Error("a failed check counted as a login")
	}
}

// The histogram's buckets hold durations up to their bounds, cumulatively;
// Count includes those over the last bound.
func TestDurationHistogram(t *testing.T) {
	var h durationHistogram
	for _, d := range []time.Duration{time.Millisecond, 5 * time.Millisecond, 6 * time.Millisecond, time.Second, time.Minute} {
		h.observe(d)
	}
	s := h.snapshot()
	if s.Count != 5 || s.Sum != time.Minute+time.Second+12*time.Millisecond {
		t.Errorf("count %d, sum %v", s.Count, s.Sum)
	}
	want := map[time.Duration]uint64{5 * time.Millisecond: 2, 10 * time.Millisecond: 3, 500 * time.Millisecond: 3, time.Second: 4, 30 * time.Second: 4}
	for i, b := range s.Bounds {
		if w, ok := want[b]; ok && s.Counts[i] != w {
			t.Errorf("bucket %v: %d; want %d", b, s.Counts[i], w)
		}
	}
}
