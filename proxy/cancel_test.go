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

// Sessions on two upstream servers can have the same process ID: each
// client still gets that real process ID, with a secret of its own, and
// each key cancels its own session only, also after the other ends.
// Thousands of sessions sharing one process ID never share a key.
func TestProxyCancelKeysSharedPID(t *testing.T) {
	var keys cancelKeys
	a := &cancelTarget{address: "server-a", pid: 77}
	b := &cancelTarget{address: "server-b", pid: 77}
	ka, removeA, err := keys.add(a)
	if err != nil {
		t.Fatal(err)
	}
	kb, removeB, err := keys.add(b)
	if err != nil {
		t.Fatal(err)
	}
	if ka.ProcessID != 77 || kb.ProcessID != 77 {
		t.Fatalf("process IDs %d, %d; want the upstream's 77", ka.ProcessID, kb.ProcessID)
	}
	cancelOf := func(k *pgproto3.BackendKeyData) *pgproto3.CancelRequest {
		return &pgproto3.CancelRequest{ProcessID: k.ProcessID, SecretKey: k.SecretKey}
	}
	if keys.lookup(cancelOf(ka)) != a || keys.lookup(cancelOf(kb)) != b {
		t.Fatal("a key does not reach its own session")
	}
	wrong := &pgproto3.CancelRequest{ProcessID: 77, SecretKey: []byte{ka.SecretKey[0] ^ 1, ka.SecretKey[1], ka.SecretKey[2], ka.SecretKey[3]}}
	if string(wrong.SecretKey) != string(kb.SecretKey) && keys.lookup(wrong) != nil {
		t.Error("a wrong secret matched a session")
	}
	removeA()
	if keys.lookup(cancelOf(ka)) != nil || keys.lookup(cancelOf(kb)) != b {
		t.Error("after a's session ended, its key still matches, or b's no longer does")
	}
	removeB()
	if len(keys.keys) != 0 {
		t.Errorf("%d process IDs left after every session ended", len(keys.keys))
	}

	seen := map[string]bool{}
	var removes []func()
	for range 5000 {
		k, remove, err := keys.add(&cancelTarget{pid: 9})
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(k.SecretKey)] {
			t.Fatalf("two open sessions got the key (9, %x)", k.SecretKey)
		}
		seen[string(k.SecretKey)] = true
		removes = append(removes, remove)
	}
	for _, r := range removes {
		r()
	}
	if len(keys.keys) != 0 {
		t.Error("keys left")
	}
}
