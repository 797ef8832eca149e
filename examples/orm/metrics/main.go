// Command metrics runs a pgx pool authenticated by entraauth with
// OpenTelemetry metrics on, then prints current_user and what the metrics
// recorded: token fetches by outcome and kind, their latency, cache hits,
// connects that waited, and the token's time to expiry.
//
// The lines to add: one option on the hook (or Connector, or TokenSource),
// with the MeterProvider your program already exports from:
//
//	cfg.BeforeConnect = entraauth.Hook(cred, entraauth.WithMeterProvider(otel.GetMeterProvider()))
//
// Here the provider is the OpenTelemetry SDK's with a manual reader, so the
// program can print what was recorded.
//
// Run it from examples/orm:
//
//	go run ./metrics                                        # against a local emulator
//	PGHOST=mysrv.postgres.database.azure.com PGDATABASE=app go run ./metrics   # against Azure
package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/target"
)

func main() { target.Main(run) }

// run opens a pool of 4 connections with metrics on, runs 20 queries, and
// prints "current_user: <name>" and one line per recorded data point.
func run(ctx context.Context, out io.Writer) error {
	tg, err := target.Open(ctx, out)
	if err != nil {
		return err
	}
	defer tg.Close()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	// The lines to add.
	cfg, err := pgxpool.ParseConfig(tg.ConnString)
	if err != nil {
		return err
	}
	cfg.BeforeConnect = entraauth.Hook(tg.Credential, entraauth.WithMeterProvider(mp))
	cfg.MinConns, cfg.MaxConns = 4, 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()

	var user string
	for range 20 {
		if err := pool.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "current_user: %s\n", user)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return err
	}
	for _, line := range describe(rm) {
		fmt.Fprintln(out, line)
	}
	return nil
}

// describe returns one sorted line per data point: "name{attrs} value",
// with a histogram's count as its value.
func describe(rm metricdata.ResourceMetrics) []string {
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s%s %d", m.Name, attrs(p.Attributes), p.Value))
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s%s %.0f", m.Name, attrs(p.Attributes), p.Value))
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s%s count=%d", m.Name, attrs(p.Attributes), p.Count))
				}
			}
		}
	}
	sort.Strings(lines)
	return lines
}

func attrs(s attribute.Set) string {
	if s.Len() == 0 {
		return ""
	}
	var kv []string
	for _, a := range s.ToSlice() {
		kv = append(kv, string(a.Key)+"="+a.Value.String())
	}
	return "{" + strings.Join(kv, ",") + "}"
}
