// Package proxymetrics exports a proxy.Server's Stats as Prometheus
// metrics: pgentra proxy --prometheus, and the proxy benchmark.
package proxymetrics

import (
	"net/http"

	"github.com/pgentra/entraauth/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Descriptions of the proxy's metrics, read from proxy.Server.Stats at
// scrape time: the relay keeps its counters with atomic adds, and nothing
// here runs on its path.
var (
	metricOpen = prometheus.NewDesc("pgentra_proxy_sessions_open",
		"Sessions being relayed now (or logging in upstream).", nil, nil)
	metricStarting = prometheus.NewDesc("pgentra_proxy_connections_starting",
		"Client connections in startup: before the local password, or before they are known to be cancel requests.", nil, nil)
	metricOpened = prometheus.NewDesc("pgentra_proxy_sessions_opened_total",
		"Sessions that logged in upstream.", nil, nil)
	metricFailed = prometheus.NewDesc("pgentra_proxy_sessions_failed_total",
		"Clients that got no session, by reason.", []string{"reason"}, nil)
	metricLogin = prometheus.NewDesc("pgentra_proxy_upstream_login_duration_seconds",
		"Successful upstream logins (sessions' and health checks'), by the time the token and the login took.", nil, nil)
	metricLastLogin = prometheus.NewDesc("pgentra_proxy_upstream_last_login_timestamp_seconds",
		"When the last successful upstream login finished, in Unix seconds; absent before the first.", nil, nil)
	metricFetches = prometheus.NewDesc("pgentra_proxy_token_fetches_total",
		"Token requests made to the credential.", nil, nil)
	metricFetchFailures = prometheus.NewDesc("pgentra_proxy_token_fetch_failures_total",
		"Token requests to the credential that failed.", nil, nil)
	metricExpiry = prometheus.NewDesc("pgentra_proxy_token_expiry_timestamp_seconds",
		"When the cached token expires, in Unix seconds; absent with no token.", nil, nil)
	metricBytes = prometheus.NewDesc("pgentra_proxy_bytes_relayed_total",
		"Bytes relayed between clients and the upstream server, by direction (to_upstream, to_client).", []string{"direction"}, nil)
	metricCancels = prometheus.NewDesc("pgentra_proxy_cancel_requests_total",
		"Cancel requests, by result (forwarded, or ignored: the key matched no session).", []string{"result"}, nil)
)

// statsCollector is a prometheus.Collector reading a proxy.Server's Stats.
type statsCollector struct{ srv *proxy.Server }

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{metricOpen, metricStarting, metricOpened, metricFailed, metricLogin, metricLastLogin,
		metricFetches, metricFetchFailures, metricExpiry, metricBytes, metricCancels} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(metricOpen, float64(st.Open))
	gauge(metricStarting, float64(st.Starting))
	counter(metricOpened, st.Opened)
	for _, r := range proxy.FailureReasons() {
		counter(metricFailed, st.FailedBy[r], string(r))
	}
	buckets := make(map[float64]uint64, len(st.Logins.Bounds))
	for i, b := range st.Logins.Bounds {
		buckets[b.Seconds()] = st.Logins.Counts[i]
	}
	ch <- prometheus.MustNewConstHistogram(metricLogin, st.Logins.Count, st.Logins.Sum.Seconds(), buckets)
	if !st.LastLogin.IsZero() {
		gauge(metricLastLogin, float64(st.LastLogin.UnixNano())/1e9)
	}
	counter(metricFetches, st.Token.Fetches)
	counter(metricFetchFailures, st.Token.FailedFetches)
	if !st.Token.ExpiresOn.IsZero() {
		gauge(metricExpiry, float64(st.Token.ExpiresOn.Unix()))
	}
	counter(metricBytes, st.BytesFromClients, "to_upstream")
	counter(metricBytes, st.BytesToClients, "to_client")
	counter(metricCancels, st.CancelsForwarded, "forwarded")
	counter(metricCancels, st.CancelsIgnored, "ignored")
}

// Handler serves srv's metrics, and the Go runtime's and the process's,
// from a registry of its own (not the global default).
func Handler(srv *proxy.Server) http.Handler {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(statsCollector{srv},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
