package proxy

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fakeUpstream is a PostgreSQL server on a unix socket that logs anyone
// in and then sends extra, for faults a real server rarely shows on
// demand. It answers each Query with an empty result.
type fakeUpstream struct {
	dir string // the socket directory; the port is 5432
	l   net.Listener
}

// startFakeUpstream serves logins that send before ahead of
// ReadyForQuery, and after right behind it in the same write, as a server
// may send a notice right after ReadyForQuery.
func startFakeUpstream(t *testing.T, before, after []pgproto3.BackendMessage) *fakeUpstream {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL.5432"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUpstream{dir: dir, l: l}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c, before, after)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return f
}

func (f *fakeUpstream) serve(c net.Conn, before, after []pgproto3.BackendMessage) {
	defer c.Close()
	be := pgproto3.NewBackend(c, c)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0-fake"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}})
	for _, m := range before {
		be.Send(m)
	}
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	for _, m := range after {
		be.Send(m)
	}
	if err := be.Flush(); err != nil {
		return
	}
	for {
		m, err := be.Receive()
		if err != nil {
			return
		}
		switch m.(type) {
		case *pgproto3.Query:
			be.Send(&pgproto3.EmptyQueryResponse{})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		case *pgproto3.Terminate:
			return
		}
	}
}

// A notice the upstream sends in the same write as its ReadyForQuery at
// the end of the login reaches the client, right after ReadyForQuery, as
// it does on a direct connection.
func TestProxyNoticeAfterReadyForQuery(t *testing.T) {
	up := startFakeUpstream(t, nil, []pgproto3.BackendMessage{&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "01000", Message: "right after ReadyForQuery"}})
	f := newFixture(t, Config{Upstream: "host=" + up.dir + " port=5432 sslmode=disable"})
	s := f.openRaw(t, nil)
	_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := s.fe.Receive()
	if err != nil {
		t.Fatalf("no message after ReadyForQuery: %v", err)
	}
	if n, ok := m.(*pgproto3.NoticeResponse); !ok || n.Message != "right after ReadyForQuery" || n.Code != "01000" {
		t.Fatalf("after ReadyForQuery: %#v; want the upstream's notice", m)
	}
	_ = s.conn.SetReadDeadline(time.Time{})
	s.query(t, "")
}

// Notices the upstream sends during the login reach the client before
// its ReadyForQuery, as directly.
func TestProxyLoginNotices(t *testing.T) {
	up := startFakeUpstream(t, []pgproto3.BackendMessage{&pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "01000", Message: "during the login"}}, nil)
	f := newFixture(t, Config{Upstream: "host=" + up.dir + " port=5432 sslmode=disable"})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msgs := startupThrough(t, pgproto3.NewFrontend(c, c), pgproto3.ProtocolVersion30, map[string]string{"user": "x", "database": "postgres"})
	var got []string
	for _, m := range msgs {
		if n, ok := m.(*pgproto3.NoticeResponse); ok {
			got = append(got, n.Severity+" "+n.Message)
		}
	}
	if len(got) != 1 || got[0] != "WARNING during the login" {
		t.Errorf("notices before ReadyForQuery: %q; want the upstream's warning", got)
	}
}
