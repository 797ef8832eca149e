package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// relayBufSize is the size of each direction's copy buffer: a TLS record's
// plaintext is at most 16 KiB, and a read never returns more than one.
const relayBufSize = 32 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// relay copies bytes both ways between client and server until either
// side closes or fails, then closes both at once: a client's Terminate
// reaches the server, which closes, and a server ending the session
// (pg_terminate_backend, idle_session_timeout, a restart) has its last
// message relayed and then the client's connection closed, as a direct
// connection would be. It returns the bytes sent each way and the first
// error that was not a normal end of session. Each write is also added to
// the counters fromClients and toClients as it is made.
func relay(client, server net.Conn, fromClients, toClients *atomic.Int64) (toServer, toClient int64, err error) {
	errc := make(chan error, 1)
	go func() {
		var err error
		toClient, err = copyConn(client, server, toClients)
		// The server ended: closing both ends the other copy.
		client.Close()
		server.Close()
		errc <- err
	}()
	toServer, err = copyConn(server, client, fromClients)
	// The client ended: closing both ends the other copy.
	client.Close()
	server.Close()
	err2 := <-errc
	if err == nil {
		err = err2
	}
	return toServer, toClient, err
}

// copyConn copies src to dst with a pooled buffer until src ends, writing
// each read at once: the protocol is request and answer, so nothing waits
// for a buffer to fill. Each write's bytes are added to total too.
func copyConn(dst, src net.Conn, total *atomic.Int64) (int64, error) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			total.Add(int64(nw))
			if werr != nil {
				return n, quiet(werr)
			}
		}
		if rerr != nil {
			return n, quiet(rerr)
		}
	}
}

// quiet drops the errors that are a normal end of a session: EOF, and a
// connection closed by the other copy.
func quiet(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
