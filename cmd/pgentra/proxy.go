package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgentra/entraauth/internal/proxymetrics"
	"github.com/pgentra/entraauth/proxy"
)

const proxyHelp = `Usage: pgentra proxy --upstream HOST[:PORT] [flags]

Listens locally for PostgreSQL clients that cannot run a command for their
password (DBeaver, DataGrip, pg_dump in cron, applications in any language)
and logs each one in to the upstream server with a fresh Entra token over
verified TLS, then relays the session. Clients connect with no password
(or the local one) and any user name: the upstream user is the token's
principal unless --user names one, and a client naming another user gets
a session as that user all the same (a notice is logged), unless
--strict-user refuses it. Their database and startup parameters
(application_name, options, …) go upstream. Cancel requests work.
SIGINT or SIGTERM stops new sessions, goes on forwarding cancel requests,
and lets sessions finish for --shutdown-timeout; a second signal closes
them at once.

Proxy flags:
  --upstream HOST[:PORT]    the server (default: --host, else the Service
                            Connector host; port 5432)
  --listen ADDR             TCP address to listen on (default 127.0.0.1:5432;
                            "" for none); loopback only unless --allow-remote
  --unix-socket DIR         also listen on DIR/.s.PGSQL.<port> (mode 0600), with
                            a lock file as PostgreSQL keeps; a socket in use
                            is refused, never replaced
  --allow-remote            allow a --listen address other than loopback: anyone
                            who can reach it acts as your identity
  --user NAME               upstream user (default: the token's principal)
  --strict-user             refuse clients whose user name is not the upstream
                            user (SQLSTATE 28000), instead of ignoring it
  --local-password-file F   clients must give the password in F (first line)
  --local-auth METHOD       how clients give that password: scram-sha-256
                            (default: it never crosses the connection; with
                            channel binding over TLS), or password (in
                            cleartext, for clients that cannot do SCRAM, such
                            as very old drivers; use it with --tls-cert)
  --tls-cert F, --tls-key F offer TLS to clients with this certificate and key,
                            after SSLRequest or directly (PostgreSQL 17's
                            sslnegotiation=direct, with ALPN "postgresql")
  --max-connections N       at most N sessions at once, and N (at least 10)
                            connections in startup (default 100; 0: no limit)
  --sslmode MODE            TLS to the upstream: verify-full (default), verify-ca,
                            require
  --sslrootcert F           CA file for the upstream's certificate (default: the
                            system's CA bundle)
  --shutdown-timeout D      on SIGINT/SIGTERM, wait up to D for sessions (default
                            30s); a second signal closes them at once

Production flags (for a sidecar; see "Running the proxy as a sidecar" in
the README):
  --health-check            serve /startup, /liveness and /readiness on
                            --http-address (below)
  --prometheus              serve /metrics (Prometheus text format) on
                            --http-address: pgentra_proxy_… metrics, go_…, process_…
  --http-address ADDR       the HTTP listener of --health-check and --prometheus
                            (default 127.0.0.1:9090). Any address may be given:
                            it serves status and counters, no database access.
                            In Kubernetes the kubelet probes the pod's IP: use
                            0.0.0.0:9090 there, and keep the port off the internet
  --readiness-window D      /readiness is 200 without a login of its own when an
                            upstream login succeeded within D (default 1m)
  --run-connection-test     at startup, get a token and log in upstream once
                            (Upstream's database, else postgres) before serving;
                            on failure, say why and exit 1
  --structured-logs         log JSON lines (log/slog) instead of text
  --version                 print pgentra's version and exit

Health endpoints (GET or HEAD; plain-text body of one line):
  /startup    200 "ok" once the listeners serve (after the connection test);
              503 "starting" before
  /liveness   200 "ok" while the process serves, also while the credential or
              the server fails (a restart would not mend Azure, and would drop
              the open sessions and the cached token) and while draining;
              503 "a listener failed" only when the proxy cannot accept clients
  /readiness  200 "ok" when an upstream login (a session's, or its own)
              succeeded within --readiness-window and the cached token has
              not expired; else it logs in upstream itself (one login at a
              time, shared by concurrent probes; a failure is reused for 5s),
              answering within 10s. 503 with the reason otherwise: "starting",
              "shutting down" (from the first SIGTERM), "no Entra token …",
              "the upstream server refused the login: SQLSTATE 28P01 …",
              "the upstream login failed …"; the proxy's log has the error.

Environment: every flag above, and the credential flags, can be set with
PGENTRA_ and the flag's name upper-cased, - as _ (PGENTRA_UPSTREAM,
PGENTRA_HEALTH_CHECK=true, PGENTRA_CREDENTIAL=workload-identity). A flag
on the command line wins over its variable; a variable with a bad value is
a usage error (exit 2) naming it; a PGENTRA_ variable that names no flag is
logged as a warning.

Examples:
  pgentra proxy --upstream mysrv.postgres.database.azure.com
  psql "host=127.0.0.1 dbname=postgres"     # in another terminal; no password
  pgentra proxy --credential managed-identity --upstream mysrv.postgres.database.azure.com \
      --listen 127.0.0.1:6432 --local-password-file ~/.pgentra-proxy-password
  pgentra proxy --upstream mysrv.postgres.database.azure.com --local-password-file pw \
      --local-auth password --tls-cert proxy.crt --tls-key proxy.key   # an old driver
`

// proxyOptions are the flags of pgentra proxy.
type proxyOptions struct {
	upstream, listen, unixSocket, user, passwordFile string
	localAuth                                        string
	tlsCert, tlsKey, sslmode, sslrootcert            string
	allowRemote, strictUser                          bool
	maxConns                                         int
	shutdownTimeout                                  time.Duration

	healthCheck, prometheus, connTest, structuredLogs bool
	httpAddress                                       string
	readinessWindow                                   time.Duration
}

// runProxy runs the proxy until ctx ends (SIGINT, SIGTERM).
func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	var po proxyOptions
	fs := newFlagSet("proxy", stderr, &o)
	fs.StringVar(&po.upstream, "upstream", "", "")
	fs.StringVar(&po.listen, "listen", "127.0.0.1:5432", "")
	fs.StringVar(&po.unixSocket, "unix-socket", "", "")
	fs.BoolVar(&po.allowRemote, "allow-remote", false, "")
	fs.StringVar(&po.user, "user", "", "")
	fs.BoolVar(&po.strictUser, "strict-user", false, "")
	fs.StringVar(&po.passwordFile, "local-password-file", "", "")
	fs.StringVar(&po.localAuth, "local-auth", proxy.LocalAuthSCRAM, "")
	fs.StringVar(&po.tlsCert, "tls-cert", "", "")
	fs.StringVar(&po.tlsKey, "tls-key", "", "")
	fs.IntVar(&po.maxConns, "max-connections", 100, "")
	fs.StringVar(&po.sslmode, "sslmode", "verify-full", "")
	fs.StringVar(&po.sslrootcert, "sslrootcert", "", "")
	fs.DurationVar(&po.shutdownTimeout, "shutdown-timeout", 30*time.Second, "")
	fs.BoolVar(&po.healthCheck, "health-check", false, "")
	fs.BoolVar(&po.prometheus, "prometheus", false, "")
	fs.StringVar(&po.httpAddress, "http-address", "127.0.0.1:9090", "")
	fs.DurationVar(&po.readinessWindow, "readiness-window", defaultReadinessWindow, "")
	fs.BoolVar(&po.connTest, "run-connection-test", false, "")
	fs.BoolVar(&po.structuredLogs, "structured-logs", false, "")
	if code, ok := parseFlags(fs, args, proxyHelp, stdout, stderr); !ok {
		return code
	}
	unknownEnv, envErr := applyEnv(fs, os.Environ())
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if po.structuredLogs {
		log = slog.New(slog.NewJSONHandler(stderr, nil))
	}
	// fail, once the logger is chosen: JSON lines with --structured-logs.
	fail := func(err error) int {
		if !po.structuredLogs {
			return fail(stderr, "proxy", err)
		}
		log.Error("pgentra proxy: "+cliMessage("proxy", err), "exit_status", exitStatus(err))
		return exitStatus(err)
	}
	if envErr != nil {
		return fail(envErr)
	}
	if fs.NArg() > 0 {
		return fail(fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0)))
	}
	for _, name := range unknownEnv {
		log.Warn("pgentra proxy: environment variable "+name+" names no flag; ignored", "variable", name)
	}
	if err := po.checkHTTP(fs); err != nil {
		return fail(err)
	}
	// Signals are counted here too: the first (which also ends ctx)
	// starts the graceful shutdown, the second ends it at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	srv, listeners, err := po.start(&o, log)
	if err != nil {
		return fail(err)
	}
	hctx, hcancel := context.WithCancel(context.Background())
	defer hcancel()
	var h *health
	if po.healthCheck {
		h = &health{srv: srv, log: log, window: po.readinessWindow, ctx: hctx}
		defer h.wait()
	}
	if po.healthCheck || po.prometheus {
		var metrics http.Handler
		if po.prometheus {
			metrics = proxymetrics.Handler(srv)
		}
		stopHTTP, err := serveHTTP(po.httpAddress, h.handler(metrics), log)
		if err != nil {
			closeAll(listeners)
			return fail(err)
		}
		// Last: the probes and metrics answer during the drain.
		defer stopHTTP()
		defer hcancel()
	}
	if po.connTest {
		log.Info("pgentra proxy: connection test: getting a token and logging in upstream")
		if err := connectionTest(ctx, srv.CheckUpstream); err != nil && ctx.Err() == nil {
			closeAll(listeners)
			return fail(err)
		}
		if ctx.Err() == nil {
			log.Info("pgentra proxy: connection test passed")
		}
	}
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		log.Info("pgentra proxy: listening", "addr", l.Addr().String())
		go func() { errc <- srv.Serve(l) }()
	}
	if h != nil {
		h.started.Store(true)
	}
	signals := 0
	select {
	case <-ctx.Done():
	case <-sigs:
		signals++
	case err = <-errc:
		if h != nil {
			h.broken.Store(true)
		}
		log.Error("pgentra proxy: listener failed", "error", err.Error())
	}
	if h != nil {
		h.draining.Store(true)
	}
	log.Info("pgentra proxy: shutting down: no new sessions; cancel requests are still forwarded; a second SIGINT or SIGTERM closes the sessions",
		"open_sessions", srv.Stats().Open, "timeout", po.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), po.shutdownTimeout)
	defer cancel()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		for signals < 2 {
			select {
			case <-sigs:
				signals++
			case <-stopped:
				return
			}
		}
		log.Info("pgentra proxy: second signal: closing the open sessions now")
		cancel()
	}()
	code := exitOK
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("pgentra proxy: sessions still open were closed", "error", serr.Error())
	}
	if err != nil {
		code = exitFail
	}
	return code
}

// start checks the flags, builds the proxy and opens its listeners.
func (po *proxyOptions) start(o *options, log *slog.Logger) (*proxy.Server, []net.Listener, error) {
	if po.maxConns < 0 {
		return nil, nil, fmt.Errorf("%w: --max-connections must not be negative", errUsage)
	}
	if po.shutdownTimeout < 0 {
		return nil, nil, fmt.Errorf("%w: --shutdown-timeout must not be negative", errUsage)
	}
	switch po.sslmode {
	case "verify-full", "verify-ca", "require":
	default:
		return nil, nil, fmt.Errorf("%w: --sslmode must be verify-full, verify-ca or require (the token never goes without TLS)", errUsage)
	}
	if po.listen == "" && po.unixSocket == "" {
		return nil, nil, fmt.Errorf("%w: nothing to listen on: give --listen or --unix-socket", errUsage)
	}
	if po.listen != "" {
		if err := checkListenAddr(po.listen, po.allowRemote); err != nil {
			return nil, nil, err
		}
	}
	switch po.localAuth {
	case proxy.LocalAuthSCRAM, proxy.LocalAuthPassword:
	default:
		return nil, nil, fmt.Errorf("%w: --local-auth must be scram-sha-256 or password, not %q", errUsage, po.localAuth)
	}
	if po.localAuth == proxy.LocalAuthPassword && po.passwordFile == "" {
		return nil, nil, fmt.Errorf("%w: --local-auth password needs --local-password-file", errUsage)
	}
	if (po.tlsCert == "") != (po.tlsKey == "") {
		return nil, nil, fmt.Errorf("%w: --tls-cert and --tls-key go together", errUsage)
	}
	host, port := po.upstream, ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		host, port = h, p
	}
	t, err := o.resolve(host)
	if err != nil {
		return nil, nil, err
	}
	if t.ts == nil {
		return nil, nil, t.passwordModeError()
	}
	user := po.user
	if host == "" {
		host = t.host
		if t.env != nil {
			port = t.env.Port
			if user == "" {
				user = t.env.User
			}
		}
	}
	if host == "" {
		return nil, nil, fmt.Errorf("%w: --upstream is required", errUsage)
	}
	if port == "" {
		port = "5432"
	}
	kv := []string{"host", host, "port", port, "sslmode", po.sslmode}
	// Without --sslrootcert, pgx verifies against the system roots (and
	// SSL_CERT_FILE), unlike libpq: no bundle to find, as psql needs.
	if po.sslrootcert != "" {
		kv = append(kv, "sslrootcert", po.sslrootcert)
	}
	if t.env != nil && t.env.Database != "" {
		kv = append(kv, "dbname", t.env.Database)
	}
	cfg := proxy.Config{
		Upstream:       connString(kv...),
		TokenSource:    t.ts,
		User:           user,
		StrictUser:     po.strictUser,
		LocalAuth:      po.localAuth,
		MaxConnections: po.maxConns,
		ConnectTimeout: o.timeout,
		Logger:         log,
	}
	if po.passwordFile != "" {
		if cfg.LocalPassword, err = readPasswordFile(po.passwordFile, log); err != nil {
			return nil, nil, err
		}
	}
	if po.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(po.tlsCert, po.tlsKey)
		if err != nil {
			return nil, nil, fmt.Errorf("loading --tls-cert and --tls-key: %w", err)
		}
		cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	if po.allowRemote {
		log.Warn("pgentra proxy: --allow-remote: anyone who can reach the listen address connects as this identity; set --local-password-file and --tls-cert")
	}
	if po.sslmode != "verify-full" {
		log.Warn("pgentra proxy: the upstream's host name is not verified (--sslmode " + po.sslmode + "); verify-full is recommended")
	}
	listeners, err := po.listenAll()
	if err != nil {
		return nil, nil, err
	}
	log.Info("pgentra proxy: upstream", "host", host, "port", port, "sslmode", po.sslmode, "user", userOrToken(user))
	return srv, listeners, nil
}

func userOrToken(user string) string {
	if user == "" {
		return "(the token's principal)"
	}
	return user
}

// checkListenAddr refuses a listen address that is not loopback unless
// remote clients are allowed.
func checkListenAddr(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: --listen %q: %v", errUsage, addr, err)
	}
	if allowRemote || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w: --listen %q is not a loopback address: anyone who can reach it would connect as your identity; "+
		"add --allow-remote (with --local-password-file and --tls-cert) if you mean it", errUsage, addr)
}

// listenAll opens the TCP listener and the unix socket asked for.
func (po *proxyOptions) listenAll() ([]net.Listener, error) {
	var ls []net.Listener
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	if po.listen != "" {
		l, err := net.Listen("tcp", po.listen)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	if po.unixSocket != "" {
		port := "5432"
		if po.listen != "" {
			_, port, _ = net.SplitHostPort(ls[0].Addr().String())
		}
		l, err := listenUnixSocket(filepath.Join(po.unixSocket, ".s.PGSQL."+port))
		if err != nil {
			closeAll()
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// readPasswordFile reads the local password: the file's first line.
func readPasswordFile(path string, log *slog.Logger) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--local-password-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("pgentra proxy: the local password file is readable by other users; chmod 600 it", "file", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--local-password-file: %w", err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("%w: --local-password-file %s: the first line is empty", errUsage, path)
	}
	return pw, nil
}

// connString builds a key/value connection string from key, value pairs,
// quoting values.
func connString(kv ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[i])
		b.WriteString("='")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[i+1]))
		b.WriteByte('\'')
	}
	return b.String()
}

// checkHTTP checks the flags of the HTTP listener.
func (po *proxyOptions) checkHTTP(fs *flag.FlagSet) error {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "http-address" })
	if !po.healthCheck && !po.prometheus {
		if given {
			return fmt.Errorf("%w: --http-address serves --health-check and --prometheus: give one of them", errUsage)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(po.httpAddress); err != nil {
		return fmt.Errorf("%w: --http-address %q: %v", errUsage, po.httpAddress, err)
	}
	if po.readinessWindow <= 0 {
		return fmt.Errorf("%w: --readiness-window must be positive", errUsage)
	}
	return nil
}

// closeAll closes listeners not yet served.
func closeAll(listeners []net.Listener) {
	for _, l := range listeners {
		l.Close()
	}
}

// exitStatus is fail's exit status for err.
func exitStatus(err error) int {
	if errors.Is(err, errUsage) {
		return exitUsage
	}
	return exitFail
}
