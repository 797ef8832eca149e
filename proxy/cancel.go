package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelTarget is what a cancel request for one upstream session needs:
// where the session's backend is, how to reach it (TLS when the session
// used TLS, so its key is not sent in the clear), and its key.
type cancelTarget struct {
	network, address string
	dial             pgconn.DialFunc
	tlsConfig        *tls.Config // nil: plaintext (a unix socket)
	directTLS        bool        // sslnegotiation=direct
	pid              uint32
	secret           []byte
}

// newCancelTarget records where hc's backend is. Like pgconn, it takes the
// address from the connection itself, not the config, so a cancel reaches
// the same server behind DNS load balancing or fallbacks.
func newCancelTarget(hc *pgconn.HijackedConn) *cancelTarget {
	t := &cancelTarget{
		dial:      hc.Config.DialFunc,
		tlsConfig: hc.TLSConfig,
		directTLS: hc.Config.SSLNegotiation == "direct",
		pid:       hc.PID,
		secret:    append([]byte(nil), hc.SecretKey...),
	}
	if addr := hc.Conn.RemoteAddr(); addr.Network() != "unix" {
		t.network, t.address = addr.Network(), addr.String()
	} else {
		// getpeername on a unix socket gives a relative name.
		t.network, t.address = pgconn.NetworkAddress(hc.Config.Host, hc.Config.Port)
	}
	return t
}

// send asks the upstream server to cancel the session's running query.
func (t *cancelTarget) send(ctx context.Context) error {
	conn, err := t.dial(ctx, t.network, t.address)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if t.tlsConfig != nil {
		if !t.directTLS {
			var req [8]byte
			binary.BigEndian.PutUint32(req[0:4], 8)
			binary.BigEndian.PutUint32(req[4:8], codeSSLRequest)
			if _, err := conn.Write(req[:]); err != nil {
				return err
			}
			var resp [1]byte
			if _, err := io.ReadFull(conn, resp[:]); err != nil {
				return err
			}
			if resp[0] != 'S' {
				return errors.New("the upstream server refused TLS for the cancel request")
			}
		}
		tc := tls.Client(conn, t.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("TLS for the cancel request: %w", err)
		}
		conn = tc
	}
	msg, err := (&pgproto3.CancelRequest{ProcessID: t.pid, SecretKey: t.secret}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	// The server answers by closing the connection, once it has sent the
	// signal; wait for that, as libpq does.
	_, _ = conn.Read(make([]byte, 1))
	return nil
}

// cancelKeys maps the BackendKeyData the proxy gave its clients to their
// upstream sessions. A client's key carries its upstream backend's real
// process ID, which clients compare with a notification's sender PID
// (psycopg's notify.pid, node-postgres's processID, pgx's PID()), and a
// secret of the proxy's own: clients never see the upstream's secret.
// Sessions on different upstream servers may share a process ID, so a
// key is the pair, and a new secret is drawn until the pair is unique.
type cancelKeys struct {
	mu   sync.Mutex
	keys map[uint32][]*cancelEntry // by process ID
}

// cancelEntry is one session's client-facing secret and upstream.
type cancelEntry struct {
	secret [4]byte
	target *cancelTarget
}

// add gives a session its client-facing key: the upstream's process ID
// and a random 4-byte secret no other open session with that process ID
// has. remove forgets it.
func (k *cancelKeys) add(t *cancelTarget) (key *pgproto3.BackendKeyData, remove func(), err error) {
	e := &cancelEntry{target: t}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil {
		k.keys = make(map[uint32][]*cancelEntry)
	}
	same := k.keys[t.pid]
	for taken := true; taken; {
		if _, err := rand.Read(e.secret[:]); err != nil {
			return nil, nil, err
		}
		taken = slices.ContainsFunc(same, func(o *cancelEntry) bool { return o.secret == e.secret })
	}
	k.keys[t.pid] = append(same, e)
	remove = func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		rest := slices.DeleteFunc(k.keys[t.pid], func(o *cancelEntry) bool { return o == e })
		if len(rest) == 0 {
			delete(k.keys, t.pid)
		} else {
			k.keys[t.pid] = rest
		}
	}
	return &pgproto3.BackendKeyData{ProcessID: t.pid, SecretKey: e.secret[:]}, remove, nil
}

// lookup returns the upstream session of a client's cancel request, or nil
// when the key matches no open session. Secrets are compared in constant
// time.
func (k *cancelKeys) lookup(req *pgproto3.CancelRequest) *cancelTarget {
	k.mu.Lock()
	defer k.mu.Unlock()
	var found *cancelTarget
	for _, e := range k.keys[req.ProcessID] {
		if subtle.ConstantTimeCompare(e.secret[:], req.SecretKey) == 1 {
			found = e.target
		}
	}
	return found
}

// forwardCancel handles a client's CancelRequest: it reaches the upstream
// backend of the session the key was given to, if any. As in PostgreSQL,
// the client gets no answer either way.
func (s *Server) forwardCancel(ctx context.Context, client string, req *pgproto3.CancelRequest) {
	t := s.keys.lookup(req)
	if t == nil {
		s.cancelsIgnored.Add(1)
		s.log.Warn("pgentra proxy: cancel request with an unknown key ignored", "client", client)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	if err := t.send(ctx); err != nil {
		s.log.Warn("pgentra proxy: forwarding a cancel request failed", "client", client, "error", oneLine(err.Error()))
		return
	}
	s.cancelsForwarded.Add(1)
	s.log.Debug("pgentra proxy: cancel request forwarded", "client", client)
}
