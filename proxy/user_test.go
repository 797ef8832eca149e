package proxy

import (
	"context"
	"errors"
	"os/user"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Config.User is the upstream user even when it is the OS user's name,
// which pgx fills in when none is named and the library would otherwise
// replace by the token's principal.
func TestProxyUserIsOSUser(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	f := newFixture(t, Config{User: me.Username})
	// The OS user's role, for alice's token, as pgaadauth_create_principal
	// would map it.
	if err := f.srv.AddRole(context.Background(), me.Username, alice.ObjectID); err != nil {
		t.Skip(err) // the OS user is the backend's admin
	}
	for _, upstream := range []string{"", "postgres://" + f.srv.Addr() + "/postgres?sslmode=verify-full&sslrootcert=" + f.srv.CAFile()} {
		p := f.proxy
		addr := f.addr
		if upstream != "" {
			p, addr = startProxy(t, Config{Upstream: upstream, TokenSource: f.ts, User: me.Username, Logger: f.proxy.log})
		}
		_ = p
		g := *f
		g.addr = addr
		conn := connect(t, g.connString())
		if got := queryString(t, conn, "select current_user"); got != me.Username {
			t.Errorf("upstream %q: current_user = %q; want Config.User %q", upstream, got, me.Username)
		}
	}
}

// A client naming another user than the proxy's gets a session as the
// proxy's user and a one-line notice in the log; with StrictUser it is
// refused with 28000 naming the principal, before any upstream login. A
// client naming the proxy's user is let in either way, with no notice.
func TestProxyStrictUser(t *testing.T) {
	f := newFixture(t, Config{})
	conn := connect(t, f.connString("user=someone-else"))
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("current_user = %q", got)
	}
	waitFor(t, "the notice", func() bool { return strings.Contains(f.logs.String(), "client_user=someone-else") })
	if n := strings.Count(f.logs.String(), "user name is ignored"); n != 1 {
		t.Errorf("%d notices; want 1: %s", n, f.logs.String())
	}
	conn = connect(t, f.connString("user="+alice.UPN))
	queryString(t, conn, "select 1")
	if n := strings.Count(f.logs.String(), "user name is ignored"); n != 1 {
		t.Errorf("a notice for a client naming the principal: %s", f.logs.String())
	}

	g := newFixture(t, Config{StrictUser: true})
	_, err := pgx.Connect(testCtx(t), g.connString("user=someone-else"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, alice.UPN) || !strings.Contains(pgErr.Message, "someone-else") {
		t.Errorf("StrictUser with another user: %v; want 28000 naming %s", err, alice.UPN)
	}
	if st := g.srv.Stats(); st.Accepted != 0 {
		t.Errorf("the refused client logged in upstream: %+v", st)
	}
	conn = connect(t, g.connString("user="+alice.UPN))
	if got := queryString(t, conn, "select current_user"); got != alice.UPN {
		t.Errorf("StrictUser with the principal: current_user = %q", got)
	}

	h := newFixture(t, Config{StrictUser: true, User: alice.UPN})
	if _, err := pgx.Connect(testCtx(t), h.connString("user="+bob.UPN)); !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Errorf("StrictUser with User set and another client user: %v", err)
	}
	conn = connect(t, h.connString("user="+alice.UPN))
	queryString(t, conn, "select 1")
}
