package proxy

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The client's startup deadline bounds its own part of the startup, not
// the wait for a token and the upstream login (ConnectTimeout's): a token
// slower than StartupTimeout still gives the client its session, and a
// slow failing credential still reaches the client as an ErrorResponse
// with the credential's message, and the log.
func TestProxySlowToken(t *testing.T) {
	const startup, latency = 300 * time.Millisecond, 1500 * time.Millisecond
	t.Run("success", func(t *testing.T) {
		f := newFixture(t, Config{StartupTimeout: startup})
		f.cred.SetLatency(latency)
		conn := connect(t, f.connString())
		if got := queryString(t, conn, "select current_user"); got != alice.UPN {
			t.Errorf("current_user = %q", got)
		}
	})
	t.Run("failure", func(t *testing.T) {
		f := newFixture(t, Config{StartupTimeout: startup})
		f.cred.SetLatency(latency)
		f.cred.FailWith(errors.New("AzureCLICredential: ERROR: Please run 'az login' to setup account"))
		_, err := pgx.Connect(testCtx(t), f.connString())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "az login") {
			t.Errorf("with a slow failing credential: %v; want 28000 with the credential's message", err)
		}
		waitFor(t, "the refusal to be logged", func() bool {
			logs := f.logs.String()
			return strings.Contains(logs, "session refused") && strings.Contains(logs, "az login")
		})
		if s := f.proxy.Stats(); s.Failed != 1 {
			t.Errorf("stats %+v; want one failure", s)
		}
	})
}

// A client that leaves while the proxy waits for a token ends the wait:
// its slot is freed at once and nothing logs in upstream for it.
func TestProxyClientLeavesDuringTokenWait(t *testing.T) {
	f := newFixture(t, Config{MaxConnections: 1, ConnectTimeout: 5 * time.Minute})
	f.cred.Hang(true)
	defer f.cred.Hang(false)
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "x", "database": "postgres"}}).Encode(nil)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session to wait for its token", func() bool { return f.proxy.Stats().Open == 1 })
	c.Close()
	waitFor(t, "the slot to be freed while the credential still hangs", func() bool { return f.proxy.Stats().Open == 0 })
	// Freed because the client left, not because the token fetch timed out.
	if logs := f.logs.String(); !strings.Contains(logs, "the client left") {
		t.Errorf("the session ended without noticing the client left: %s", logs)
	}
	f.cred.Hang(false)
	conn := connect(t, f.connString())
	queryString(t, conn, "select 1")
	if st := f.srv.Stats(); st.Accepted != 1 {
		t.Errorf("upstream logins %d; want 1, for the second client only", st.Accepted)
	}
}

// A client that sends its first query right behind its startup message,
// before its session has started, gets it run: what the proxy read while
// watching the client goes upstream first, in order.
func TestProxyQueryBeforeSessionStart(t *testing.T) {
	f := newFixture(t, Config{})
	f.cred.SetLatency(500 * time.Millisecond)
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "x", "database": "postgres"}}).Encode(nil)
	msg, _ = (&pgproto3.Query{String: "select 'early'"}).Encode(msg)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	fe := pgproto3.NewFrontend(c, c)
	var got []string
	readies := 0
	for readies < 2 {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			readies++
		case *pgproto3.DataRow:
			got = append(got, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s", m.Message)
		}
	}
	if len(got) != 1 || got[0] != "early" {
		t.Errorf("rows %q; want the early query's", got)
	}
}
