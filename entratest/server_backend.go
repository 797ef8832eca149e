package entratest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// maxRoleNameLen is PostgreSQL's NAMEDATALEN-1: a longer name would be
// truncated by CREATE ROLE and never match a startup message.
const maxRoleNameLen = 63

// cancelTimeout bounds forwarding one cancel request to the backend.
const cancelTimeout = 10 * time.Second

// AddRole registers role for the Entra principal whose object ID is
// objectID, as pgaadauth_create_principal does on Azure: a client logging
// in as role must present a token whose oid claim is objectID. It creates
// the role in the backend (LOGIN, with a random password only the kit
// knows), or, if it exists, gives it LOGIN and that password. Registering
// a role again replaces its object ID.
//
// The role gets no other privileges; grant them over
// [Server.AdminConnString].
func (s *Server) AddRole(ctx context.Context, role, objectID string) error {
	switch {
	case role == "":
		return errors.New("entratest: AddRole: empty role name")
	case len(role) > maxRoleNameLen:
		return fmt.Errorf("entratest: AddRole: role name %q is longer than %d bytes", role, maxRoleNameLen)
	case objectID == "":
		return fmt.Errorf("entratest: AddRole: empty object ID for role %q", role)
	case role == s.backendCfg.User:
		return fmt.Errorf("entratest: AddRole: %q is the backend's admin role; changing its password would lock the kit out", role)
	}
	var secret [24]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return fmt.Errorf("entratest: AddRole: %w", err)
	}
	password := hex.EncodeToString(secret[:])

	conn, err := s.adminConnect(ctx)
	if err != nil {
		return fmt.Errorf("entratest: AddRole %q: %w", role, err)
	}
	defer conn.Close(context.Background())
	ident := pgx.Identifier{role}.Sanitize()
	// The password is hex, so it needs no quoting beyond the quotes.
	_, err = conn.Exec(ctx, "CREATE ROLE "+ident+" LOGIN PASSWORD '"+password+"'")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // duplicate_object
		_, err = conn.Exec(ctx, "ALTER ROLE "+ident+" WITH LOGIN PASSWORD '"+password+"'")
	}
	if err != nil {
		return fmt.Errorf("entratest: AddRole %q: %w", role, err)
	}
	s.mu.Lock()
	s.roles[role] = registeredRole{objectID: objectID, password: password}
	s.mu.Unlock()
	s.logf("entratest: role %q registered for object ID %s", role, objectID)
	return nil
}

// role returns the registered role named name.
func (s *Server) role(name string) (registeredRole, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.roles[name]
	return r, ok
}

// adminConnect connects to the backend as its admin.
func (s *Server) adminConnect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.backendDSN)
	if err != nil {
		return nil, errors.New("backend connection string does not parse")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the backend as its admin: %w", err)
	}
	return conn, nil
}

// checkBackend checks that the backend's admin may create roles.
func (s *Server) checkBackend(ctx context.Context) error {
	conn, err := s.adminConnect(ctx)
	if err != nil {
		return fmt.Errorf("entratest: %w", err)
	}
	defer conn.Close(context.Background())
	var ok bool
	err = conn.QueryRow(ctx, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").Scan(&ok)
	if err != nil {
		return fmt.Errorf("entratest: checking the backend admin's rights: %w", err)
	}
	if !ok {
		return errors.New("entratest: the backend's user may not create roles (needs SUPERUSER or CREATEROLE)")
	}
	return nil
}

// sessionKey is a backend's BackendKeyData, which clients get unchanged
// and send back in cancel requests.
type sessionKey struct {
	pid    uint32
	secret string
}

// backendSession is a logged-in backend connection.
type backendSession struct {
	conn     net.Conn // to read and write: raw, or TLS over raw
	raw      net.Conn // the socket
	params   map[string]string
	key      sessionKey
	txStatus byte

	// Where and how to send a cancel request.
	cancelNetwork, cancelAddress string
	cancelTLS                    *tls.Config

	s         *Server
	closeOnce sync.Once
}

// openSession logs in to the backend as user with the kit's password for
// it, passing on the client's database and other startup parameters.
func (s *Server) openSession(ctx context.Context, user, password string, params map[string]string) (*backendSession, error) {
	cfg := s.backendCfg.Copy()
	cfg.User = user
	cfg.Password = password
	cfg.Database = params["database"] // empty: the backend's default, the user name
	cfg.RuntimeParams = make(map[string]string, len(params))
	for k, v := range params {
		if k != "database" {
			cfg.RuntimeParams[k] = v
		}
	}
	// The client was answered as 3.0: so must the backend be (a 3.2
	// BackendKeyData has a longer key).
	cfg.MinProtocolVersion, cfg.MaxProtocolVersion = "3.0", "3.0"
	cfg.OAuthTokenProvider = nil
	cfg.ValidateConnect = nil
	cfg.AfterConnect = nil
	cfg.OnNotice = nil
	cfg.OnNotification = nil
	cfg.OnPgError = nil

	// Track every socket the dial makes, so Close interrupts a login in
	// progress.
	var dialedMu sync.Mutex
	var dialed []net.Conn
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if !s.track(c) {
			_ = c.Close()
			return nil, net.ErrClosed
		}
		dialedMu.Lock()
		dialed = append(dialed, c)
		dialedMu.Unlock()
		return c, nil
	}
	untrackOthers := func(keep net.Conn) {
		dialedMu.Lock()
		defer dialedMu.Unlock()
		for _, c := range dialed {
			if c != keep {
				s.untrack(c)
			}
		}
	}

	pgConn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		untrackOthers(nil)
		return nil, err
	}
	if err := pgConn.SyncConn(ctx); err != nil {
		_ = pgConn.Close(context.Background())
		untrackOthers(nil)
		return nil, err
	}
	hc, err := pgConn.Hijack()
	if err != nil {
		_ = pgConn.Close(context.Background())
		untrackOthers(nil)
		return nil, err
	}
	raw := hc.Conn
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	untrackOthers(raw)

	b := &backendSession{
		conn:     hc.Conn,
		raw:      raw,
		params:   hc.ParameterStatuses,
		key:      sessionKey{pid: hc.PID, secret: string(hc.SecretKey)},
		txStatus: hc.TxStatus,
		s:        s,
	}
	if b.txStatus == 0 {
		b.txStatus = 'I'
	}
	if addr := raw.RemoteAddr(); addr != nil && addr.Network() != "unix" {
		b.cancelNetwork, b.cancelAddress = addr.Network(), addr.String()
	} else {
		// A unix socket's peer name is relative; dial the configured one.
		b.cancelNetwork, b.cancelAddress = pgconn.NetworkAddress(hc.Config.Host, hc.Config.Port)
	}
	if hc.TLSConfig != nil {
		b.cancelTLS = hc.TLSConfig.Clone()
	}
	return b, nil
}

// paramNames returns the names of the backend's parameters, sorted.
func (b *backendSession) paramNames() []string {
	names := make([]string, 0, len(b.params))
	for k := range b.params {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// close closes the backend socket and forgets it.
func (b *backendSession) close() {
	b.closeOnce.Do(func() { b.s.untrack(b.raw) })
}

// relay copies bytes both ways between the client and the backend until
// either side closes or the server does. clientConn is what to read and
// write (TLS); the caller closes the client's socket afterwards.
func (s *Server) relay(client net.Conn, clientRaw net.Conn, b *backendSession) {
	s.mu.Lock()
	s.sessions[b.key] = b
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.sessions[b.key] == b {
			delete(s.sessions, b.key)
		}
		s.mu.Unlock()
	}()

	done := make(chan struct{})
	if !s.goTracked(nil, func() {
		defer close(done)
		_, _ = io.Copy(b.conn, client)
		_ = b.raw.Close()
		_ = clientRaw.Close()
	}) {
		return
	}
	_, _ = io.Copy(client, b.conn)
	_ = b.raw.Close()
	_ = clientRaw.Close()
	<-done
}

// forwardCancel passes a client's cancel request to the backend of the
// session it names.
func (s *Server) forwardCancel(req *pgproto3.CancelRequest) {
	key := sessionKey{pid: req.ProcessID, secret: string(req.SecretKey)}
	s.mu.Lock()
	b := s.sessions[key]
	s.mu.Unlock()
	if b == nil {
		s.logf("entratest: cancel request for no live session (pid %d)", req.ProcessID)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, cancelTimeout)
	defer cancel()
	if err := b.sendCancel(ctx); err != nil {
		s.logf("entratest: forwarding cancel request for backend pid %d: %v", key.pid, err)
		return
	}
	s.mu.Lock()
	s.stats.cancels++
	s.mu.Unlock()
	s.logf("entratest: cancel request forwarded to backend pid %d", key.pid)
}

// sendCancel sends the backend a cancel request for this session, over
// TLS if the session uses TLS, and waits for the backend to hang up.
func (b *backendSession) sendCancel(ctx context.Context) error {
	var d net.Dialer
	raw, err := d.DialContext(ctx, b.cancelNetwork, b.cancelAddress)
	if err != nil {
		return err
	}
	if !b.s.track(raw) {
		_ = raw.Close()
		return net.ErrClosed
	}
	defer b.s.untrack(raw)
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)

	conn := raw
	if b.cancelTLS != nil {
		var req [8]byte
		binary.BigEndian.PutUint32(req[0:4], 8)
		binary.BigEndian.PutUint32(req[4:8], codeSSLRequest)
		if _, err := raw.Write(req[:]); err != nil {
			return err
		}
		var answer [1]byte
		if _, err := io.ReadFull(raw, answer[:]); err != nil {
			return err
		}
		if answer[0] != 'S' {
			return errors.New("backend refused TLS for the cancel request")
		}
		tc := tls.Client(raw, b.cancelTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	msg, err := (&pgproto3.CancelRequest{ProcessID: b.key.pid, SecretKey: []byte(b.key.secret)}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, conn) // the backend closes when done
	return nil
}

// backendErrorResponse turns a failure to open the backend session into
// what the client gets: the backend's own error when it sent one.
func backendErrorResponse(err error) *pgproto3.ErrorResponse {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &pgproto3.ErrorResponse{
			Severity:            "FATAL",
			SeverityUnlocalized: "FATAL",
			Code:                pgErr.Code,
			Message:             pgErr.Message,
			Detail:              pgErr.Detail,
			Hint:                pgErr.Hint,
		}
	}
	return errorResponse(sqlstateConnectionFailure, "entratest: could not open the backend session", err.Error())
}
