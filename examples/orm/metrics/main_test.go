package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/examples/orm/internal/exampletest"
)

// TestMain fails the tests if the program leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEmulator runs the program against the emulator and checks what the
// SDK's manual reader collected: one database token fetched, the pool's
// connects served from the cache or waiting for that fetch, and a token
// about an hour from expiry.
func TestEmulator(t *testing.T) {
	var out bytes.Buffer
	exampletest.Emulator(t, func(ctx context.Context, w io.Writer) error {
		return run(ctx, io.MultiWriter(w, &out))
	})
	got := out.String()
	for _, want := range []string{
		"entraauth.token.fetches{kind=database,outcome=success} 1\n",
		"entraauth.token.fetch.duration{kind=database,outcome=success} count=1\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	hits := valueOf(t, got, "entraauth.token.cache.hits ", 0) // all four connects may have waited
	waits := valueOf(t, got, "entraauth.token.waits ", -1)
	if waits < 1 || hits+waits < 4 {
		t.Errorf("cache hits %d, waits %d: want the pool's 4 connects to be one or the other, the first waiting", hits, waits)
	}
	if ttl := valueOf(t, got, "entraauth.token.time_to_expiry ", -1); ttl < 3000 || ttl > 3700 {
		t.Errorf("time to expiry %ds, want about an hour", ttl)
	}
}

func TestAzure(t *testing.T) { exampletest.Azure(t, run) }

// valueOf returns the integer after the line prefix in out, or absent
// when there is no such line (-1: fail the test).
func valueOf(t *testing.T, out, prefix string, absent int) int {
	t.Helper()
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	if absent < 0 {
		t.Fatalf("no line %q in:\n%s", prefix, out)
	}
	return absent
}

// faultyCredential fails, hangs past its context or panics, as told, and
// otherwise mints an unsigned-in-spirit JWT.
type faultyCredential struct{ fault string }

func (c *faultyCredential) GetToken(ctx context.Context, _ policy.TokenRequestOptions) (azcore.AccessToken, error) {
	switch c.fault {
	case "failure":
		return azcore.AccessToken{}, errors.New("identity service said no")
	case "timeout":
		<-ctx.Done()
		time.Sleep(10 * time.Millisecond)
		return azcore.AccessToken{}, ctx.Err()
	case "panic":
		panic("credential exploded")
	}
	exp := time.Now().Add(time.Hour)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"exp": exp.Unix(), "oid": "o", "upn": "u@contoso.com"}).SignedString([]byte("k"))
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, err
}

// TestFetchOutcomesAreRecorded: each way a credential can fail is counted
// under its own outcome, and nothing is recorded as a cache hit.
func TestFetchOutcomesAreRecorded(t *testing.T) {
	for _, fault := range []string{"failure", "timeout", "panic"} {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		ts := entraauth.NewTokenSource(&faultyCredential{fault}, entraauth.WithMeterProvider(mp), entraauth.WithFetchTimeout(50*time.Millisecond))
		if _, err := ts.Token(context.Background()); err == nil {
			t.Fatalf("%s: Token succeeded", fault)
		}
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		got := strings.Join(describe(rm), "\n") + "\n"
		for _, want := range []string{
			"entraauth.token.fetches{kind=database,outcome=" + fault + "} 1\n",
			"entraauth.token.waits 1\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: missing %q in:\n%s", fault, want, got)
			}
		}
		if strings.Contains(got, "cache.hits") || strings.Contains(got, "time_to_expiry") {
			t.Errorf("%s: a cache hit or a token recorded without a token:\n%s", fault, got)
		}
		_ = mp.Shutdown(context.Background())
	}
	time.Sleep(20 * time.Millisecond) // the timed-out credential call returns
}

// BenchmarkWarmHook measures BeforeConnect with a cached token without
// metrics and with the SDK's meter provider, in the same run:
//
//	go test -run '^$' -bench WarmHook -count 10 ./metrics
func BenchmarkWarmHook(b *testing.B) {
	base, err := pgx.ParseConfig("host=srv.postgres.database.azure.com dbname=app sslmode=verify-full user=u")
	if err != nil {
		b.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	for _, v := range []struct {
		name string
		opts []entraauth.Option
	}{
		{"metrics=off", nil},
		{"metrics=sdk", []entraauth.Option{entraauth.WithMeterProvider(mp)}},
	} {
		b.Run(v.name, func(b *testing.B) {
			ts := entraauth.NewTokenSource(&faultyCredential{}, v.opts...)
			ctx := context.Background()
			cfg := *base
			if err := ts.BeforeConnect(ctx, &cfg); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				cfg.TLSConfig, cfg.User = base.TLSConfig, base.User
				_ = ts.BeforeConnect(ctx, &cfg)
			}
		})
	}
}
