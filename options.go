package entraauth

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a TokenSource, Hook or Connector.
type Option func(*settings)

// settings are the options a TokenSource was made with.
type settings struct {
	scope           string // empty: chosen from the first server's host name
	user            string
	tenantID        string
	logger          *slog.Logger
	requireVerified bool
	allowPlaintext  bool
	fetchTimeout    time.Duration
	meterProvider   metric.MeterProvider // nil: no metrics
	err             error                // the first invalid option
}

const defaultFetchTimeout = 30 * time.Second

func newSettings(opts []Option) settings {
	s := settings{fetchTimeout: defaultFetchTimeout}
	for _, opt := range opts {
		if opt != nil {
			opt(&s)
		}
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.requireVerified && s.allowPlaintext && s.err == nil {
		s.err = fmt.Errorf("%w: WithRequireVerifiedTLS and WithInsecurePlaintextForLocalDevelopment contradict each other; use one",
			ErrInvalidOption)
	}
	return s
}

func (s *settings) invalid(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...)
	}
}

// WithScope sets the scope tokens are requested for. Without it the scope is
// chosen from the server's host name (see ScopeForHost): set it only for a
// cloud entraauth does not know, or to share a TokenSource before any
// connection names a host.
func WithScope(scope string) Option {
	return func(s *settings) {
		if scope == "" {
			s.invalid("WithScope needs a scope such as %s", ScopePublic)
		}
		s.scope = scope
	}
}

// WithUser sets the database user name, overriding the connection string,
// PGUSER and the token's claims. Use it for a service principal, whose
// tokens carry no name, or when the role was created under another name.
func WithUser(user string) Option {
	return func(s *settings) {
		if user == "" {
			s.invalid("WithUser needs a non-empty user name")
		}
		s.user = user
	}
}

// WithTenantID requests tokens from this Microsoft Entra tenant rather than
// the credential's default one (a guest user, or a multi-tenant app).
func WithTenantID(tenantID string) Option {
	return func(s *settings) { s.tenantID = tenantID }
}

// WithLogger sends the TokenSource's log lines (token fetched, refresh
// failed, user name derived) to logger. The default is silent. Tokens are
// never logged.
func WithLogger(logger *slog.Logger) Option {
	return func(s *settings) { s.logger = logger }
}

// WithRequireVerifiedTLS refuses, with ErrInsecureTransport, any connection
// over TCP whose server certificate and host name are not verified: it
// refuses an explicit sslmode=require, prefer or verify-ca (an unnamed
// sslmode already means verify-full). Recommended in production, where
// sslmode=require would hand the token to whoever answers on the network.
func WithRequireVerifiedTLS() Option {
	return func(s *settings) { s.requireVerified = true }
}

// WithInsecurePlaintextForLocalDevelopment lets the token travel over TCP
// without TLS (sslmode=disable, allow or prefer keep their plaintext
// attempts). The token is a bearer credential: anyone who sees it can use
// it for about an hour. Use this only against a local server that cannot
// do TLS, never in production.
func WithInsecurePlaintextForLocalDevelopment() Option {
	return func(s *settings) { s.allowPlaintext = true }
}

// WithFetchTimeout bounds one token request to the credential (default 30s).
// The request runs apart from any one caller, so a caller giving up early
// does not cancel it for the others waiting on it.
func WithFetchTimeout(d time.Duration) Option {
	return func(s *settings) {
		if d <= 0 {
			s.invalid("WithFetchTimeout needs a positive duration, got %s", d)
		}
		s.fetchTimeout = d
	}
}

// WithMeterProvider records the TokenSource's work as OpenTelemetry metrics
// on mp (from the OpenTelemetry SDK, or otel.GetMeterProvider()), under the
// instrumentation scope github.com/pgentra/entraauth:
//
//   - entraauth.token.fetches: token requests to the credential, by
//     outcome (success, failure, timeout, panic) and kind (database,
//     resource_manager);
//   - entraauth.token.fetch.duration: their latency in seconds;
//   - entraauth.token.cache.hits: tokens handed out from the cache;
//   - entraauth.token.waits: connects that had no usable token and waited
//     for a fetch;
//   - entraauth.token.time_to_expiry: seconds until the cached token
//     expires, read at collection.
//
// Without it nothing is recorded and nothing is paid. The meter provider
// keeps the TokenSource reachable: make one TokenSource per pool or
// database handle, not one per connection.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(s *settings) {
		if mp == nil {
			s.invalid("WithMeterProvider needs a MeterProvider, got nil")
		}
		s.meterProvider = mp
	}
}
