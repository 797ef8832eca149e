package entratest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgentra/entraauth/internal/pgtest"
)

// TokenVerifier checks a token's signature, audience and lifetime and
// returns its claims. *[Issuer] implements it.
//
// The server classifies a rejection with errors.Is against the kit's
// sentinels (ErrTokenExpired, ErrWrongAudience, ErrBadSignature,
// ErrMalformedToken, ErrWrongIssuer, ErrTokenNotYetValid) and golang-jwt's
// (jwt.ErrTokenExpired, …), so another implementation should wrap one of
// them. Its errors must not contain the token.
type TokenVerifier interface {
	Verify(token, wantAudience string) (jwt.MapClaims, error)
}

// ServerMode is how a [Server] asks clients for their token.
type ServerMode int

const (
	// ModePassword asks for a cleartext password (AuthenticationCleartextPassword)
	// and takes the token from it, as Azure Database for PostgreSQL does
	// today.
	ModePassword ServerMode = iota
	// ModeOAuthBearer asks for SASL OAUTHBEARER (RFC 7628), as PostgreSQL 18
	// does with oauth in pg_hba.conf; pgx sends the token of its
	// pgconn.Config.OAuthTokenProvider.
	ModeOAuthBearer
)

// String returns "password" or "oauthbearer".
func (m ServerMode) String() string {
	switch m {
	case ModePassword:
		return "password"
	case ModeOAuthBearer:
		return "oauthbearer"
	default:
		return "ServerMode(" + strconv.Itoa(int(m)) + ")"
	}
}

// DefaultAudience is the aud claim Azure Database for PostgreSQL accepts in
// Azure's public cloud: the resource of [ScopePublic].
const DefaultAudience = "https://ossrdbms-aad.database.windows.net"

// DefaultAuthTimeout is how long a client has, from connecting, to finish
// TLS and authentication when ServerConfig.AuthTimeout is zero.
const DefaultAuthTimeout = 30 * time.Second

// ServerConfig configures [NewServer].
type ServerConfig struct {
	// Verifier checks tokens. Required; usually an *[Issuer].
	Verifier TokenVerifier
	// Audience is the aud claim a token must have. Default
	// [DefaultAudience]. A scope ("…/.default") is taken as its resource.
	Audience string
	// Mode is how clients are asked for their token. Default
	// [ModePassword].
	Mode ServerMode
	// BackendDSN is a connection string of a real PostgreSQL the sessions
	// are relayed to. The kit needs superuser rights there (or at least
	// CREATEROLE) to create the roles of [Server.AddRole]; sessions log in
	// to it as those roles, with a random password the kit sets, using the
	// same host, port and TLS settings as BackendDSN, so its pg_hba.conf
	// must allow password (or trust) authentication for them. Empty: the
	// kit starts a throwaway PostgreSQL (it needs the server binaries; see
	// [ErrNoPostgreSQL]) and stops it on [Server.Close].
	BackendDSN string
	// AuthTimeout bounds TLS and authentication of each client connection,
	// so a stuck client cannot hold the server. Default
	// [DefaultAuthTimeout].
	AuthTimeout time.Duration
	// Logf, if set, receives one line per connection event (accepted,
	// rejected and why, cancel forwarded, …). Tokens are never logged.
	Logf func(format string, args ...any)
}

// ErrNoPostgreSQL is wrapped by [NewServer]'s error when ServerConfig has no
// BackendDSN and no PostgreSQL server binaries are installed (looked for in
// PG_BIN, `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH). A test
// can skip on it.
var ErrNoPostgreSQL = errors.New("entratest: no PostgreSQL server binaries found")

// RejectReason says why a [Server] refused a login. [ServerStats] counts
// rejections per reason.
type RejectReason string

const (
	// RejectNoTLS: the client sent its startup message without TLS. It is
	// counted whether or not the client then sent its token; see
	// ServerStats.PlaintextPasswords.
	RejectNoTLS RejectReason = "no_tls"
	// RejectExpired: the token's exp has passed.
	RejectExpired RejectReason = "expired"
	// RejectNotYetValid: the token's nbf or iat is in the future.
	RejectNotYetValid RejectReason = "not_yet_valid"
	// RejectAudience: the token is for another resource.
	RejectAudience RejectReason = "audience"
	// RejectIssuer: the token was issued for another tenant or by another
	// issuer.
	RejectIssuer RejectReason = "issuer"
	// RejectSignature: the token is not signed by the verifier's key.
	RejectSignature RejectReason = "signature"
	// RejectMalformed: the password is not a JWT (or is empty).
	RejectMalformed RejectReason = "malformed"
	// RejectInvalidToken: the verifier refused the token for a reason not
	// listed above.
	RejectInvalidToken RejectReason = "invalid_token"
	// RejectUnknownRole: no role is registered ([Server.AddRole]) under the
	// startup message's user name.
	RejectUnknownRole RejectReason = "unknown_role"
	// RejectUserMismatch: the token's oid claim is not the object ID the
	// role was registered for (a valid token of another principal).
	RejectUserMismatch RejectReason = "user_mismatch"
	// RejectProtocol: the client broke the protocol during startup or
	// authentication (unexpected message, malformed SASL message, no user
	// name, unsupported protocol version).
	RejectProtocol RejectReason = "protocol"
	// RejectBackend: the token was good but the backend session could not
	// be opened (for example, the database does not exist); the client
	// gets the backend's error.
	RejectBackend RejectReason = "backend"
)

// ServerStats is a snapshot of a [Server]'s counters.
type ServerStats struct {
	// Accepted counts successful logins.
	Accepted int64
	// DistinctTokens counts the distinct tokens seen in successful logins
	// (the server keeps their SHA-256 hashes, not the tokens).
	DistinctTokens int64
	// Rejected counts refused logins per reason. It is never nil.
	Rejected map[RejectReason]int64
	// PlaintextPasswords counts passwords (tokens) that arrived over a
	// connection without TLS: each one is a token a network observer could
	// have read.
	PlaintextPasswords int64
	// CancelsForwarded counts cancel requests relayed to the backend.
	CancelsForwarded int64
}

// TotalRejected returns the sum of Rejected.
func (st ServerStats) TotalRejected() int64 {
	var n int64
	for _, v := range st.Rejected {
		n += v
	}
	return n
}

// Server speaks the PostgreSQL wire protocol on a loopback port and checks
// Entra access tokens the way Azure Database for PostgreSQL does: TLS
// required, then the token (as the password, or with SASL OAUTHBEARER) must
// verify (signature, audience, lifetime) and its oid claim must be the
// object ID the startup message's role was registered for
// ([Server.AddRole], like pgaadauth_create_principal). A session that logs
// in is relayed, byte for byte, to a real PostgreSQL as that role, so
// queries, COPY, notifications and cancel requests work as usual.
//
// Failed logins get Azure's error messages (SQLSTATE 28P01 for a bad token
// or user, 28000 without TLS), with a DETAIL saying why; the token never
// appears in them, nor in the server's log lines.
//
// Create one with [NewServer]; it is safe for concurrent use. Close it when
// done.
type Server struct {
	cfg         ServerConfig
	audience    string
	authTimeout time.Duration
	logf        func(format string, args ...any)

	ln        net.Listener
	host      string
	port      uint16
	tlsConfig *tls.Config
	caPEM     []byte
	caFile    string
	tmpDir    string

	backendDSN string         // admin connection string of the backend
	backendCfg *pgconn.Config // parsed backendDSN; copied per session
	pg         *pgtest.Server // the backend NewServer started, or nil

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]struct{}          // every open socket, client or backend
	roles    map[string]registeredRole      // by role name
	sessions map[sessionKey]*backendSession // live sessions, by backend key data
	stats    serverCounters

	closeOnce sync.Once
	closeErr  error
}

// registeredRole is a role of AddRole.
type registeredRole struct {
	objectID string
	password string // the backend password the kit set for it
}

// serverCounters are the mutable parts of ServerStats, guarded by
// Server.mu.
type serverCounters struct {
	accepted  int64
	rejected  map[RejectReason]int64
	plaintext int64
	cancels   int64
	tokens    map[[sha256.Size]byte]struct{}
}

// NewServer starts a server listening on 127.0.0.1 on a free port, with a
// TLS certificate from a CA of its own ([Server.CAFile]). ctx bounds the
// start only (including starting a throwaway PostgreSQL when
// cfg.BackendDSN is empty); the server runs until [Server.Close].
func NewServer(ctx context.Context, cfg ServerConfig) (_ *Server, err error) {
	if cfg.Verifier == nil {
		return nil, errors.New("entratest: ServerConfig.Verifier is required")
	}
	if cfg.Mode != ModePassword && cfg.Mode != ModeOAuthBearer {
		return nil, fmt.Errorf("entratest: unknown ServerConfig.Mode %v", cfg.Mode)
	}
	if cfg.AuthTimeout < 0 {
		return nil, fmt.Errorf("entratest: negative ServerConfig.AuthTimeout %v", cfg.AuthTimeout)
	}
	s := &Server{
		cfg:         cfg,
		audience:    strings.TrimSuffix(cfg.Audience, defaultSuffix),
		authTimeout: cfg.AuthTimeout,
		logf:        cfg.Logf,
		conns:       make(map[net.Conn]struct{}),
		roles:       make(map[string]registeredRole),
		sessions:    make(map[sessionKey]*backendSession),
		stats: serverCounters{
			rejected: make(map[RejectReason]int64),
			tokens:   make(map[[sha256.Size]byte]struct{}),
		},
	}
	if s.audience == "" {
		s.audience = DefaultAudience
	}
	if s.authTimeout == 0 {
		s.authTimeout = DefaultAuthTimeout
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.cancel()
			if s.pg != nil {
				_ = s.pg.Stop()
			}
			if s.tmpDir != "" {
				_ = os.RemoveAll(s.tmpDir)
			}
		}
	}()

	if err := s.setUpTLS(); err != nil {
		return nil, err
	}
	if err := s.setUpBackend(ctx); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("entratest: listen: %w", err)
	}
	s.ln = ln
	addr := ln.Addr().(*net.TCPAddr)
	s.host, s.port = addr.IP.String(), uint16(addr.Port)
	s.wg.Add(1)
	go s.acceptLoop()
	s.logf("entratest: server (%v mode) listening on %s, backend %s", cfg.Mode, s.Addr(), s.backendDescription())
	return s, nil
}

// setUpTLS makes the CA and server certificate and writes the CA file.
func (s *Server) setUpTLS() error {
	dir, err := os.MkdirTemp("", "entratest-server-")
	if err != nil {
		return fmt.Errorf("entratest: temp dir: %w", err)
	}
	s.tmpDir = dir
	caPEM, cert, err := newServerCertificate()
	if err != nil {
		return err
	}
	s.caPEM = caPEM
	s.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(s.caFile, caPEM, 0o644); err != nil {
		return fmt.Errorf("entratest: write CA file: %w", err)
	}
	s.tlsConfig = &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// For sslnegotiation=direct, where the ALPN protocol is required.
		NextProtos: []string{alpnPostgreSQL},
	}
	return nil
}

// setUpBackend starts a throwaway PostgreSQL if needed, parses the backend
// connection string and checks the kit may create roles there.
func (s *Server) setUpBackend(ctx context.Context) error {
	s.backendDSN = s.cfg.BackendDSN
	if s.backendDSN == "" {
		pg, err := pgtest.Start(ctx, pgtest.Options{Logf: s.cfg.Logf})
		if err != nil {
			if errors.Is(err, pgtest.ErrNoBinaries) {
				return fmt.Errorf("%w: %w", ErrNoPostgreSQL, err)
			}
			return fmt.Errorf("entratest: starting PostgreSQL: %w", err)
		}
		s.pg = pg
		s.backendDSN = pg.AdminConnString()
	}
	cfg, err := pgconn.ParseConfig(s.backendDSN)
	if err != nil {
		// ParseConfig's error may quote the connection string, password
		// and all: say only that it did not parse.
		return errors.New("entratest: ServerConfig.BackendDSN does not parse as a PostgreSQL connection string")
	}
	s.backendCfg = cfg
	return s.checkBackend(ctx)
}

func (s *Server) backendDescription() string {
	if s.pg != nil {
		return "throwaway PostgreSQL " + s.pg.Version + " on " + s.pg.Addr()
	}
	return net.JoinHostPort(s.backendCfg.Host, strconv.Itoa(int(s.backendCfg.Port)))
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *Server) Addr() string { return net.JoinHostPort(s.host, strconv.Itoa(int(s.port))) }

// Host returns the host the server listens on, "127.0.0.1".
func (s *Server) Host() string { return s.host }

// Port returns the port the server listens on.
func (s *Server) Port() uint16 { return s.port }

// CAFile returns the path of a PEM file holding the CA that signed the
// server's certificate (whose names are localhost, 127.0.0.1 and ::1), so
// clients can use sslmode=verify-full sslrootcert=<CAFile>. The file is
// removed by Close.
func (s *Server) CAFile() string { return s.caFile }

// CertPool returns a new pool holding the server's CA, for a tls.Config's
// RootCAs.
func (s *Server) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.caPEM)
	return pool
}

// ConnString returns a key/value connection string for the server, with
// verified TLS and neither user nor password:
//
//	host=127.0.0.1 port=N dbname=postgres sslmode=verify-full sslrootcert=<CAFile>
//
// Each extra item is "key=value", appended with the value quoted as
// needed (pass it unquoted); in pgx and libpq a later key wins over an
// earlier one.
func (s *Server) ConnString(extra ...string) string {
	var b strings.Builder
	add := func(k, v string) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteDSNValue(v))
	}
	add("host", s.host)
	add("port", strconv.Itoa(int(s.port)))
	add("dbname", "postgres")
	add("sslmode", "verify-full")
	add("sslrootcert", s.caFile)
	for _, kv := range extra {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			b.WriteByte(' ')
			b.WriteString(kv)
			continue
		}
		add(strings.TrimSpace(k), v)
	}
	return b.String()
}

// quoteDSNValue quotes v for a key/value connection string when needed.
func quoteDSNValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// AdminConnString returns the connection string of the backend's
// superuser (ServerConfig.BackendDSN, or the throwaway server's unix
// socket), for setting up schemas and grants without going through Entra.
func (s *Server) AdminConnString() string { return s.backendDSN }

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ServerStats{
		Accepted:           s.stats.accepted,
		DistinctTokens:     int64(len(s.stats.tokens)),
		Rejected:           make(map[RejectReason]int64, len(s.stats.rejected)),
		PlaintextPasswords: s.stats.plaintext,
		CancelsForwarded:   s.stats.cancels,
	}
	for k, v := range s.stats.rejected {
		st.Rejected[k] = v
	}
	return st
}

func (s *Server) countRejected(r RejectReason) {
	s.mu.Lock()
	s.stats.rejected[r]++
	s.mu.Unlock()
}

func (s *Server) countPlaintext() {
	s.mu.Lock()
	s.stats.plaintext++
	s.mu.Unlock()
}

func (s *Server) countAccepted(token string) {
	sum := sha256.Sum256([]byte(token))
	s.mu.Lock()
	s.stats.accepted++
	s.stats.tokens[sum] = struct{}{}
	s.mu.Unlock()
}

// Close stops accepting connections, closes every session (client and
// backend sockets), waits for the server's goroutines to end, stops the
// PostgreSQL that NewServer started, if any, and removes the CA file. It
// is idempotent; later calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := make([]net.Conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()

		s.cancel()
		var errs []error
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("entratest: close listener: %w", err))
		}
		for _, c := range conns {
			_ = c.Close()
		}
		s.wg.Wait()
		if s.pg != nil {
			if err := s.pg.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(s.tmpDir); err != nil {
			errs = append(errs, fmt.Errorf("entratest: remove %s: %w", s.tmpDir, err))
		}
		s.closeErr = errors.Join(errs...)
		s.logf("entratest: server on %s closed", s.Addr())
	})
	return s.closeErr
}

// acceptLoop accepts connections until the listener closes.
func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			s.logf("entratest: accept: %v", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		if !s.goTracked(c, func() { s.serveConn(c) }) {
			_ = c.Close()
			return
		}
	}
}

// track registers an open socket so Close can close it. It returns false,
// and registers nothing, once Close has begun.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (s *Server) untrack(c net.Conn) {
	_ = c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// goTracked registers c (if not nil) and runs f in a goroutine Close waits
// for. It returns false, and runs nothing, once Close has begun.
func (s *Server) goTracked(c net.Conn, f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if c != nil {
		s.conns[c] = struct{}{}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}
