package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgentra/entraauth/proxy"
)

// Readiness timing.
const (
	// defaultReadinessWindow is how recent a successful upstream login
	// must be for /readiness to answer 200 without logging in itself.
	defaultReadinessWindow = time.Minute
	// readinessRetry is how long a failed readiness login is reused
	// before another is tried (at most the window): probes from several
	// sources, or a short period, cost one login per interval.
	readinessRetry = 5 * time.Second
	// readinessWait bounds how long /readiness waits for its login; the
	// login goes on, and the next probe gets its result.
	readinessWait = 10 * time.Second
)

// health answers /startup, /liveness and /readiness for a proxy.Server.
type health struct {
	srv    *proxy.Server
	log    *slog.Logger
	window time.Duration
	// ctx ends the readiness logins in flight when the proxy exits.
	ctx context.Context

	started  atomic.Bool // the listeners are serving (after the connection test)
	draining atomic.Bool // shutting down: no new sessions
	broken   atomic.Bool // a listener failed: the proxy cannot accept clients

	mu    sync.Mutex
	check *readyCheck // the readiness login in flight, or the last one
	wg    sync.WaitGroup
}

// readyCheck is one readiness login: done is closed when err and at are
// set.
type readyCheck struct {
	done chan struct{}
	err  error
	at   time.Time
}

// handler serves the health endpoints, and /metrics when metrics is set.
func (h *health) handler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	if h != nil {
		mux.HandleFunc("GET /startup", func(w http.ResponseWriter, _ *http.Request) {
			if !h.started.Load() {
				answer(w, http.StatusServiceUnavailable, "starting")
				return
			}
			answer(w, http.StatusOK, "ok")
		})
		mux.HandleFunc("GET /liveness", func(w http.ResponseWriter, _ *http.Request) {
			if h.broken.Load() {
				answer(w, http.StatusServiceUnavailable, "a listener failed")
				return
			}
			answer(w, http.StatusOK, "ok")
		})
		mux.HandleFunc("GET /readiness", func(w http.ResponseWriter, r *http.Request) {
			if reason := h.notReady(r.Context()); reason != "" {
				answer(w, http.StatusServiceUnavailable, reason)
				return
			}
			answer(w, http.StatusOK, "ok")
		})
	}
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// answer writes a short plain-text body and a newline.
func answer(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, body)
}

// notReady returns why the proxy is not ready, or "" when it is: a
// successful upstream login within the window, with a token that has
// not expired; else one readiness login of its own, shared by concurrent
// probes.
func (h *health) notReady(ctx context.Context) string {
	switch {
	case h.draining.Load():
		return "shutting down"
	case h.broken.Load():
		return "a listener failed"
	case !h.started.Load():
		return "starting"
	}
	now := time.Now()
	st := h.srv.Stats()
	if !st.LastLogin.IsZero() && now.Sub(st.LastLogin) < h.window && st.Token.ExpiresOn.After(now) {
		return ""
	}
	c := h.readyCheck(now)
	ctx, cancel := context.WithTimeout(ctx, readinessWait)
	defer cancel()
	select {
	case <-c.done:
	case <-ctx.Done():
		return "checking the upstream login: no answer yet"
	}
	if c.err != nil {
		return whyNotReady(c.err)
	}
	return ""
}

// readyCheck returns the readiness login in flight, a failed one newer
// than readinessRetry, or a new one.
func (h *health) readyCheck(now time.Time) *readyCheck {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.check; c != nil {
		select {
		case <-c.done:
			if c.err != nil && now.Sub(c.at) < min(readinessRetry, h.window) {
				return c
			}
		default:
			return c // in flight
		}
	}
	c := &readyCheck{done: make(chan struct{})}
	h.check = c
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		c.err = h.srv.CheckUpstream(h.ctx)
		c.at = time.Now()
		if c.err != nil {
			h.log.Warn("pgentra proxy: readiness: the upstream login failed", "error", explain(c.err))
		}
		close(c.done)
	}()
	return c
}

// wait waits for the readiness login in flight, if any.
func (h *health) wait() { h.wg.Wait() }

// whyNotReady is /readiness's short reason for a failed login: the kind
// of failure and the server's SQLSTATE, not the error, which the log has
// (the port may be reachable by more than the proxy's clients).
func whyNotReady(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case proxy.FailureReasonOf(err) == proxy.FailToken:
		return "no Entra token (the proxy's log has the error)"
	case errors.As(err, &pgErr):
		return "the upstream server refused the login: SQLSTATE " + pgErr.Code + " (the proxy's log has the error)"
	}
	return "the upstream login failed (the proxy's log has the error)"
}

// serveHTTP serves handler on addr until the returned stop is called.
func serveHTTP(addr string, handler http.Handler, log *slog.Logger) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-address: %w", err)
	}
	hs := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Error("pgentra proxy: the HTTP listener failed", "error", err.Error())
		}
	}()
	log.Info("pgentra proxy: HTTP listening", "addr", l.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
	}, nil
}
