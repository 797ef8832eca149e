package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgentra/entraauth/internal/pgtest"
)

// wiretap relays TCP connections to a server and records every byte the
// clients send, as someone on the network would see them.
type wiretap struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	sent  bytes.Buffer
	conns map[net.Conn]struct{}
}

func newWiretap(t *testing.T, target string) *wiretap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wiretap{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	w.wg.Add(1)
	go w.accept()
	t.Cleanup(func() {
		ln.Close()
		w.mu.Lock()
		for c := range w.conns {
			c.Close()
		}
		w.mu.Unlock()
		w.wg.Wait()
	})
	return w
}

func (w *wiretap) port() int { return w.ln.Addr().(*net.TCPAddr).Port }

// Write records bytes a client sent.
func (w *wiretap) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent.Write(p)
}

// recorded returns what clients have sent so far.
func (w *wiretap) recorded() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.sent.Bytes())
}

func (w *wiretap) track(cs ...net.Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range cs {
		w.conns[c] = struct{}{}
	}
}

func (w *wiretap) accept() {
	defer w.wg.Done()
	for {
		client, err := w.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", w.target, 10*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		w.track(client, server)
		w.wg.Add(2)
		go func() {
			defer w.wg.Done()
			// Recorded before the server has it, so before any answer
			// the client waits for.
			_, _ = io.Copy(io.MultiWriter(w, server), client)
			server.Close()
		}()
		go func() {
			defer w.wg.Done()
			_, _ = io.Copy(client, server)
			client.Close()
		}()
	}
}

// plaintextServer starts a real PostgreSQL that refuses TLS (ssl = off;
// password authentication over plaintext TCP) and returns a wiretap in
// front of it.
func plaintextServer(t *testing.T) *wiretap {
	t.Helper()
	pg := pgtest.StartForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, "ALTER SYSTEM SET ssl = off"); err != nil {
		t.Fatal(err)
	}
	// SetHBA reloads the configuration and returns once new connections
	// use it; pg_hba.conf stays as it is.
	if err := pg.SetHBA(ctx, pgtest.DefaultHBA()...); err != nil {
		t.Fatal(err)
	}
	return newWiretap(t, fmt.Sprintf("%s:%d", pg.Host, pg.Port))
}

// TestPsqlNeverSendsTokenInCleartext runs pgentra psql against a real
// PostgreSQL that refuses TLS, with every way of asking psql for
// plaintext, and checks that no token crossed the wire: pgentra refuses
// sslmode=disable, and psql, told to require TLS, gives up before it
// sends a password.
func TestPsqlNeverSendsTokenInCleartext(t *testing.T) {
	needPsql(t)
	tap := plaintextServer(t)
	az := issuerOnly(t).az(t, alice)
	addr := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres", tap.port())
	url := fmt.Sprintf("postgresql://127.0.0.1:%d/postgres", tap.port())
	env := childEnv(pathWith(az.Dir()), "PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", tap.port()), "PGDATABASE=postgres",
		"PGUSER="+alice.UPN, "PGCONNECT_TIMEOUT=10", "HOME="+t.TempDir())

	// The wiretap can see a password: psql itself, with prefer, sends one
	// in the clear to this server.
	r := runCmd(t, append(env, "PGSSLMODE=prefer", "PGPASSWORD=eyJ.control.password"), "psql", psqlQuery...)
	if !bytes.Contains(tap.recorded(), []byte("eyJ.control.password")) {
		t.Fatalf("the wiretap did not see psql's plaintext password (psql: %+v)", r)
	}

	serviceFile := filepath.Join(t.TempDir(), "pg_service.conf")
	service := fmt.Sprintf("[weak]\nhost=127.0.0.1\nport=%d\ndbname=postgres\nsslmode=prefer\n", tap.port())
	if err := os.WriteFile(serviceFile, []byte(service), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		env     []string
		args    []string
		refused bool // by pgentra, before getting a token
	}{
		{name: "PGSSLMODE=prefer", env: []string{"PGSSLMODE=prefer"}},
		{name: "PGSSLMODE=allow", env: []string{"PGSSLMODE=allow"}},
		{name: "PGSSLMODE=disable", env: []string{"PGSSLMODE=disable"}, refused: true},
		{name: "no sslmode", env: nil},
		{name: "key/value sslmode=disable", args: []string{addr + " sslmode=disable"}, refused: true},
		{name: "key/value sslmode=prefer", args: []string{addr + " sslmode=prefer"}},
		{name: "-d key/value sslmode=allow", args: []string{"-d", "sslmode=allow " + addr}},
		{name: "URL sslmode=prefer", args: []string{url + "?sslmode=prefer"}},
		{name: "URL sslmode=disable", args: []string{"--dbname=" + url + "?sslmode=disable"}, refused: true},
		{name: "URL requiressl=0, PGSSLMODE=verify-full", env: []string{"PGSSLMODE=verify-full"}, args: []string{url + "?requiressl=0"}},
		{name: "service file sslmode=prefer, PGSSLMODE=verify-full", env: []string{"PGSERVICEFILE=" + serviceFile, "PGSERVICE=weak", "PGSSLMODE=verify-full"}},
		{name: "service= with sslmode=prefer", env: []string{"PGSERVICEFILE=" + serviceFile}, args: []string{"service=weak"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, calls := len(tap.recorded()), az.Invocations()
			args := append([]string{"psql", "--credential", "cli"}, tt.args...)
			r := pgentra(t, append(append([]string(nil), env...), tt.env...), append(args, psqlQuery...)...)
			if sent := tap.recorded()[before:]; bytes.Contains(sent, []byte("eyJ")) {
				t.Fatalf("a token crossed the wire in plaintext (%+v)", r)
			}
			if r.code != 2 || r.stdout != "" {
				t.Errorf("%+v; want exit status 2 and nothing on stdout", r)
			}
			if tt.refused {
				if !strings.HasPrefix(r.stderr, "pgentra psql: sslmode=disable (from ") || !strings.Contains(r.stderr, "plaintext") {
					t.Errorf("stderr %q; want pgentra to refuse sslmode=disable", r.stderr)
				}
				if az.Invocations() != calls {
					t.Errorf("a token was fetched for a connection refused beforehand")
				}
			} else if !strings.Contains(r.stderr, "server does not support SSL, but SSL was required") {
				t.Errorf("stderr %q; want psql to require TLS", r.stderr)
			}
		})
	}
}

// TestPsqlRaisedSSLModeConnects: a weak sslmode raised to require still
// connects to a server with TLS, and says so.
func TestPsqlRaisedSSLModeConnects(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	env := childEnv(append(f.serverEnv(), pathWith(az.Dir()))...)
	url := fmt.Sprintf("postgresql://%s/postgres?sslmode=prefer", f.srv.Addr())
	r := pgentra(t, env, append([]string{"psql", "--credential", "cli", url}, psqlQuery...)...)
	if r.code != 0 || r.stdout != alice.UPN+"\n" || !strings.Contains(r.stderr, "sslmode=prefer (from psql's connection string argument) raised to require") {
		t.Errorf("%+v", r)
	}
	// A service file's sslmode=allow is raised too, over PGSSLMODE.
	serviceFile := filepath.Join(t.TempDir(), "pg_service.conf")
	if err := os.WriteFile(serviceFile, []byte("[azure]\nsslmode=allow\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = pgentra(t, append(env, "PGSERVICEFILE="+serviceFile, "PGSERVICE=azure", "PGSSLMODE=verify-full"),
		append([]string{"psql", "--credential", "cli"}, psqlQuery...)...)
	if r.code != 0 || r.stdout != alice.UPN+"\n" || !strings.Contains(r.stderr, `sslmode=allow (from service "azure" in `) {
		t.Errorf("with a service: %+v", r)
	}
}

// TestPsqlLaterConnectionsKeepTLS: psql's \connect with a connection
// string of its own takes PGSSLMODE, which pgentra leaves no weaker than
// require either, even when the first connection's connection string
// overrides it.
func TestPsqlLaterConnectionsKeepTLS(t *testing.T) {
	needPsql(t)
	tap := plaintextServer(t)
	f := newFixture(t)
	az := f.az(t, alice)
	env := childEnv(pathWith(az.Dir()), "PGSSLMODE=prefer", "PGUSER="+alice.UPN, "PGSSLROOTCERT="+f.srv.CAFile(), "PGCONNECT_TIMEOUT=10")
	first := f.srv.ConnString("sslmode=verify-full")
	later := fmt.Sprintf(`\c "host=127.0.0.1 port=%d dbname=postgres"`, tap.port())
	r := pgentra(t, env, "psql", "--credential", "cli", "-X", first, "-c", "select 1", "-c", later)
	if bytes.Contains(tap.recorded(), []byte("eyJ")) {
		t.Fatalf("\\connect sent the token in plaintext (%+v)", r)
	}
	if !strings.Contains(r.stderr, "server does not support SSL, but SSL was required") {
		t.Errorf("%+v; want psql's \\connect to require TLS", r)
	}
}
