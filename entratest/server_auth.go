package entratest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Codes of the untyped packets a client may send first.
const (
	codeCancelRequest  = 80877102
	codeSSLRequest     = 80877103
	codeGSSENCRequest  = 80877104
	protocolVersion30  = 3 << 16
	maxStartupPacket   = 10_000  // PostgreSQL's MAX_STARTUP_PACKET_LENGTH
	maxAuthMessageBody = 1 << 16 // a password or SASL message; Entra tokens are a few KB
)

// The messages a rejected client gets. The token-related ones are Azure
// Database for PostgreSQL's own wording, so tests see what production
// shows.
const (
	msgSSLRequired      = "SSL connection is required. Please specify SSL options and retry."
	msgTokenExpired     = "The access token has expired. Please acquire a new token and retry."
	msgTokenAudienceFmt = "The access token does not have a valid audience claim. Please acquire a new token for the resource %q."
	msgTokenInvalid     = "An error occurred while validating the access token. Please acquire a new token and retry."
	msgPasswordFailed   = "password authentication failed for user %q"
	msgOAuthFailed      = "OAuth bearer authentication failed for user %q" // PostgreSQL 18's
)

// SQLSTATEs the server sends.
const (
	sqlstateInvalidPassword      = "28P01"
	sqlstateInvalidAuthorization = "28000"
	sqlstateProtocolViolation    = "08P01"
	sqlstateFeatureNotSupported  = "0A000"
	sqlstateConnectionFailure    = "08006"
)

// rejection is a refused login: what the client is told and what is
// counted.
type rejection struct {
	reason  RejectReason
	code    string
	message string
	detail  string
	// sasl: in ModeOAuthBearer, fail the SASL exchange first (RFC 7628
	// error status), as PostgreSQL 18 does for a bad token.
	sasl bool
}

// clientConn is one client connection during startup and authentication.
type clientConn struct {
	s      *Server
	raw    net.Conn // the TCP connection
	conn   net.Conn // raw, or TLS over raw
	tls    bool
	user   string
	params map[string]string // startup parameters but user and _pq_.*
}

// serveConn serves one client connection to its end.
func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	_ = raw.SetDeadline(time.Now().Add(s.authTimeout))
	c := &clientConn{s: s, raw: raw, conn: raw}
	if err := c.serve(); err != nil && s.ctx.Err() == nil {
		s.logf("entratest: connection from %s: %v", raw.RemoteAddr(), err)
	}
}

func (c *clientConn) serve() error {
	started, err := c.startup()
	if err != nil || !started {
		return err
	}
	token, rej, err := c.readToken()
	if rej == nil && err != nil {
		return err
	}
	if rej == nil {
		var role registeredRole
		role, rej = c.check(token)
		if rej == nil {
			return c.login(token, role)
		}
	}
	c.reject(rej, token)
	return err
}

// startup handles the packets before the StartupMessage (SSLRequest,
// GSSENCRequest, direct TLS) and the StartupMessage itself. It returns
// false when the connection was a cancel request or was refused.
func (c *clientConn) startup() (bool, error) {
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
			return false, ignoreEOF(err)
		}
		if hdr[0] == 0x16 && !c.tls {
			// A TLS record (handshake) where a length should be: direct
			// TLS negotiation (sslnegotiation=direct).
			if err := c.startTLS(&prefixedConn{Conn: c.raw, prefix: hdr[:]}, true); err != nil {
				return false, err
			}
			continue
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n < 8 || n > maxStartupPacket {
			return false, c.fail(RejectProtocol, sqlstateProtocolViolation, fmt.Sprintf("invalid length of startup packet: %d", n), "")
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(c.conn, body); err != nil {
			return false, fmt.Errorf("reading startup packet: %w", err)
		}
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == codeSSLRequest && n == 8:
			if c.tls {
				return false, c.fail(RejectProtocol, sqlstateProtocolViolation, "SSLRequest over TLS", "")
			}
			if _, err := c.raw.Write([]byte{'S'}); err != nil {
				return false, err
			}
			if err := c.startTLS(c.raw, false); err != nil {
				return false, err
			}
		case code == codeGSSENCRequest && n == 8:
			// No GSSAPI encryption here: the client goes on in the clear
			// or asks for TLS.
			if _, err := c.conn.Write([]byte{'N'}); err != nil {
				return false, err
			}
		case code == codeCancelRequest:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return false, fmt.Errorf("cancel request: %w", err)
			}
			c.s.forwardCancel(&req)
			return false, nil
		case code>>16 == 3:
			return true, c.parseStartup(code, body[4:])
		default:
			return false, c.fail(RejectProtocol, sqlstateFeatureNotSupported,
				fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", code>>16, code&0xffff), "")
		}
	}
}

// startTLS runs the server side of a TLS handshake over conn. direct is
// for direct TLS negotiation, which requires ALPN "postgresql".
func (c *clientConn) startTLS(conn net.Conn, direct bool) error {
	tc := tls.Server(conn, c.s.tlsConfig)
	if err := tc.HandshakeContext(c.s.ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	if direct && tc.ConnectionState().NegotiatedProtocol != alpnPostgreSQL {
		_ = tc.Close()
		return errors.New("direct TLS connection without ALPN protocol \"postgresql\"")
	}
	c.conn, c.tls = tc, true
	return nil
}

// parseStartup reads a StartupMessage's parameters and answers a client
// asking for a newer minor protocol version or for protocol extensions
// (_pq_.*) with NegotiateProtocolVersion: the server speaks 3.0, since
// sessions are relayed to the backend as 3.0.
func (c *clientConn) parseStartup(version uint32, rest []byte) error {
	c.params = make(map[string]string)
	var unrecognized []string
	for {
		key, after, ok := bytes.Cut(rest, []byte{0})
		if !ok {
			return c.fail(RejectProtocol, sqlstateProtocolViolation, "invalid startup packet layout: expected terminator as last byte", "")
		}
		if len(key) == 0 {
			if len(after) != 0 {
				return c.fail(RejectProtocol, sqlstateProtocolViolation, "invalid startup packet layout: expected terminator as last byte", "")
			}
			break
		}
		value, after2, ok := bytes.Cut(after, []byte{0})
		if !ok {
			return c.fail(RejectProtocol, sqlstateProtocolViolation, "invalid startup packet layout: expected terminator as last byte", "")
		}
		rest = after2
		k, v := string(key), string(value)
		switch {
		case strings.HasPrefix(k, "_pq_."):
			unrecognized = append(unrecognized, k)
		case k == "user":
			c.user = v
		default:
			c.params[k] = v
		}
	}
	if version != protocolVersion30 || len(unrecognized) > 0 {
		if err := c.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unrecognized}); err != nil {
			return err
		}
	}
	if c.user == "" {
		return c.fail(RejectProtocol, sqlstateInvalidAuthorization, "no PostgreSQL user name specified in startup packet", "")
	}
	return nil
}

// readToken asks for the token (a cleartext password, or SASL
// OAUTHBEARER) and reads it. Without TLS it still asks, to catch and count
// a client that would send its token in the clear, then refuses.
func (c *clientConn) readToken() (token string, rej *rejection, err error) {
	if c.s.cfg.Mode == ModeOAuthBearer {
		return c.readOAuthBearer()
	}
	if err := c.send(&pgproto3.AuthenticationCleartextPassword{}); err != nil {
		return "", nil, err
	}
	body, err := c.readAuthMessage()
	if err != nil {
		return "", c.noTLS(), err
	}
	var msg pgproto3.PasswordMessage
	if err := msg.Decode(body); err != nil {
		return "", &rejection{reason: RejectProtocol, code: sqlstateProtocolViolation, message: "invalid password packet"}, nil
	}
	if !c.tls {
		if msg.Password != "" {
			c.s.countPlaintext()
		}
		return msg.Password, c.noTLS(), nil
	}
	return msg.Password, nil, nil
}

// readOAuthBearer runs the first half of a SASL OAUTHBEARER exchange.
func (c *clientConn) readOAuthBearer() (token string, rej *rejection, err error) {
	if err := c.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"OAUTHBEARER"}}); err != nil {
		return "", nil, err
	}
	body, err := c.readAuthMessage()
	if err != nil {
		return "", c.noTLS(), err
	}
	var msg pgproto3.SASLInitialResponse
	if err := msg.Decode(body); err != nil {
		return "", &rejection{reason: RejectProtocol, code: sqlstateProtocolViolation, message: "malformed SASL initial response"}, nil
	}
	if !c.tls {
		if tok, err := parseOAuthBearer(msg.Data); err != nil || tok != "" {
			c.s.countPlaintext()
			return tok, c.noTLS(), nil
		}
		return "", c.noTLS(), nil
	}
	if msg.AuthMechanism != "OAUTHBEARER" {
		return "", &rejection{reason: RejectProtocol, code: sqlstateProtocolViolation, message: "client selected an invalid SASL authentication mechanism"}, nil
	}
	token, err = parseOAuthBearer(msg.Data)
	if err != nil {
		return "", &rejection{reason: RejectProtocol, code: sqlstateProtocolViolation, message: "malformed OAUTHBEARER message", detail: err.Error()}, nil
	}
	if token == "" {
		// Discovery: the client asks what to get a token for. PostgreSQL
		// answers with the error status and its scope; so does this.
		return "", &rejection{
			reason: RejectMalformed, code: sqlstateInvalidAuthorization, sasl: true,
			message: fmt.Sprintf(msgOAuthFailed, c.user),
			detail:  "entratest: the client sent no bearer token",
		}, nil
	}
	return token, nil, nil
}

// parseOAuthBearer returns the bearer token of an RFC 7628 client initial
// response: a GS2 header ("n,," or "y,,"), then key=value pairs each ended
// by \x01, then a final \x01. It returns "" without error when the auth
// value is empty (discovery).
func parseOAuthBearer(data []byte) (string, error) {
	msg := string(data)
	flag, rest, ok := strings.Cut(msg, ",")
	if !ok {
		return "", errors.New("no GS2 header")
	}
	switch {
	case flag == "n" || flag == "y":
	case strings.HasPrefix(flag, "p="):
		return "", errors.New("channel binding is not supported with OAUTHBEARER")
	default:
		return "", errors.New("unexpected channel-binding flag in GS2 header")
	}
	authzid, rest, ok := strings.Cut(rest, ",")
	if !ok {
		return "", errors.New("GS2 header ends early")
	}
	if authzid != "" {
		return "", errors.New("authorization identity (authzid) is not supported")
	}
	if !strings.HasPrefix(rest, "\x01") {
		return "", errors.New("no separator after the GS2 header")
	}
	rest = rest[1:]
	var auth string
	found := false
	for {
		if rest == "\x01" {
			break
		}
		kv, after, ok := strings.Cut(rest, "\x01")
		if !ok || kv == "" {
			return "", errors.New("key/value list is not terminated")
		}
		rest = after
		key, value, ok := strings.Cut(kv, "=")
		if !ok {
			return "", errors.New("key without a value")
		}
		if key == "auth" {
			if found {
				return "", errors.New("more than one auth value")
			}
			auth, found = value, true
		}
	}
	if !found {
		return "", errors.New("no auth value")
	}
	if auth == "" {
		return "", nil
	}
	scheme, token, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", errors.New(`auth value is not "Bearer <token>"`)
	}
	token = strings.TrimLeft(token, " ")
	if token == "" {
		return "", nil
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return "", errors.New("bearer token has whitespace")
	}
	return token, nil
}

// readAuthMessage reads the client's authentication reply ('p').
func (c *clientConn) readAuthMessage() ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("waiting for the client's authentication message: %w", ignoreEOF(err))
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[1:])))
	if n < 4 || n-4 > maxAuthMessageBody {
		return nil, fmt.Errorf("authentication message of length %d", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(c.conn, body); err != nil {
		return nil, fmt.Errorf("reading the client's authentication message: %w", err)
	}
	if hdr[0] != 'p' {
		return nil, fmt.Errorf("expected an authentication message ('p'), got %q", hdr[0])
	}
	return body, nil
}

// noTLS is the rejection of a client that did not use TLS, or nil over
// TLS.
func (c *clientConn) noTLS() *rejection {
	if c.tls {
		return nil
	}
	return &rejection{
		reason:  RejectNoTLS,
		code:    sqlstateInvalidAuthorization,
		message: msgSSLRequired,
		detail:  "entratest: the client connected without TLS; use sslmode=verify-full (or at least require).",
	}
}

// check verifies token and matches it to the role the client asked for.
func (c *clientConn) check(token string) (registeredRole, *rejection) {
	s := c.s
	claims, err := s.cfg.Verifier.Verify(token, s.audience)
	if err != nil {
		return registeredRole{}, c.tokenRejection(classifyTokenError(err), scrubToken(err.Error(), token))
	}
	role, ok := s.role(c.user)
	if !ok {
		return registeredRole{}, c.userRejection(RejectUnknownRole,
			fmt.Sprintf("entratest: no role %q is registered with Server.AddRole (on Azure: pgaadauth_create_principal).", c.user))
	}
	oid, _ := claims["oid"].(string)
	if oid != role.objectID {
		detail := fmt.Sprintf("entratest: the token's oid claim is %q, but role %q is registered for object ID %q.", oid, c.user, role.objectID)
		if oid == "" {
			detail = fmt.Sprintf("entratest: the token has no oid claim; role %q is registered for object ID %q.", c.user, role.objectID)
		}
		return registeredRole{}, c.userRejection(RejectUserMismatch, scrubToken(detail, token))
	}
	return role, nil
}

// classifyTokenError maps a verifier's error to a reason.
func classifyTokenError(err error) RejectReason {
	is := func(targets ...error) bool {
		return slices.ContainsFunc(targets, func(t error) bool { return errors.Is(err, t) })
	}
	switch {
	case is(ErrTokenExpired, jwt.ErrTokenExpired):
		return RejectExpired
	case is(ErrTokenNotYetValid, jwt.ErrTokenNotValidYet, jwt.ErrTokenUsedBeforeIssued):
		return RejectNotYetValid
	case is(ErrWrongAudience, jwt.ErrTokenInvalidAudience):
		return RejectAudience
	case is(ErrWrongIssuer, jwt.ErrTokenInvalidIssuer):
		return RejectIssuer
	case is(ErrBadSignature, jwt.ErrTokenSignatureInvalid, jwt.ErrTokenUnverifiable):
		return RejectSignature
	case is(ErrMalformedToken, jwt.ErrTokenMalformed):
		return RejectMalformed
	default:
		return RejectInvalidToken
	}
}

// tokenRejection is the rejection of a token the verifier refused.
func (c *clientConn) tokenRejection(reason RejectReason, why string) *rejection {
	var azure, detail string
	switch reason {
	case RejectExpired:
		azure, detail = msgTokenExpired, "the token's exp claim has passed"
	case RejectAudience:
		azure, detail = fmt.Sprintf(msgTokenAudienceFmt, c.s.audience), "the token's aud claim is not "+c.s.audience
	case RejectNotYetValid:
		azure, detail = msgTokenInvalid, "the token's nbf or iat claim is in the future"
	case RejectIssuer:
		azure, detail = msgTokenInvalid, "the token was issued by another issuer or for another tenant"
	case RejectSignature:
		azure, detail = msgTokenInvalid, "the token's signature does not verify with the issuer's key"
	case RejectMalformed:
		azure, detail = msgTokenInvalid, "the password is not a well-formed JWT"
	default:
		azure, detail = msgTokenInvalid, "the verifier refused the token"
	}
	return c.credentialRejection(reason, azure, azure, "entratest: "+detail+" ("+why+").")
}

// userRejection is the rejection of a good token for the wrong role.
func (c *clientConn) userRejection(reason RejectReason, detail string) *rejection {
	return c.credentialRejection(reason, fmt.Sprintf(msgPasswordFailed, c.user), "", detail)
}

// credentialRejection words a bad-credential rejection for the mode: Azure's
// message with SQLSTATE 28P01 for a password; PostgreSQL 18's with 28000
// (after the SASL error status) for OAUTHBEARER, where tokenMessage, if
// any, leads the detail.
func (c *clientConn) credentialRejection(reason RejectReason, message, tokenMessage, detail string) *rejection {
	if c.s.cfg.Mode == ModeOAuthBearer {
		if tokenMessage != "" {
			detail = tokenMessage + " " + detail
		}
		return &rejection{reason: reason, code: sqlstateInvalidAuthorization, sasl: true,
			message: fmt.Sprintf(msgOAuthFailed, c.user), detail: detail}
	}
	return &rejection{reason: reason, code: sqlstateInvalidPassword, message: message, detail: detail}
}

// reject counts and logs rej and tells the client.
func (c *clientConn) reject(rej *rejection, token string) {
	s := c.s
	s.countRejected(rej.reason)
	s.logf("entratest: rejected login of %q from %s (%s): %s (DETAIL: %s)", c.user, c.raw.RemoteAddr(), rej.reason,
		scrubToken(rej.message, token), scrubToken(rej.detail, token))
	if rej.sasl {
		// RFC 7628 3.2.2: the server fails the exchange with an error
		// status, the client answers with a lone \x01, then the server
		// fails the authentication.
		status, _ := json.Marshal(struct {
			Status string `json:"status"`
			Scope  string `json:"scope"`
		}{"invalid_token", s.audience + defaultSuffix})
		if err := c.send(&pgproto3.AuthenticationSASLContinue{Data: status}); err != nil {
			return
		}
		if _, err := c.readAuthMessage(); err != nil {
			// pgx closes the connection here instead of answering.
			return
		}
	}
	_ = c.send(errorResponse(rej.code, rej.message, rej.detail))
}

// fail refuses a client that broke the protocol.
func (c *clientConn) fail(reason RejectReason, code, message, detail string) error {
	c.reject(&rejection{reason: reason, code: code, message: message, detail: detail}, "")
	return fmt.Errorf("refused: %s", message)
}

func errorResponse(code, message, detail string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             message,
		Detail:              detail,
	}
}

// send writes msgs to the client in one write.
func (c *clientConn) send(msgs ...pgproto3.BackendMessage) error {
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	_, err := c.conn.Write(buf)
	return err
}

// login opens the backend session as role and relays the client to it.
func (c *clientConn) login(token string, role registeredRole) error {
	s := c.s
	ctx, cancel := context.WithTimeout(s.ctx, s.authTimeout)
	backend, err := s.openSession(ctx, c.user, role.password, c.params)
	cancel()
	if err != nil {
		// As in PostgreSQL, a session that fails after authentication
		// (say, no such database) gets AuthenticationOk, then the error.
		s.countRejected(RejectBackend)
		s.logf("entratest: backend session for %q failed: %v", c.user, err)
		_ = c.send(&pgproto3.AuthenticationOk{}, backendErrorResponse(err))
		return nil
	}
	defer backend.close()
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	for _, name := range backend.paramNames() {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: name, Value: backend.params[name]})
	}
	msgs = append(msgs,
		&pgproto3.BackendKeyData{ProcessID: backend.key.pid, SecretKey: []byte(backend.key.secret)},
		&pgproto3.ReadyForQuery{TxStatus: backend.txStatus})
	if err := c.send(msgs...); err != nil {
		return err
	}
	s.countAccepted(token)
	s.logf("entratest: accepted login of %q from %s (backend pid %d)", c.user, c.raw.RemoteAddr(), backend.key.pid)
	_ = c.raw.SetDeadline(time.Time{})
	s.relay(c.conn, c.raw, backend)
	return nil
}

// scrubToken removes token, and each of its dot-separated parts, from s.
func scrubToken(s, token string) string {
	if token == "" || s == "" {
		return s
	}
	s = strings.ReplaceAll(s, token, "[token]")
	for part := range strings.SplitSeq(token, ".") {
		if len(part) >= 8 {
			s = strings.ReplaceAll(s, part, "[token part]")
		}
	}
	return s
}

// ignoreEOF turns a client hanging up cleanly into no error.
func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// prefixedConn is a net.Conn whose first reads return prefix.
type prefixedConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixedConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
