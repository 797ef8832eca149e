package proxy

import (
	"errors"
	"sync/atomic"
	"time"
)

// FailureReason says why a client got no session, in Stats.FailedBy.
type FailureReason string

// The reasons a client gets no session.
const (
	// FailStartup: the client's own startup failed (TLS, a malformed or
	// missing startup message, the startup deadline).
	FailStartup FailureReason = "startup"
	// FailLocalAuth: the client did not give the local password.
	FailLocalAuth FailureReason = "local_auth"
	// FailOverLimit: MaxConnections sessions were open, or too many
	// connections were in startup (SQLSTATE 53300).
	FailOverLimit FailureReason = "over_limit"
	// FailShuttingDown: the server was shutting down (SQLSTATE 57P03).
	FailShuttingDown FailureReason = "shutting_down"
	// FailStrictUser: StrictUser refused the client's user name.
	FailStrictUser FailureReason = "strict_user"
	// FailToken: no Entra token could be had.
	FailToken FailureReason = "token"
	// FailUpstreamLogin: the upstream server could not be reached or
	// refused the login.
	FailUpstreamLogin FailureReason = "upstream_login"
	// FailClientLeft: the client left while its session was being opened.
	FailClientLeft FailureReason = "client_left"
)

// failureReasons lists every FailureReason, in the order of their
// counters.
var failureReasons = [...]FailureReason{FailStartup, FailLocalAuth, FailOverLimit, FailShuttingDown,
	FailStrictUser, FailToken, FailUpstreamLogin, FailClientLeft}

// FailureReasons returns every FailureReason, for a metric's label values.
func FailureReasons() []FailureReason { return append([]FailureReason(nil), failureReasons[:]...) }

// reasonError marks err with the reason it counts under.
type reasonError struct {
	reason FailureReason
	err    error
}

func (e *reasonError) Error() string { return e.err.Error() }
func (e *reasonError) Unwrap() error { return e.err }

// failedAs marks err to count under reason.
func failedAs(reason FailureReason, err error) error { return &reasonError{reason: reason, err: err} }

// failureReason classifies an error a client was refused with.
func failureReason(err error) FailureReason {
	var re *reasonError
	var ce *clientError
	var ue *upstreamError
	switch {
	case errors.As(err, &re):
		return re.reason
	case errors.As(err, &ue):
		if ue.stage == stageToken {
			return FailToken
		}
		return FailUpstreamLogin
	case errors.As(err, &ce):
		switch {
		case ce == errShuttingDown:
			return FailShuttingDown
		case ce.code == "53300":
			return FailOverLimit
		case ce.code == "28000":
			return FailStrictUser
		case ce.code == "28P01":
			return FailLocalAuth
		}
	}
	return FailStartup
}

// counters are the Server's counters that its Stats report and the relay
// moves: atomics only, so that the hot path pays an atomic add at most.
type counters struct {
	failedBy  [len(failureReasons)]atomic.Int64
	lastLogin atomic.Int64 // unix nanoseconds; 0: none yet
	logins    durationHistogram
	// The relay's counters, each on a cache line of its own: every
	// session's copies add to them.
	_                [64]byte
	bytesFromClients atomic.Int64
	_                [56]byte
	bytesToClients   atomic.Int64
	_                [56]byte
}

// countFailure counts a refused client under reason.
func (c *counters) countFailure(reason FailureReason) {
	for i, r := range failureReasons {
		if r == reason {
			c.failedBy[i].Add(1)
			return
		}
	}
}

// countLogin counts a successful upstream login that took d.
func (c *counters) countLogin(d time.Duration) {
	c.lastLogin.Store(time.Now().UnixNano())
	c.logins.observe(d)
}

// loginBuckets are the upper bounds of Stats.Logins' buckets.
var loginBuckets = [...]time.Duration{
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second,
}

// DurationHistogram counts durations in buckets, cumulatively, as
// Prometheus histograms do.
type DurationHistogram struct {
	// Bounds are the buckets' upper bounds, ascending: 5ms, 10ms, 25ms,
	// 50ms, 100ms, 250ms, 500ms, 1s, 2.5s, 5s, 10s and 30s for Logins.
	Bounds []time.Duration
	// Counts[i] counts the durations of at most Bounds[i].
	Counts []uint64
	// Count counts every duration, those over the last bound too.
	Count uint64
	// Sum is the durations' total.
	Sum time.Duration
}

// durationHistogram is a DurationHistogram being counted, with
// loginBuckets; the last bucket is the overflow.
type durationHistogram struct {
	buckets [len(loginBuckets) + 1]atomic.Uint64
	sum     atomic.Int64
}

func (h *durationHistogram) observe(d time.Duration) {
	i := 0
	for i < len(loginBuckets) && d > loginBuckets[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(int64(d))
}

func (h *durationHistogram) snapshot() DurationHistogram {
	out := DurationHistogram{Bounds: append([]time.Duration(nil), loginBuckets[:]...), Counts: make([]uint64, len(loginBuckets))}
	for i := range h.buckets {
		out.Count += h.buckets[i].Load()
		if i < len(loginBuckets) {
			out.Counts[i] = out.Count
		}
	}
	out.Sum = time.Duration(h.sum.Load())
	return out
}

// FailureReasonOf returns the reason an error of CheckUpstream (or one a
// client was refused with) counts under: FailToken when no token could be
// had, FailUpstreamLogin when the server could not be reached or refused
// the login, and so on.
func FailureReasonOf(err error) FailureReason { return failureReason(err) }
