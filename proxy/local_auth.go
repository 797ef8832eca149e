package proxy

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// The methods a client proves it knows Config.LocalPassword with, the
// values of Config.LocalAuth.
const (
	// LocalAuthSCRAM asks clients for SCRAM-SHA-256, as PostgreSQL's
	// scram-sha-256 method does: the password never crosses the client's
	// connection, and a client over TLS that can do channel binding gets
	// SCRAM-SHA-256-PLUS. The default.
	LocalAuthSCRAM = "scram-sha-256"
	// LocalAuthPassword asks clients for the password in cleartext, as
	// PostgreSQL's password method does, for clients that cannot do
	// SCRAM. Use it with TLS to clients (Config.TLSConfig).
	LocalAuthPassword = "password"
)

// scramIterations is the PBKDF2 iteration count of the local SCRAM
// credentials, PostgreSQL's default (scram_iterations).
const scramIterations = 4096

// scramSaltLen is the length of the random salt, PostgreSQL's.
const scramSaltLen = 16

// maxSASLLen bounds a SASL message, as PostgreSQL bounds an
// authentication token (PG_MAX_AUTH_TOKEN_LENGTH).
const maxSASLLen = 65535

// SASL mechanisms offered to clients.
const (
	mechSCRAM     = "SCRAM-SHA-256"
	mechSCRAMPlus = "SCRAM-SHA-256-PLUS"
)

// cleartextHint tells a client that cannot do SCRAM what to do.
const cleartextHint = "pgentra proxy asks for the local password with SCRAM-SHA-256; " +
	"for a client that can only send its password in cleartext, run the proxy with --local-auth password."

// localAuth checks the local password of each client.
type localAuth struct {
	method   string
	password string        // LocalAuthPassword only
	scram    *scram.Server // LocalAuthSCRAM only
	// binding is the tls-server-end-point channel binding of the
	// proxy's certificate; unset when it cannot be known in advance (no
	// TLS, several certificates, GetCertificate), and then no
	// SCRAM-SHA-256-PLUS is offered.
	binding scram.ChannelBinding
}

// newLocalAuth prepares the check of password with method. For SCRAM it
// derives the stored credentials once, with a random salt, and keeps
// those, not the password.
func newLocalAuth(password, method string, tlsConfig *tls.Config) (*localAuth, error) {
	if method == LocalAuthPassword {
		return &localAuth{method: method, password: password}, nil
	}
	// SASLprep the password as PostgreSQL does, and use it as it is
	// when it cannot be prepared (pg_saslprep's fallback; libpq does the
	// same on its side).
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		if client, err = scram.SHA256.NewClientUnprepped("", password, ""); err != nil {
			return nil, errors.New("proxy: Config.LocalPassword cannot be used for SCRAM")
		}
	}
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
	if err != nil {
		return nil, fmt.Errorf("proxy: deriving the local SCRAM credentials: %w", err)
	}
	// Every client gets the same credentials: as PostgreSQL does, the
	// user name in the SCRAM messages is ignored (libpq sends none).
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return nil, err
	}
	return &localAuth{method: method, scram: srv, binding: serverEndPoint(tlsConfig)}, nil
}

// serverEndPoint returns the tls-server-end-point channel binding (RFC
// 5929) of the one certificate tlsConfig serves, or none.
func serverEndPoint(tlsConfig *tls.Config) scram.ChannelBinding {
	if tlsConfig == nil || len(tlsConfig.Certificates) != 1 || tlsConfig.GetCertificate != nil || tlsConfig.GetConfigForClient != nil {
		return scram.ChannelBinding{}
	}
	cert := tlsConfig.Certificates[0]
	leaf := cert.Leaf
	if leaf == nil && len(cert.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	if leaf == nil {
		return scram.ChannelBinding{}
	}
	// The library computes the binding from the certificate a client
	// sees: the proxy's own, which it will serve on every connection.
	cb, err := scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
	if err != nil {
		return scram.ChannelBinding{} // e.g. Ed25519: no binding is defined
	}
	return cb
}

// authenticate checks the client's local password on conn, writing to it
// through w. On success with SCRAM, AuthenticationSASLFinal is left in w,
// to go with the AuthenticationOk the session sends.
func (a *localAuth) authenticate(conn net.Conn, w *bufio.Writer, user string) error {
	if a.method == LocalAuthPassword {
		return checkPassword(conn, w, user, a.password)
	}
	return a.checkSCRAM(conn, w, user)
}

// checkSCRAM runs a SCRAM-SHA-256 exchange with the client, as PostgreSQL
// does: AuthenticationSASL, SASLInitialResponse, AuthenticationSASLContinue,
// SASLResponse, AuthenticationSASLFinal. A wrong password is 28P01; a
// malformed exchange 08P01. The proof is checked in constant time by the
// library.
func (a *localAuth) checkSCRAM(conn net.Conn, w *bufio.Writer, user string) error {
	_, isTLS := conn.(*tls.Conn)
	plus := isTLS && a.binding.IsSupported()
	mechs := []string{mechSCRAM}
	if plus {
		mechs = []string{mechSCRAMPlus, mechSCRAM}
	}
	if err := send(w, &pgproto3.AuthenticationSASL{AuthMechanisms: mechs}); err != nil {
		return err
	}
	body, err := readAuthMessage(conn, "SASL response")
	if err != nil {
		return err
	}
	var first pgproto3.SASLInitialResponse
	if err := first.Decode(body); err != nil {
		return &clientError{code: "08P01", msg: "expected a SASL response for SCRAM-SHA-256", hint: cleartextHint}
	}
	var conv *scram.ServerConversation
	switch {
	case first.AuthMechanism == mechSCRAM:
		conv = a.scram.NewConversation()
		if plus {
			conv = a.scram.NewConversationWithChannelBinding(a.binding)
		}
	case first.AuthMechanism == mechSCRAMPlus && plus:
		conv = a.scram.NewConversationWithChannelBinding(a.binding)
	default:
		return &clientError{code: "08P01", msg: "client selected an invalid SASL authentication mechanism", hint: cleartextHint}
	}
	// The GS2 flag must agree with the mechanism, as PostgreSQL checks.
	bound := len(first.Data) > 0 && first.Data[0] == 'p'
	if bound != (first.AuthMechanism == mechSCRAMPlus) {
		detail := "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data."
		if !bound {
			detail = "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data."
		}
		return &clientError{code: "08P01", msg: "malformed SCRAM message", detail: detail}
	}
	serverFirst, err := conv.Step(string(first.Data))
	if err != nil {
		return scramError(serverFirst, user)
	}
	if err := send(w, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return err
	}
	if body, err = readAuthMessage(conn, "SASL response"); err != nil {
		return err
	}
	var final pgproto3.SASLResponse
	if err := final.Decode(body); err != nil {
		return &clientError{code: "08P01", msg: "malformed SCRAM message"}
	}
	serverFinal, err := conv.Step(string(final.Data))
	if err != nil {
		return scramError(serverFinal, user)
	}
	if !conv.Valid() {
		return passwordFailed(user)
	}
	msg, err := (&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}).Encode(nil)
	if err != nil {
		return err
	}
	_, err = w.Write(msg)
	return err
}

// scramError turns a failed SCRAM step (the library's server error, such
// as "e=invalid-proof") into what PostgreSQL tells the client. It says
// nothing of the client's messages.
func scramError(serverErr, user string) error {
	switch serverErr {
	case scram.ErrInvalidProof:
		return passwordFailed(user)
	case scram.ErrChannelBindingsDontMatch:
		return &clientError{code: "08P01", msg: "SCRAM channel binding check failed"}
	case scram.ErrServerDoesSupportChannelBinding:
		return &clientError{code: "08P01", msg: "SCRAM channel binding negotiation error",
			detail: "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding."}
	case scram.ErrChannelBindingNotSupported, scram.ErrUnsupportedChannelBindingType:
		return &clientError{code: "08P01", msg: "malformed SCRAM message", detail: "Unsupported SCRAM channel-binding type."}
	default:
		return &clientError{code: "08P01", msg: "malformed SCRAM message"}
	}
}

// passwordFailed is the error of a wrong local password, PostgreSQL's.
func passwordFailed(user string) error {
	return &clientError{code: "28P01", msg: fmt.Sprintf("password authentication failed for user %q", user),
		detail: "The proxy's local password (--local-password-file) did not match."}
}

// send writes msg to the client and flushes.
func send(w *bufio.Writer, msg pgproto3.BackendMessage) error {
	b, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.Flush()
}

// readAuthMessage reads one authentication message ('p') from the client
// with exact lengths, never ahead: what follows it is the session's. what
// names it in errors.
func readAuthMessage(conn net.Conn, what string) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading the %s: %w", what, err)
	}
	if hdr[0] != 'p' {
		return nil, &clientError{code: "08P01", msg: fmt.Sprintf("expected %s, got message type %d", what, hdr[0])}
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[1:]))) - 4
	if n < 0 || n > maxSASLLen {
		return nil, &clientError{code: "08P01", msg: fmt.Sprintf("invalid %s length", what)}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, fmt.Errorf("reading the %s: %w", what, err)
	}
	return body, nil
}

// setupLocalAuth checks cfg's LocalAuth and prepares the local password's
// check (nil without a password), clearing cfg.LocalPassword.
func setupLocalAuth(cfg *Config, log *slog.Logger) (*localAuth, error) {
	switch cfg.LocalAuth {
	case "":
		cfg.LocalAuth = LocalAuthSCRAM
	case LocalAuthSCRAM, LocalAuthPassword:
	default:
		return nil, fmt.Errorf("proxy: Config.LocalAuth must be %q or %q, not %q", LocalAuthSCRAM, LocalAuthPassword, cfg.LocalAuth)
	}
	if cfg.LocalPassword == "" {
		return nil, nil
	}
	local, err := newLocalAuth(cfg.LocalPassword, cfg.LocalAuth, cfg.TLSConfig)
	if err != nil {
		return nil, err
	}
	cfg.LocalPassword = ""
	if cfg.LocalAuth == LocalAuthPassword && cfg.TLSConfig == nil {
		log.Warn("pgentra proxy: the local password is asked for in cleartext (--local-auth password) and clients get no TLS (--tls-cert): " +
			"anyone who can watch the client's connection can read it")
	}
	return local, nil
}
