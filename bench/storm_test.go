package bench

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/jackc/pgx/v5"
	"github.com/pgentra/entraauth"
)

// failingCredential fails every call, as the identity service does during
// an outage, after a small latency.
type failingCredential struct{ calls atomic.Int64 }

func (c *failingCredential) GetToken(ctx context.Context, _ policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls.Add(1)
	select {
	case <-time.After(time.Millisecond):
	case <-ctx.Done():
	}
	return azcore.AccessToken{}, errors.New("identity service unavailable")
}

// BenchmarkFailureStorm measures how hard a TokenSource with no usable
// token hits a failing credential under a fixed connect load: 8 workers
// each connecting every 8 ms (1,000 connects a second) for 3 seconds. It
// reports credential calls per second; every connect fails either way.
//
//	go test -run '^$' -bench FailureStorm -benchtime 1x -count 3 ./bench
func BenchmarkFailureStorm(b *testing.B) {
	const (
		workers  = 8
		interval = 8 * time.Millisecond
		runFor   = 3 * time.Second
	)
	base, err := pgx.ParseConfig("host=srv.postgres.database.azure.com dbname=app sslmode=require user=app")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		cred := &failingCredential{}
		ts := entraauth.NewTokenSource(cred)
		var connects, succeeded atomic.Int64
		end := time.Now().Add(runFor)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				tick := time.NewTicker(interval)
				defer tick.Stop()
				for time.Now().Before(end) {
					cfg := base.Copy()
					if ts.BeforeConnect(context.Background(), cfg) == nil {
						succeeded.Add(1)
					}
					connects.Add(1)
					<-tick.C
				}
			})
		}
		wg.Wait()
		if succeeded.Load() != 0 {
			b.Fatal("a connect succeeded with a failing credential")
		}
		b.ReportMetric(float64(cred.calls.Load())/runFor.Seconds(), "calls/s")
		b.ReportMetric(float64(connects.Load())/runFor.Seconds(), "connects/s")
	}
}
