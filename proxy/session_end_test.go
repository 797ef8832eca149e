package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// rawSession is a client session through the proxy spoken with pgproto3,
// to see exactly what the proxy sends and when it closes.
type rawSession struct {
	conn net.Conn
	fe   *pgproto3.Frontend
	pid  uint32
}

// openRaw logs in through the proxy with protocol 3.0 and reads up to
// ReadyForQuery.
func (f *fixture) openRaw(t *testing.T, params map[string]string) *rawSession {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if params == nil {
		params = map[string]string{"user": "x", "database": "postgres"}
	}
	s := &rawSession{conn: c, fe: pgproto3.NewFrontend(c, c)}
	for _, m := range startupThrough(t, s.fe, pgproto3.ProtocolVersion30, params) {
		if k, ok := m.(*pgproto3.BackendKeyData); ok {
			s.pid = k.ProcessID
		}
	}
	return s
}

// query sends a simple query and returns the first column of the first
// row, reading through ReadyForQuery.
func (s *rawSession) query(t *testing.T, sql string) string {
	t.Helper()
	s.fe.Send(&pgproto3.Query{String: sql})
	if err := s.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var val string
	for {
		m, err := s.fe.Receive()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			val = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s", sql, m.Message)
		case *pgproto3.ReadyForQuery:
			return val
		}
	}
}

// readUntilClosed reads messages until the proxy closes the connection,
// returning them. A read still blocked after a long hang guard means the
// proxy left the client hanging.
func (s *rawSession) readUntilClosed(t *testing.T) []pgproto3.BackendMessage {
	t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var msgs []pgproto3.BackendMessage
	for {
		m, err := s.fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the proxy left the client connection open (read timed out after %d messages)", len(msgs))
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Logf("read ended with %v", err)
			}
			return msgs
		}
		if er, ok := m.(*pgproto3.ErrorResponse); ok {
			cp := *er
			m = &cp
		}
		msgs = append(msgs, m)
	}
}

// When the upstream ends a session (pg_terminate_backend, or
// idle_session_timeout), the client gets the server's FATAL message and
// then the connection closes at once, as directly; the proxy frees the
// session and logs its end.
func TestProxyUpstreamEndsSession(t *testing.T) {
	for _, tt := range []struct {
		name, code string
		end        func(t *testing.T, f *fixture, s *rawSession, pid string)
	}{
		{"pg_terminate_backend", "57P01", func(t *testing.T, f *fixture, s *rawSession, pid string) {
			if _, err := f.pg.Admin().Exec(testCtx(t), "select pg_terminate_backend($1::int)", pid); err != nil {
				t.Fatal(err)
			}
		}},
		{"idle_session_timeout", "57P05", func(t *testing.T, f *fixture, s *rawSession, pid string) {
			s.query(t, "set idle_session_timeout = '200ms'")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, Config{})
			s := f.openRaw(t, nil)
			pid := s.query(t, "select pg_backend_pid()")
			tt.end(t, f, s, pid)
			msgs := s.readUntilClosed(t)
			if len(msgs) != 1 {
				t.Fatalf("got %d messages before the close, want the server's FATAL: %#v", len(msgs), msgs)
			}
			if er, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || er.Severity != "FATAL" || er.Code != tt.code {
				t.Errorf("got %#v; want FATAL %s", msgs[0], tt.code)
			}
			waitFor(t, "the session to be freed and logged", func() bool {
				return f.proxy.Stats().Open == 0 && strings.Contains(f.logs.String(), "session closed")
			})
		})
	}
}

// A client's Terminate ends the session at once: the upstream closes and
// so does the client's connection, which pgx waits for after cancelling.
func TestProxyClientTerminate(t *testing.T) {
	f := newFixture(t, Config{})
	s := f.openRaw(t, nil)
	s.query(t, "select 1")
	s.fe.Send(&pgproto3.Terminate{})
	if err := s.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msgs := s.readUntilClosed(t); len(msgs) != 0 {
		t.Errorf("after Terminate: %#v", msgs)
	}
	waitFor(t, "the session to close", func() bool {
		return f.proxy.Stats().Open == 0 && strings.Contains(f.logs.String(), "session closed")
	})
}
