package entraauth

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestTransportGuard(t *testing.T) {
	type target struct {
		host string
		tls  bool
	}
	for _, tc := range []struct {
		name       string
		connString string
		opts       []Option
		want       []target // nil: ErrInsecureTransport
	}{
		{"verify-full kept", "host=db.example.com sslmode=verify-full", nil, []target{{"db.example.com", true}}},
		{"require kept", "host=db.example.com sslmode=require", nil, []target{{"db.example.com", true}}},
		{"prefer loses its plaintext fallback", "host=db.example.com sslmode=prefer", nil, []target{{"db.example.com", true}}},
		{"default sslmode is prefer", "host=db.example.com", nil, []target{{"db.example.com", true}}},
		{"allow keeps only its TLS attempt", "host=db.example.com sslmode=allow", nil, []target{{"db.example.com", true}}},
		{"disable refused", "host=db.example.com sslmode=disable", nil, nil},
		{"disable refused on loopback too", "host=127.0.0.1 sslmode=disable", nil, nil},
		{"unix socket allowed", "host=/var/run/postgresql sslmode=disable", nil, []target{{"/var/run/postgresql", false}}},
		{"multi-host prefer", "host=a.example.com,b.example.com sslmode=prefer", nil, []target{{"a.example.com", true}, {"b.example.com", true}}},
		{"require refused when verified TLS is required", "host=db.example.com sslmode=require", []Option{WithRequireVerifiedTLS()}, nil},
		{"verify-ca refused when verified TLS is required", "host=db.example.com sslmode=verify-ca", []Option{WithRequireVerifiedTLS()}, nil},
		{"verify-full kept when verified TLS is required", "host=db.example.com sslmode=verify-full", []Option{WithRequireVerifiedTLS()}, []target{{"db.example.com", true}}},
		{"prefer keeps only verified TLS when required", "host=db.example.com sslmode=prefer", []Option{WithRequireVerifiedTLS()}, nil},
		{"plaintext allowed for local development", "host=127.0.0.1 sslmode=disable", []Option{WithInsecurePlaintextForLocalDevelopment()}, []target{{"127.0.0.1", false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := connConfig(t, tc.connString)
			// The pool hands hooks a shallow copy: the Fallbacks slice and its
			// elements are shared and must not change.
			shared := cfg.Fallbacks
			sharedCopy := make([]pgconn.FallbackConfig, len(shared))
			for i, fb := range shared {
				sharedCopy[i] = *fb
			}
			ts := NewTokenSource(newFakeCredential("a@x.com"), tc.opts...)
			err := ts.guardTransport(cfg, ts.connFacts(cfg))
			for i, fb := range shared {
				if *fb != sharedCopy[i] {
					t.Fatalf("shared fallback %d was modified", i)
				}
			}
			if tc.want == nil {
				if !errors.Is(err, ErrInsecureTransport) {
					t.Fatalf("err = %v, want ErrInsecureTransport", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []target{{cfg.Host, cfg.TLSConfig != nil}}
			for _, fb := range cfg.Fallbacks {
				got = append(got, target{fb.Host, fb.TLSConfig != nil})
			}
			if len(got) != len(tc.want) {
				t.Fatalf("targets = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("targets = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestInsecureTransportIsRefusedBeforeAnyTokenIsFetched(t *testing.T) {
	cred := newFakeCredential("a@x.com")
	err := Hook(cred)(context.Background(), connConfig(t, "host=db.example.com sslmode=disable user=u"))
	if !errors.Is(err, ErrInsecureTransport) {
		t.Fatalf("err = %v", err)
	}
	if n := cred.calls.Load(); n != 0 {
		t.Fatalf("credential called %d times for a refused connection", n)
	}
}

func TestBeforeConnectSetsPasswordAndOAuthProvider(t *testing.T) {
	cred := newFakeCredential("a@x.com")
	ts := NewTokenSource(cred)
	cfg := connConfig(t, "host=db.example.com sslmode=require user=explicit")
	if err := ts.BeforeConnect(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	minted := cred.allMinted()
	if cfg.Password != minted[0] {
		t.Fatal("password is not the token")
	}
	if cfg.OAuthTokenProvider == nil {
		t.Fatal("OAuthTokenProvider not set")
	}
	tok, err := cfg.OAuthTokenProvider(context.Background())
	if err != nil || tok != minted[0] {
		t.Fatalf("OAuthTokenProvider = %v; want the cached token", err)
	}
	if n := cred.calls.Load(); n != 1 {
		t.Fatalf("credential calls = %d, want 1 (one cache for password and OAUTHBEARER)", n)
	}
}
