package entraauth

import (
	"errors"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

func signedTestToken(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestUsernameFromToken(t *testing.T) {
	const mirid = "/subscriptions/0000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/orders-api"
	for _, tc := range []struct {
		name    string
		claims  jwt.MapClaims
		want    string
		wantErr error
	}{
		{"upn first", jwt.MapClaims{"upn": "a@x.com", "preferred_username": "b@x.com", "unique_name": "c@x.com"}, "a@x.com", nil},
		{"preferred_username next", jwt.MapClaims{"preferred_username": "b@x.com", "unique_name": "c@x.com"}, "b@x.com", nil},
		{"unique_name last", jwt.MapClaims{"unique_name": "c@x.com"}, "c@x.com", nil},
		{"empty upn skipped", jwt.MapClaims{"upn": "", "unique_name": "c@x.com"}, "c@x.com", nil},
		{"managed identity from xms_mirid", jwt.MapClaims{"xms_mirid": mirid}, "orders-api", nil},
		{"system-assigned identity is the resource name", jwt.MapClaims{"xms_mirid": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Web/sites/shop/"}, "shop", nil},
		{"no name", jwt.MapClaims{"oid": "1234", "appid": "5678"}, "", ErrNoUsername},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := UsernameFromToken(signedTestToken(t, tc.claims))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("UsernameFromToken = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNoUsernameErrorSaysWhatWasTriedAndWhatToDo(t *testing.T) {
	_, err := UsernameFromToken(signedTestToken(t, jwt.MapClaims{"oid": "1"}))
	for _, want := range []string{"upn", "preferred_username", "unique_name", "xms_mirid", "user=", "PGUSER", "WithUser"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestUsernameFromMalformedToken(t *testing.T) {
	for _, tok := range []string{"", "secret-opaque-value", "a.b", "a.b.c.d", "!!!.@@@.###", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.sig"} {
		_, err := UsernameFromToken(tok)
		if !errors.Is(err, ErrMalformedToken) {
			t.Fatalf("UsernameFromToken(%q): err = %v, want ErrMalformedToken", tok, err)
		}
		if tok != "" && strings.Contains(err.Error(), tok) {
			t.Fatalf("error repeats the token: %v", err)
		}
	}
}

func TestUnknownAlgorithmStillDecodes(t *testing.T) {
	// Entra's tokens are RS256; the decoder must not care about the header.
	tok := "eyJhbGciOiJub3BlIn0." + strings.Split(signedTestToken(t, jwt.MapClaims{"upn": "a@x.com"}), ".")[1] + ".c2ln"
	if got, err := UsernameFromToken(tok); err != nil || got != "a@x.com" {
		t.Fatalf("UsernameFromToken = %q, %v", got, err)
	}
}

// FuzzUsernameFromToken checks that no input panics the decoder and that no
// error repeats the input. Its seed corpus runs in every go test.
func FuzzUsernameFromToken(f *testing.F) {
	f.Add(signedTestToken(f, jwt.MapClaims{"upn": "a@x.com"}))
	f.Add(signedTestToken(f, jwt.MapClaims{"xms_mirid": "/a/b/c"}))
	f.Add(signedTestToken(f, jwt.MapClaims{"exp": "not a number"}))
	f.Add("a.b.c")
	f.Add("..")
	f.Add("eyJ9.eyJ9.")
	f.Fuzz(func(t *testing.T, token string) {
		name, err := UsernameFromToken(token)
		if err != nil {
			if name != "" {
				t.Fatalf("name %q with error %v", name, err)
			}
			if !errors.Is(err, ErrMalformedToken) && !errors.Is(err, ErrNoUsername) {
				t.Fatalf("untyped error: %v", err)
			}
			if len(token) >= 8 && strings.Contains(err.Error(), token) {
				t.Fatalf("error repeats the token: %v", err)
			}
		}
	})
}
