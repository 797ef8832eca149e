package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Codes of the messages a client may open a connection with.
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
)

// maxStartupLen bounds a startup packet, as PostgreSQL does (10000 bytes).
const maxStartupLen = 10000

// maxPasswordLen bounds the password message of the local password.
const maxPasswordLen = 1000

// tlsRecordHandshake is the first byte of a TLS ClientHello: a client
// opening with it wants TLS at once (PostgreSQL 17's direct TLS,
// sslnegotiation=direct). A startup packet's first byte is the high byte
// of its length, always 0.
const tlsRecordHandshake = 0x16

// alpnPostgreSQL is the ALPN protocol of PostgreSQL over TLS.
const alpnPostgreSQL = "postgresql"

// errNoDirectTLS refuses a direct TLS client when the proxy has no TLS
// config. The client is told nothing (it expects TLS): the connection is
// closed, as PostgreSQL closes it.
var errNoDirectTLS = errors.New("a client opened with TLS directly (sslnegotiation=direct), but the proxy offers no TLS to clients (--tls-cert)")

// clientTLS returns a copy of the TLS config offered to clients, with the
// ALPN protocol "postgresql" as PostgreSQL 17 offers it: a client asking
// for another protocol fails the handshake. Nil stays nil.
func clientTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	c.NextProtos = []string{alpnPostgreSQL}
	return c
}

// clientHello is what a client opened its connection for: a session
// (startup) or a cancel request (cancel).
type clientHello struct {
	conn    net.Conn // the client connection, TLS-wrapped if the client asked for it
	startup *pgproto3.StartupMessage
	cancel  *pgproto3.CancelRequest
	tls     bool
}

// readHello reads a client's first packets: SSLRequest and GSSENCRequest
// are answered ('S' with a TLS config, else 'N') until a StartupMessage or a
// CancelRequest arrives. A client opening with a TLS handshake instead
// (direct TLS) gets one if there is a TLS config and it asks for ALPN
// "postgresql", as PostgreSQL 17 requires. Packets are read with exact
// lengths, never ahead, so no byte of the client's is left in a buffer
// when the relay starts. The returned hello is never nil: on an error, its
// conn is the one to answer on (TLS once the handshake is done).
func readHello(conn net.Conn, tlsConfig *tls.Config) (*clientHello, error) {
	h := &clientHello{conn: conn}
	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return h, err
	}
	next := io.MultiReader(bytes.NewReader(first[:]), conn) // the first packet, with its first byte
	if first[0] == tlsRecordHandshake {
		if err := h.directTLS(first[0], tlsConfig); err != nil {
			return h, err
		}
		next = h.conn
	}
	triedSSL, triedGSS := false, false
	for {
		body, err := readStartupPacket(next)
		if err != nil {
			return h, err
		}
		next = h.conn
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == codeSSLRequest && !triedSSL && !h.tls:
			triedSSL = true
			if tlsConfig == nil {
				if _, err := h.conn.Write([]byte{'N'}); err != nil {
					return h, err
				}
				continue
			}
			if _, err := h.conn.Write([]byte{'S'}); err != nil {
				return h, err
			}
			tc := tls.Server(h.conn, tlsConfig)
			if err := tc.Handshake(); err != nil {
				return h, fmt.Errorf("client TLS handshake: %w", err)
			}
			h.conn, h.tls = tc, true
			next = tc
		case code == codeGSSENCRequest && !triedGSS && !h.tls:
			triedGSS = true
			if _, err := h.conn.Write([]byte{'N'}); err != nil {
				return h, err
			}
		case code == codeCancelRequest:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return h, err
			}
			h.cancel = &req
			return h, nil
		case code>>16 == 3:
			if code != pgproto3.ProtocolVersion30 && code != pgproto3.ProtocolVersion32 {
				// A 3.x newer than we know: decode it as 3.2 and
				// negotiate down, as PostgreSQL does.
				binary.BigEndian.PutUint32(body, pgproto3.ProtocolVersion32)
			}
			var msg pgproto3.StartupMessage
			if err := msg.Decode(body); err != nil {
				return h, err
			}
			msg.ProtocolVersion = code
			h.startup = &msg
			return h, nil
		default:
			return h, &clientError{code: "08P01", msg: fmt.Sprintf("unsupported frontend protocol or request code %d", code)}
		}
	}
}

// directTLS completes the TLS handshake a client started at once, whose
// first byte was read. Without a TLS config the client is refused; a
// client that did not ask for ALPN "postgresql" is refused after the
// handshake, with an error it can read, as PostgreSQL 17 refuses it.
func (h *clientHello) directTLS(first byte, tlsConfig *tls.Config) error {
	if tlsConfig == nil {
		return errNoDirectTLS
	}
	tc := tls.Server(&prefixConn{Conn: h.conn, prefix: []byte{first}}, tlsConfig)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("client TLS handshake (direct TLS): %w", err)
	}
	h.conn, h.tls = tc, true
	if tc.ConnectionState().NegotiatedProtocol != alpnPostgreSQL {
		return &clientError{code: "08P01", msg: "received direct SSL connection request without ALPN protocol negotiation extension",
			hint: `A client opening with TLS directly (sslnegotiation=direct) must ask for ALPN "postgresql".`}
	}
	return nil
}

// prefixConn is a connection whose first bytes were already read: Read
// returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// readStartupPacket reads one length-prefixed startup packet and returns
// its body (from the code on).
func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:]))) - 4
	if n < 4 || n > maxStartupLen {
		return nil, &clientError{code: "08P01", msg: fmt.Sprintf("invalid length of startup packet: %d", n+4)}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("reading the startup packet: %w", err)
	}
	return body, nil
}

// negotiation returns the NegotiateProtocolVersion message a client needs
// (nil if none) and the startup parameters it sent that go upstream.
// The proxy speaks protocol 3.0 to clients: newer minor versions and
// protocol options ("_pq_." parameters) are declined, as PostgreSQL does.
func negotiation(msg *pgproto3.StartupMessage) (*pgproto3.NegotiateProtocolVersion, map[string]string) {
	params := make(map[string]string, len(msg.Parameters))
	var unknown []string
	for k, v := range msg.Parameters {
		if strings.HasPrefix(k, "_pq_.") {
			unknown = append(unknown, k)
			continue
		}
		params[k] = v
	}
	if msg.ProtocolVersion == pgproto3.ProtocolVersion30 && len(unknown) == 0 {
		return nil, params
	}
	// The field carries the whole version, 3.0, as PostgreSQL sends it
	// (PG_PROTOCOL(3, 0)); libpq 18 reads a bare minor 0 as a downgrade
	// to protocol 0.0 and refuses it.
	return &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: pgproto3.ProtocolVersion30, UnrecognizedOptions: unknown}, params
}

// checkPassword asks the client for its password in cleartext and compares
// it with want in constant time (LocalAuthPassword). The client's
// connection is the proxy's own (loopback, a unix socket, or TLS), not the
// network to the server.
func checkPassword(conn net.Conn, w *bufio.Writer, user, want string) error {
	msg, err := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return fmt.Errorf("reading the password: %w", err)
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[1:]))) - 4
	if hdr[0] != 'p' || n < 1 || n > maxPasswordLen {
		return &clientError{code: "08P01", msg: "expected a password message"}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return fmt.Errorf("reading the password: %w", err)
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body); err != nil {
		return &clientError{code: "08P01", msg: "malformed password message"}
	}
	got, exp := sha256.Sum256([]byte(pm.Password)), sha256.Sum256([]byte(want))
	if subtle.ConstantTimeCompare(got[:], exp[:]) != 1 {
		return passwordFailed(user)
	}
	return nil
}

// clientError is a failure the client is told about in an ErrorResponse.
type clientError struct {
	code   string // SQLSTATE
	msg    string
	detail string
	hint   string
}

func (e *clientError) Error() string { return e.msg }

// errorResponse encodes err as a FATAL ErrorResponse onto buf. A
// *pgconn.PgError from the upstream keeps its fields; anything else gets
// SQLSTATE 08006 unless it is a clientError.
func errorResponse(buf []byte, err error) []byte {
	er := &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006", Message: oneLine(err.Error())}
	var ce *clientError
	var ue *upstreamError
	switch {
	case errors.As(err, &ce):
		er.Code, er.Message, er.Detail, er.Hint = ce.code, ce.msg, ce.detail, ce.hint
	case errors.As(err, &ue):
		er = ue.response()
	}
	out, encErr := er.Encode(buf)
	if encErr != nil {
		return buf
	}
	return out
}

// oneLine joins a multi-line message (azidentity's have troubleshooting
// links on lines of their own) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
