package compat

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgentra/entraauth/internal/pgtest"
	"github.com/pgentra/entraauth/proxy"
)

// Each real client gives the proxy's local password with SCRAM-SHA-256
// (the default), over verified TLS (where libpq's clients use channel
// binding) and over the unix socket, and a wrong one is refused with
// 28P01; the password appears in no log line.
func TestClientsLocalPassword(t *testing.T) {
	const password = "compat l0cal pw"
	f := newFixture(t, "compat-local@contoso.com")
	logPath := filepath.Join(t.TempDir(), "local.log")
	_, port, socketDir := f.startProxy(t, logPath, proxy.Config{LocalPassword: password})
	vias := []struct {
		name string
		c    conn
	}{
		{"tls", conn{Host: "127.0.0.1", Port: port, User: f.user, Database: "postgres", CAFile: f.proxyCAFile}},
		{"unix", conn{Host: socketDir, Port: port, User: f.user, Database: "postgres"}},
	}
	for _, cl := range realClients {
		for _, via := range vias {
			t.Run(cl.name+"/"+via.name, func(t *testing.T) {
				c := via.c
				c.Password = password
				if out, err := runOnce(t, f, cl, c); err != nil || (out != "1" && out != "ROW 1") {
					t.Errorf("with the local password: %v: %s", err, out)
				}
				c.Password = "wrong"
				if out, err := runOnce(t, f, cl, c); err == nil || !strings.Contains(out, "password authentication failed") {
					t.Errorf("with a wrong password: %v: %s", err, out)
				}
			})
		}
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), password) {
		t.Error("the proxy's log holds the local password")
	}
}

// runOnce runs "select 1" with cl on c and returns its output.
func runOnce(t *testing.T, f *fixture, cl realClient, c conn) (string, error) {
	t.Helper()
	cmd, err := cl.find(t, f, c)
	if err != nil {
		if pgtest.Required() {
			t.Fatalf("%s: %v (clients are required because %s=1)", cl.name, err, pgtest.RequireEnv)
		}
		t.Skipf("%s: %v", cl.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...) // a hang guard
	cmd.Env = suiteBaseEnv()
	cmd.Stdin = strings.NewReader("select 1;\n")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
