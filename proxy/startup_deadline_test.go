package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The client's startup deadline bounds its own part of the startup, not
// the wait for a token and the upstream login (ConnectTimeout's): a token
// slower than StartupTimeout still gives the client its session, and a
// slow failing credential still reaches the client as an ErrorResponse
// with the credential's message, and the log.
func TestProxySlowToken(t *testing.T) {
	const startup, latency = 300 * time.Millisecond, 1500 * time.Millisecond
	t.Run("success", func(t *testing.T) {
		f := newFixture(t, Config{StartupTimeout: startup})
		f.cred.SetLatency(latency)
		conn := connect(t, f.connString())
		if got := queryString(t, conn, "select current_user"); got != alice.UPN {
			t.Errorf("current_user = %q", got)
		}
	})
	t.Run("failure", func(t *testing.T) {
		f := newFixture(t, Config{StartupTimeout: startup})
		f.cred.SetLatency(latency)
		f.cred.FailWith(errors.New("AzureCLICredential: ERROR: Please run 'az login' to setup account"))
		_, err := pgx.Connect(testCtx(t), f.connString())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "az login") {
			t.Errorf("with a slow failing credential: %v; want 28000 with the credential's message", err)
		}
		waitFor(t, "the refusal to be logged", func() bool {
			logs := f.logs.String()
			return strings.Contains(logs, "session refused") && strings.Contains(logs, "az login")
		})
		if s := f.proxy.Stats(); s.Failed != 1 {
			t.Errorf("stats %+v; want one failure", s)
		}
	})
}
