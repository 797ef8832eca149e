package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A cancel for a session that used TLS goes over TLS too (SSLRequest,
// then the handshake, verifying the server as the session did), so the
// backend's key is not sent in the clear; it carries the upstream key.
func TestProxyCancelTargetUsesTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan *pgproto3.CancelRequest, 1)
	go func() {
		defer close(got)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		body, err := readStartupPacket(c)
		if err != nil || binary.BigEndian.Uint32(body) != codeSSLRequest {
			t.Errorf("first packet %v, %v; want an SSLRequest", body, err)
			return
		}
		if _, err := c.Write([]byte{'S'}); err != nil {
			return
		}
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		body, err = readStartupPacket(tc)
		if err != nil {
			t.Error(err)
			return
		}
		var req pgproto3.CancelRequest
		if err := req.Decode(body); err != nil {
			t.Error(err)
			return
		}
		got <- &req
		_ = tc.Close()
	}()
	dialer := &net.Dialer{}
	target := &cancelTarget{
		network: "tcp", address: l.Addr().String(), dial: pgconn.DialFunc(dialer.DialContext),
		tlsConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"},
		pid:       4242, secret: []byte{1, 2, 3, 4},
	}
	if err := target.send(testCtx(t)); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	req := <-got
	if req == nil || req.ProcessID != 4242 || string(req.SecretKey) != "\x01\x02\x03\x04" {
		t.Errorf("the server got %+v; want the upstream key", req)
	}
}
