package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgentra/entraauth"
)

// Defaults of Config's timeouts.
const (
	DefaultStartupTimeout = 30 * time.Second
	DefaultConnectTimeout = 30 * time.Second
)

// errShuttingDown answers a client asking for a session during Shutdown.
var errShuttingDown = &clientError{code: "57P03", msg: "pgentra proxy is shutting down",
	detail: "Open sessions may finish; no new ones are accepted."}

// MinStartupConnections is the least number of connections allowed in
// startup at once when Config.MaxConnections is set.
const MinStartupConnections = 10

// startupLinger bounds how long a connection refused over the startup
// limit is read from after its error is sent, so that closing it does not
// reset the connection before the client has read the error.
const startupLinger = 250 * time.Millisecond

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Config configures a Server.
type Config struct {
	// Upstream is a pgx connection string for the server sessions go to,
	// such as "host=srv.postgres.database.azure.com sslmode=verify-full".
	// It sets the host, port, TLS settings (sslmode, sslrootcert), timeouts
	// and defaults for the database and runtime parameters; each client's
	// database and startup parameters override those. A user it names is
	// used for every session unless User is set; with none (and no
	// PGUSER), the user is the token's principal. A password in it is
	// ignored: the token replaces it. Required.
	Upstream string
	// TokenSource supplies the tokens; one TokenSource is one token cache
	// for every session. Required.
	TokenSource *entraauth.TokenSource
	// User, if set, is the upstream user of every session, whatever the
	// client asks for, even when it is the OS user's name (which pgx
	// would otherwise fill in by itself). Empty: Upstream's user, else
	// the token's principal.
	User string
	// StrictUser refuses a client whose user name is not the upstream
	// user (User, Upstream's, or the token's principal), with SQLSTATE
	// 28000 and a message naming the upstream user, as a server refuses
	// a role that does not exist. False: the client's user name is
	// ignored, and a one-line notice is logged when it differs.
	StrictUser bool
	// LocalPassword, if set, is a password every client must give before
	// the proxy logs in upstream, so other local users cannot borrow the
	// identity; how is LocalAuth's. New keeps SCRAM credentials derived
	// from it, not the password itself (unless LocalAuth is
	// LocalAuthPassword). Empty: any client that can connect gets a
	// session.
	LocalPassword string
	// LocalAuth is how clients give LocalPassword: LocalAuthSCRAM
	// ("scram-sha-256", the default when empty), where the password never
	// crosses the client's connection (SCRAM-SHA-256, and
	// SCRAM-SHA-256-PLUS with channel binding over TLS when TLSConfig has
	// one certificate), or LocalAuthPassword ("password"): in cleartext,
	// for clients that cannot do SCRAM (very old drivers); a warning is
	// logged when it is used without TLSConfig.
	LocalAuth string
	// TLSConfig, if set, is the server side TLS configuration offered to
	// clients: those that send SSLRequest, and those that open with a TLS
	// handshake at once (PostgreSQL 17's direct TLS, sslnegotiation=direct),
	// which must ask for ALPN "postgresql" as PostgreSQL requires. New
	// uses a copy whose NextProtos is "postgresql", so a client asking
	// for another ALPN protocol is refused. Nil: clients are told TLS is
	// not available ('N') and talk to the proxy in plaintext; a direct
	// TLS client is refused (its connection closed).
	TLSConfig *tls.Config
	// MaxConnections limits the open sessions; a client over the limit
	// gets SQLSTATE 53300. It also limits the connections still in
	// startup (before the local password is checked, or before a cancel
	// request is read), to MaxConnections but at least
	// MinStartupConnections, as PostgreSQL limits its children to a
	// multiple of max_connections: a connection over that is answered
	// with 53300 at once and closed, so silent connections cannot pile
	// up. Zero means no limit on either. Cancel requests do not count as
	// sessions.
	MaxConnections int
	// StartupTimeout bounds a client's own part of its startup (TLS, the
	// startup message and the local password), and then again sending it
	// the start of its session or the error. The wait for a token and the
	// upstream login in between is ConnectTimeout's. Default
	// DefaultStartupTimeout.
	StartupTimeout time.Duration
	// ConnectTimeout bounds getting a token and logging in upstream, and
	// each forwarded cancel request. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logger gets one line per session opened and closed, and warnings.
	// Tokens are never logged. Nil: slog.Default().
	Logger *slog.Logger
}

// Server is a PostgreSQL proxy that logs each client in to the upstream
// server with an Entra token and relays the session. Create one with New,
// start it with Serve, stop it with Shutdown or Close.
type Server struct {
	cfg   Config
	base  *pgx.ConnConfig
	local *localAuth // the local password's check; nil without one
	log   *slog.Logger
	keys  cancelKeys

	// ctx ends when sessions are closed by force, ending upstream logins
	// and cancel requests in flight.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{} // every client connection being served
	closed    bool                  // the listeners are closed
	draining  bool                  // Shutdown was called: no new sessions
	slots     int                   // open sessions, for MaxConnections
	starting  int                   // connections in startup, for the startup limit
	wg        sync.WaitGroup
	idle      chan struct{} // closed and replaced when conns becomes empty

	nextID                           atomic.Uint64
	opened, failed                   atomic.Int64
	cancelsForwarded, cancelsIgnored atomic.Int64
	counters
}

// Stats counts a Server's work.
type Stats struct {
	// Open is the number of sessions being relayed now (or logging in
	// upstream).
	Open int
	// Starting is the number of connections in startup: not yet past the
	// local password, or not yet known to be a cancel request.
	Starting int
	// Opened counts sessions that logged in upstream.
	Opened int64
	// Failed counts clients whose startup or upstream login failed,
	// including those over MaxConnections.
	Failed int64
	// CancelsForwarded counts cancel requests sent to the upstream server.
	CancelsForwarded int64
	// CancelsIgnored counts cancel requests whose key matched no session.
	CancelsIgnored int64
	// FailedBy counts Failed by reason; every FailureReason has an entry.
	FailedBy map[FailureReason]int64
	// BytesFromClients and BytesToClients count the bytes relayed from
	// clients to the upstream server and back, as they are relayed (not
	// only when a session ends); the sessions' startup is not counted.
	BytesFromClients, BytesToClients int64
	// LastLogin is when the last successful upstream login (a session's
	// or CheckUpstream's) finished; zero before the first.
	LastLogin time.Time
	// Logins counts the successful upstream logins, a session's or
	// CheckUpstream's, by how long getting the token and logging in took.
	Logins DurationHistogram
	// Token is the TokenSource's Stats: token fetches, failures, expiry.
	Token entraauth.Stats
}

// New checks cfg and returns a Server. Nothing is dialled until a client
// connects.
func New(cfg Config) (*Server, error) {
	if cfg.TokenSource == nil {
		return nil, errors.New("proxy: Config.TokenSource is required")
	}
	if cfg.Upstream == "" {
		return nil, errors.New("proxy: Config.Upstream is required")
	}
	base, err := pgx.ParseConfig(withUser(cfg.Upstream, cfg.User))
	if err != nil {
		return nil, fmt.Errorf("proxy: Config.Upstream: %w", err)
	}
	base.Password = ""
	if cfg.MaxConnections < 0 {
		return nil, errors.New("proxy: Config.MaxConnections must not be negative")
	}
	if cfg.StartupTimeout <= 0 {
		cfg.StartupTimeout = DefaultStartupTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg.TLSConfig = clientTLS(cfg.TLSConfig)
	local, err := setupLocalAuth(&cfg, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg: cfg, base: base, local: local, log: log, ctx: ctx, cancel: cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
		idle:      make(chan struct{}),
	}, nil
}

// Serve accepts client connections on l and serves each in its own
// goroutine until Shutdown or Close, when it returns ErrServerClosed. It
// may be called for several listeners (TCP and a unix socket). l is closed
// when Serve returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var delay time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("pgentra proxy: accept failed; retrying", "error", err.Error(), "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !s.track(conn) {
			conn.Close()
			return ErrServerClosed
		}
		go s.serveConn(conn)
	}
}

// isTemporary reports accept errors worth retrying, such as running out
// of file descriptors.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers a client connection; false once the server is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if len(s.conns) == 0 {
		close(s.idle)
		s.idle = make(chan struct{})
	}
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops new sessions, then waits for open sessions to end on
// their own, or for ctx to end, when it closes those left and returns
// ctx's error. While it waits, the listeners stay open, as PostgreSQL's
// do in a smart shutdown: cancel requests for the open sessions are
// still forwarded, and a client asking for a new session is refused with
// SQLSTATE 57P03. The listeners close when it returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	defer s.closeListeners()
	for {
		s.mu.Lock()
		n, idle := len(s.conns), s.idle
		s.mu.Unlock()
		if n == 0 {
			s.closeListeners()
			s.wg.Wait()
			s.cancel()
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			s.closeListeners()
			s.closeConns()
			s.wg.Wait()
			return ctx.Err()
		}
	}
}

// isDraining reports whether Shutdown was called.
func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Close stops accepting connections and closes every session at once.
func (s *Server) Close() error {
	s.closeListeners()
	s.closeConns()
	s.wg.Wait()
	return nil
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
}

// closeConns closes every client connection; each session then closes its
// upstream connection as its relay ends.
func (s *Server) closeConns() {
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	open, starting := s.slots, s.starting
	s.mu.Unlock()
	st := Stats{
		Open: open, Starting: starting, Opened: s.opened.Load(), Failed: s.failed.Load(),
		CancelsForwarded: s.cancelsForwarded.Load(), CancelsIgnored: s.cancelsIgnored.Load(),
		FailedBy:         make(map[FailureReason]int64, len(failureReasons)),
		BytesFromClients: s.bytesFromClients.Load(), BytesToClients: s.bytesToClients.Load(),
		Logins: s.logins.snapshot(), Token: s.cfg.TokenSource.Stats(),
	}
	for i, r := range failureReasons {
		st.FailedBy[r] = s.failedBy[i].Load()
	}
	if ns := s.lastLogin.Load(); ns != 0 {
		st.LastLogin = time.Unix(0, ns)
	}
	return st
}

// acquire takes a session slot; false when MaxConnections are open.
func (s *Server) acquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.MaxConnections > 0 && s.slots >= s.cfg.MaxConnections {
		return false
	}
	s.slots++
	return true
}

func (s *Server) release() {
	s.mu.Lock()
	s.slots--
	s.mu.Unlock()
}

// startupLimit is the number of connections allowed in startup at once;
// zero means no limit.
func (s *Server) startupLimit() int {
	if s.cfg.MaxConnections == 0 {
		return 0
	}
	return max(s.cfg.MaxConnections, MinStartupConnections)
}

// enterStartup counts a new connection in startup; false when the startup
// limit is reached. The returned func ends the count (once).
func (s *Server) enterStartup() (leave func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit := s.startupLimit(); limit > 0 && s.starting >= limit {
		return nil, false
	}
	s.starting++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.starting--
			s.mu.Unlock()
		})
	}, true
}

// refuseTooMany answers a connection over the startup limit with 53300
// (after its first packet, or at once if none comes within
// startupLinger), as PostgreSQL answers a client over its limit of
// children. A cancel request is still forwarded, as PostgreSQL does: it
// is what a client needs most when the proxy is flooded. After the error
// it reads what the client sent, briefly, so that closing does not reset
// the connection before the client has read the error.
func (s *Server) refuseTooMany(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(startupLinger))
	if body, err := readStartupPacket(c); err == nil && binary.BigEndian.Uint32(body) == codeCancelRequest {
		var req pgproto3.CancelRequest
		if req.Decode(body) == nil {
			_ = c.SetDeadline(time.Time{})
			s.forwardCancel(s.ctx, addrString(c.RemoteAddr()), &req)
			return
		}
	}
	s.failed.Add(1)
	s.countFailure(FailOverLimit)
	_ = c.SetDeadline(time.Now().Add(startupLinger))
	_, _ = c.Write(errorResponse(nil, &clientError{code: "53300", msg: "sorry, too many clients already",
		detail: fmt.Sprintf("pgentra proxy allows %d connections in startup at once (--max-connections).", s.startupLimit())}))
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, maxStartupLen))
	s.log.Warn("pgentra proxy: session refused", "client", addrString(c.RemoteAddr()), "error", "too many connections in startup")
}

// serveConn serves one client connection: a cancel request, or a session.
func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	defer raw.Close()
	leaveStartup, ok := s.enterStartup()
	if !ok {
		s.refuseTooMany(raw)
		return
	}
	defer leaveStartup()
	_ = raw.SetDeadline(time.Now().Add(s.cfg.StartupTimeout))
	hello, err := readHello(raw, s.cfg.TLSConfig)
	if err != nil {
		s.refuse(hello.conn, nil, 0, err)
		if hello.tls {
			hello.conn.Close()
		}
		return
	}
	if hello.cancel == nil && s.isDraining() {
		s.refuse(hello.conn, nil, 0, errShuttingDown)
		if hello.tls {
			hello.conn.Close()
		}
		return
	}
	if hello.cancel != nil {
		leaveStartup()
		_ = raw.SetDeadline(time.Time{})
		s.forwardCancel(s.ctx, addrString(raw.RemoteAddr()), hello.cancel)
		return
	}
	s.serveSession(hello, leaveStartup)
}

// serveSession authenticates the client, logs in upstream, hands the
// client the upstream's session state, and relays until either side ends.
func (s *Server) serveSession(h *clientHello, leaveStartup func()) {
	id := s.nextID.Add(1)
	conn := h.conn
	if h.tls {
		// Closing the TLS connection, too, sends close_notify.
		defer conn.Close()
	}
	w := bufio.NewWriterSize(conn, 4096)
	negotiate, params := negotiation(h.startup)
	clientUser, database := params["user"], params["database"]
	if database == "" {
		database = clientUser // PostgreSQL's default
	}
	if negotiate != nil {
		if msg, err := negotiate.Encode(nil); err == nil {
			_, _ = w.Write(msg)
		}
	}
	if s.local != nil {
		if err := s.local.authenticate(conn, w, clientUser); err != nil {
			s.refuse(conn, w, id, failedAs(FailLocalAuth, err))
			return
		}
	}
	leaveStartup()
	if s.isDraining() {
		s.refuse(conn, w, id, errShuttingDown)
		return
	}
	if !s.acquire() {
		s.refuse(conn, w, id, &clientError{code: "53300", msg: "sorry, too many clients already",
			detail: fmt.Sprintf("pgentra proxy allows %d sessions (--max-connections).", s.cfg.MaxConnections)})
		return
	}
	defer s.release()

	// The token and the upstream login are bounded by ConnectTimeout, not
	// by the client's startup deadline: a slow token (a device-code login,
	// IMDS retries) must not cost the client its session, or its error.
	// A client that leaves meanwhile ends the wait.
	_ = conn.SetDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ConnectTimeout)
	stopWatch := watchClient(conn, cancel)
	up, err := s.dialUpstream(ctx, &clientUser, database, params)
	early, left := stopWatch()
	cancel()
	if left != nil {
		if up != nil {
			up.conn.Close()
		}
		s.refuse(conn, nil, id, failedAs(FailClientLeft, fmt.Errorf("the client left while its session was being opened: %w", left)))
		return
	}
	// The answer, a session or an error, gets a fresh deadline.
	_ = conn.SetDeadline(time.Now().Add(s.cfg.StartupTimeout))
	if err != nil {
		s.refuse(conn, w, id, err)
		return
	}
	defer up.conn.Close()
	key, removeKey, err := s.keys.add(up.cancel)
	if err != nil {
		s.refuse(conn, w, id, err)
		return
	}
	defer removeKey()

	buf := make([]byte, 0, 512)
	buf, _ = (&pgproto3.AuthenticationOk{}).Encode(buf)
	for k, v := range up.params {
		buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(buf)
	}
	buf, _ = key.Encode(buf)
	buf = append(buf, up.notices...)
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: up.txStatus}).Encode(buf)
	buf = append(buf, up.later...)
	_, err = w.Write(buf)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		s.refuse(conn, nil, id, failedAs(FailClientLeft, fmt.Errorf("sending the session's start to the client: %w", err)))
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if len(early) > 0 {
		// Sent by the client before its session started: it goes first.
		if _, err := up.conn.Write(early); err != nil {
			s.refuse(conn, nil, id, fmt.Errorf("relaying to the upstream server: %w", err))
			return
		}
	}

	s.opened.Add(1)
	start := time.Now()
	if clientUser != up.user {
		s.log.Info("pgentra proxy: the client's user name is ignored; the session runs as the proxy's user (--strict-user refuses such clients)",
			"session", id, "client_user", clientUser, "user", up.user)
	}
	s.log.Info("pgentra proxy: session opened", "session", id, "client", conn.RemoteAddr().String(),
		"database", database, "user", up.user, "application_name", params["application_name"], "client_tls", h.tls)
	toServer, toClient, err := relay(conn, up.conn, &s.bytesFromClients, &s.bytesToClients)
	attrs := []any{"session", id, "duration", time.Since(start).Round(time.Millisecond),
		"bytes_from_client", toServer, "bytes_to_client", toClient}
	if err != nil {
		attrs = append(attrs, "error", oneLine(err.Error()))
	}
	s.log.Info("pgentra proxy: session closed", attrs...)
}

// watchClient watches a client waiting for its session to open and calls
// cancel if the client leaves (its connection ends). stop ends the watch;
// it returns what the client sent meanwhile, if anything, to go upstream
// first, or the error with which the client's connection ended.
func watchClient(conn net.Conn, cancel context.CancelFunc) (stop func() (early []byte, left error)) {
	var b [1]byte
	var n int
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err = conn.Read(b[:])
		if n == 0 {
			cancel()
		}
	}()
	return func() ([]byte, error) {
		_ = conn.SetReadDeadline(time.Unix(1, 0)) // ends the Read
		<-done
		_ = conn.SetReadDeadline(time.Time{})
		var ne net.Error
		switch {
		case n > 0:
			return b[:n], nil
		case errors.As(err, &ne) && ne.Timeout():
			return nil, nil
		default:
			return nil, err
		}
	}
}

// refuse tells a client why it gets no session, with an ErrorResponse
// (unless the connection itself failed, or its startup did: a
// session's id is zero until its startup message is read), and logs one
// line.
func (s *Server) refuse(conn net.Conn, w *bufio.Writer, id uint64, err error) {
	s.failed.Add(1)
	s.countFailure(failureReason(err))
	var ce *clientError
	var ue *upstreamError
	if errors.As(err, &ce) || errors.As(err, &ue) || (id != 0 && !connFailed(err)) {
		if w == nil {
			w = bufio.NewWriter(conn)
		}
		_, _ = w.Write(errorResponse(nil, err))
		_ = w.Flush()
	}
	// A login the server refused is logged as entraauth.Explain reads it:
	// the user sent, where it came from, the token's principal, the fix.
	attrs := []any{"client", addrString(conn.RemoteAddr()), "reason", string(failureReason(err)), "error", oneLine(s.explain(err).Error())}
	if id != 0 {
		attrs = append([]any{"session", id}, attrs...)
	}
	level := slog.LevelWarn
	if errors.Is(err, io.EOF) {
		level = slog.LevelDebug // a client (or a port probe) that left before its startup message
	}
	s.log.Log(context.Background(), level, "pgentra proxy: session refused", attrs...)
}

// connFailed reports errors of the client connection itself, after which
// nothing can be sent to it.
func connFailed(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}

// addrString prints a client address; a unix socket's peer has none.
func addrString(a net.Addr) string {
	if a == nil || a.String() == "" {
		return "unix socket"
	}
	return a.String()
}

// upstreamUserSource is where a login's user name came from when Config.User
// set it: entraauth sees it only as written in the upstream connection
// string.
const upstreamUserSource = "the proxy's upstream user (Config.User, pgentra proxy's --user, or the Service Connector user)"

// explain is entraauth.Explain for an upstream login: a refused login says
// the user sent, where it came from, the token's principal and the fix.
func (s *Server) explain(err error) error {
	if s.cfg.User != "" {
		return entraauth.ExplainUserSource(err, upstreamUserSource)
	}
	return entraauth.Explain(err)
}
