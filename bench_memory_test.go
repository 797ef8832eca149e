package entraauth

// The memory benchmark of BENCHMARKS.md. It lives in the root package,
// not in bench/, because it moves the TokenSource's clock (the unexported
// now field) to drive refreshes instead of waiting for tokens to age.

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// memTokenLen is about the length of a real Entra database token.
const memTokenLen = 1500

// memCredential hands out a new token of memTokenLen bytes per call,
// expiring lifetime after the test clock's now. Unlike fakeCredential it
// records nothing, so it holds no memory that grows with the calls.
type memCredential struct {
	clock    func() time.Time
	lifetime time.Duration
	prefix   string
	calls    atomic.Int64
}

func (c *memCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	n := strconv.FormatInt(c.calls.Add(1), 10)
	tok := c.prefix[:memTokenLen-len(n)] + n // a new allocation per token, as a real credential makes
	return azcore.AccessToken{Token: tok, ExpiresOn: c.clock().Add(c.lifetime)}, nil
}

// heapAlloc returns the live heap after two collections.
func heapAlloc() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkTokenSourceMemory measures the heap a TokenSource holding one
// token retains (retained-B, the token's own bytes included), then drives
// b.N background refreshes — each moves the clock to the token's refresh
// point and lets one connect-path call start the refresh — and measures
// again what the TokenSource retains, as the live heap with it minus the
// live heap once it is dropped (retained-end-B). growth-B is the
// difference: what the TokenSource gained over the refreshes.
// heap-growth-B is the whole live heap's growth over the refreshes (after
// 100 warm-up refreshes), which also counts the runtime's own bookkeeping
// (goroutine descriptors, OS threads) and so is noisier. allocs/op and
// B/op are per refresh. Run with -benchtime 10000x for the 10,000
// refreshes of issue 4.
func BenchmarkTokenSourceMemory(b *testing.B) {
	ctx := context.Background()
	clock := newTestClock()
	cred := &memCredential{clock: clock.Now, lifetime: time.Hour, prefix: strings.Repeat("x", memTokenLen)}

	before := heapAlloc()
	ts := NewTokenSource(cred)
	ts.now = clock.Now
	if _, err := ts.Token(ctx); err != nil {
		b.Fatal(err)
	}
	retained := heapAlloc() - before

	refresh := func(i int) {
		refreshAt := ts.Stats().RefreshAt
		clock.mu.Lock()
		clock.now = refreshAt
		clock.mu.Unlock()
		want := int64(i + 2)
		for ts.Stats().Fetches < want || ts.inflight.Load() != nil {
			if _, err := ts.Token(ctx); err != nil { // starts the background refresh
				b.Fatal(err)
			}
			runtime.Gosched()
		}
	}
	// A few refreshes first: the first ones make the runtime allocate what
	// it keeps for good (a goroutine descriptor, a thread), which is not
	// the TokenSource's.
	const warmup = 100
	for i := range warmup {
		refresh(i)
	}
	warm := heapAlloc()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		refresh(warmup + i)
	}
	b.StopTimer()
	if got := ts.Stats(); got.Fetches != int64(warmup+b.N)+1 || got.FailedFetches != 0 {
		b.Fatalf("fetches = %d (%d failed), want %d", got.Fetches, got.FailedFetches, warmup+b.N+1)
	}
	withTS := heapAlloc()
	runtime.KeepAlive(ts)
	ts, refresh = nil, nil // drop every reference to the TokenSource
	retainedEnd := withTS - heapAlloc()
	runtime.KeepAlive(cred) // it is not the TokenSource's: keep it out of the difference

	b.ReportMetric(float64(retained), "retained-B")
	b.ReportMetric(float64(retainedEnd), "retained-end-B")
	b.ReportMetric(float64(retainedEnd-retained), "growth-B")
	b.ReportMetric(float64(withTS-warm), "heap-growth-B")
	b.ReportMetric(memTokenLen, "token-B")
}
