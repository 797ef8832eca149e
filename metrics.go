package entraauth

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// meterName is the instrumentation scope of entraauth's metrics.
const meterName = "github.com/pgentra/entraauth"

// Outcomes of a token fetch, the "outcome" attribute of
// entraauth.token.fetches and entraauth.token.fetch.duration.
const (
	outcomeSuccess = "success"
	outcomeFailure = "failure" // the credential returned an error
	outcomeTimeout = "timeout" // the fetch timeout ran out
	outcomePanic   = "panic"   // the credential panicked
)

// metrics are a TokenSource's OpenTelemetry instruments. A TokenSource
// without WithMeterProvider has none, and records nothing: each recording
// point is one nil check.
type metrics struct {
	fetches       metric.Int64Counter
	fetchDuration metric.Float64Histogram
	cacheHits     metric.Int64Counter
	waits         metric.Int64Counter
}

// newMetrics creates the instruments on mp, and the gauge of the cached
// token's remaining life, read from ts when metrics are collected. The
// meter provider keeps ts reachable from then on.
func newMetrics(mp metric.MeterProvider, ts *TokenSource) (*metrics, error) {
	meter := mp.Meter(meterName)
	var m metrics
	var err error
	if m.fetches, err = meter.Int64Counter("entraauth.token.fetches",
		metric.WithDescription("Token requests made to the credential, by outcome (success, failure, timeout, panic) and kind (database, resource_manager)."),
		metric.WithUnit("{request}")); err != nil {
		return nil, err
	}
	if m.fetchDuration, err = meter.Float64Histogram("entraauth.token.fetch.duration",
		metric.WithDescription("How long token requests to the credential took, by outcome and kind."),
		metric.WithUnit("s")); err != nil {
		return nil, err
	}
	if m.cacheHits, err = meter.Int64Counter("entraauth.token.cache.hits",
		metric.WithDescription("Tokens handed out from the cache without waiting for the credential."),
		metric.WithUnit("{token}")); err != nil {
		return nil, err
	}
	if m.waits, err = meter.Int64Counter("entraauth.token.waits",
		metric.WithDescription("Connects (and Token calls) that had no usable token and waited for a fetch."),
		metric.WithUnit("{wait}")); err != nil {
		return nil, err
	}
	_, err = meter.Float64ObservableGauge("entraauth.token.time_to_expiry",
		metric.WithDescription("Seconds until the cached database token expires; not reported while no token is cached."),
		metric.WithUnit("s"),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			if c := ts.current.Load(); c != nil {
				o.Observe(c.token.ExpiresOn.Sub(ts.now()).Seconds())
			}
			return nil
		}))
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// fetchKind tells database token requests from the Resource Manager one
// that finds a managed identity's name.
func fetchKind(scope string) attribute.KeyValue {
	if scope == publicCloud.armScope {
		return attribute.String("kind", "resource_manager")
	}
	for _, c := range clouds {
		if scope == c.armScope {
			return attribute.String("kind", "resource_manager")
		}
	}
	return attribute.String("kind", "database")
}

// recordFetch records one credential request.
func (m *metrics) recordFetch(scope, outcome string, took time.Duration) {
	opt := metric.WithAttributes(attribute.String("outcome", outcome), fetchKind(scope))
	m.fetches.Add(context.Background(), 1, opt)
	m.fetchDuration.Record(context.Background(), took.Seconds(), opt)
}
