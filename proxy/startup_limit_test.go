package proxy

import (
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Connections in startup are limited, as PostgreSQL limits its children:
// with MaxConnections=1, 500 silent connections hold at most
// MinStartupConnections goroutines; the others are answered with 53300 at
// once and closed, instead of each waiting out the startup timeout. A
// cancel request over the limit is still forwarded, as PostgreSQL does.
// Once the silent ones go, clients log in again.
func TestProxyStartupLimit(t *testing.T) {
	f := newFixture(t, Config{MaxConnections: 1, StartupTimeout: 5 * time.Minute})
	session := connect(t, f.connString())
	base := runtime.NumGoroutine()
	const silent = 500
	conns := make([]net.Conn, 0, silent)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range silent {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	refused := silent - MinStartupConnections
	waitFor(t, "the connections over the limit to be refused", func() bool { return f.proxy.Stats().Failed == int64(refused) })
	if st := f.proxy.Stats(); st.Starting != MinStartupConnections {
		t.Errorf("stats %+v; want %d connections in startup", st, MinStartupConnections)
	}
	// Each refused connection got the error and was closed; the others
	// are still waiting.
	var got53300, open int
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		fe := pgproto3.NewFrontend(c, c)
		m, err := fe.Receive()
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			open++
			continue
		case err != nil:
			t.Fatalf("reading a refused connection: %v", err)
		}
		if er, ok := m.(*pgproto3.ErrorResponse); !ok || er.Code != "53300" {
			t.Fatalf("a refused connection got %#v", m)
		}
		if _, err := fe.Receive(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("after the error: %v; want the connection closed", err)
		}
		got53300++
	}
	if got53300 != refused || open != MinStartupConnections {
		t.Errorf("%d connections refused with 53300 and %d open; want %d and %d", got53300, open, refused, MinStartupConnections)
	}
	waitFor(t, "the refused connections' goroutines to end", func() bool {
		return runtime.NumGoroutine() <= base+2*MinStartupConnections+10
	})
	// A cancel request over the limit still reaches the session's backend.
	const sleep = "select pg_sleep(30) -- startup limit"
	errc := make(chan error, 1)
	go func() { _, err := session.Exec(testCtx(t), sleep); errc <- err }()
	f.waitQuery(t, sleep)
	if err := session.PgConn().CancelRequest(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if err := <-errc; !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Errorf("the query cancelled over the startup limit ended with %v; want 57014", err)
	}
	// A client now is over the limit too.
	_, err := pgx.Connect(testCtx(t), f.connString())
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Errorf("a client with the startup slots full: %v; want 53300", err)
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "the silent connections to end", func() bool { return f.proxy.Stats().Starting == 0 })
	session.Close(testCtx(t))
	waitFor(t, "the session to end", func() bool { return f.proxy.Stats().Open == 0 })
	conn := connect(t, f.connString())
	queryString(t, conn, "select 1")
}
