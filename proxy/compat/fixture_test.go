package compat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
	"github.com/pgentra/entraauth/proxy"
)

// fixture is a real PostgreSQL with a superuser role for an Entra
// principal whose password is the principal's token (as Azure checks it),
// and a pgentra proxy in front of it, logging in as that principal with a
// TokenSource over verified TLS. The proxy listens on loopback TCP with
// TLS (its own CA) and on a unix socket, as pgentra proxy can.
type fixture struct {
	pg    *pgtest.Server
	user  string // the principal's name, and its role
	token string // the principal's token: the role's password
	proxy *proxy.Server

	proxyPort      int
	proxySocketDir string // holds .s.PGSQL.<proxyPort>
	proxyCAFile    string // the CA of the proxy's TLS certificate

	ts        *entraauth.TokenSource
	serverTLS *tls.Config // the proxy's
}

// startProxy starts a proxy configured by cfg, with its upstream,
// TokenSource, TLS and log (to logPath) filled in from f, on a loopback
// port and a unix socket with that port's number, until the test ends.
func (f *fixture) startProxy(t *testing.T, logPath string, cfg proxy.Config) (p *proxy.Server, port int, socketDir string) {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Upstream = f.pg.ConnString(f.user, "")
	cfg.TokenSource = f.ts
	cfg.TLSConfig = f.serverTLS
	cfg.Logger = slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err = proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = tcp.Addr().(*net.TCPAddr).Port
	// A short directory: a unix socket path has a limit of about 100 bytes.
	socketDir, err = os.MkdirTemp("", "compat")
	if err != nil {
		t.Fatal(err)
	}
	unix, err := net.Listen("unix", filepath.Join(socketDir, ".s.PGSQL."+strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- p.Serve(tcp) }()
	go func() { done <- p.Serve(unix) }()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		for range 2 {
			if err := <-done; err != proxy.ErrServerClosed {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		}
		logFile.Close()
		if t.Failed() {
			t.Logf("proxy log (tail):\n%s", tailFile(logPath, 40))
		}
		os.RemoveAll(socketDir)
	})
	return p, port, socketDir
}

// newFixture sets up the role for user on the shared server and starts a
// proxy for it that lives until the test ends.
func newFixture(t *testing.T, user string) *fixture {
	t.Helper()
	t.Setenv("PGUSER", "")
	t.Setenv("PGPASSWORD", "")
	f := &fixture{pg: sharedPG.Get(t), user: user}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	cred := entratest.NewCredential(iss, entratest.User(user))
	cred.SetLifetime(6 * time.Hour) // longer than any run: the role's password stays the token
	ts := entraauth.NewTokenSource(cred, entraauth.WithRequireVerifiedTLS())
	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.token = tok.Value
	if err := f.pg.CreateRole(ctx, user, f.token); err != nil {
		if !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
		if err := f.pg.SetPassword(ctx, user, f.token); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.pg.Exec(ctx, fmt.Sprintf("ALTER ROLE %q SUPERUSER", user)); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	f.serverTLS, f.proxyCAFile = proxyTLS(t, dir)
	f.ts = ts
	f.proxy, f.proxyPort, f.proxySocketDir = f.startProxy(t, filepath.Join(dir, "proxy.log"), proxy.Config{})
	t.Cleanup(func() {
		b, _ := os.ReadFile(filepath.Join(dir, "proxy.log"))
		if strings.Contains(string(b), f.token) {
			t.Error("the proxy's log holds the token")
		}
	})
	return f
}

// conn holds the parts of a connection string, for the clients that take
// them apart (node-postgres) and for building libpq strings.
type conn struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	Password string `json:"password,omitempty"`
	Database string `json:"database"`
	CAFile   string `json:"cafile,omitempty"` // verify-full against this CA; empty: no TLS (unix socket)
	AppName  string `json:"application_name,omitempty"`
	Options  string `json:"options,omitempty"` // the server's command-line options, like "-c idle_session_timeout=1000"
}

// String is the libpq key/value form.
func (c conn) String() string {
	kv := []string{"host=" + quote(c.Host), "port=" + strconv.Itoa(c.Port), "user=" + quote(c.User), "dbname=" + quote(c.Database), "connect_timeout=10"}
	if c.Password != "" {
		kv = append(kv, "password="+quote(c.Password))
	}
	if c.CAFile != "" {
		kv = append(kv, "sslmode=verify-full", "sslrootcert="+quote(c.CAFile))
	} else {
		kv = append(kv, "sslmode=disable")
	}
	if c.AppName != "" {
		kv = append(kv, "application_name="+quote(c.AppName))
	}
	if c.Options != "" {
		kv = append(kv, "options="+quote(c.Options))
	}
	return strings.Join(kv, " ")
}

func quote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// direct is a connection to the server over verified TLS as the
// principal, with the token as the password.
func (f *fixture) direct(db string) conn {
	return conn{Host: f.pg.Host, Port: int(f.pg.Port), User: f.user, Password: f.token, Database: db, CAFile: f.pg.CAFile}
}

// directUnix is a connection to the server's unix socket as the principal.
func (f *fixture) directUnix(db string) conn {
	return conn{Host: f.pg.SocketDir, Port: int(f.pg.Port), User: f.user, Password: f.token, Database: db}
}

// proxied is a connection to the proxy over verified TLS, naming the same
// user and no password: the proxy supplies the token.
func (f *fixture) proxied(db string) conn {
	return conn{Host: "127.0.0.1", Port: f.proxyPort, User: f.user, Database: db, CAFile: f.proxyCAFile}
}

// proxiedUnix is a connection to the proxy's unix socket.
func (f *fixture) proxiedUnix(db string) conn {
	return conn{Host: f.proxySocketDir, Port: f.proxyPort, User: f.user, Database: db}
}

// proxyTLS makes a CA and a certificate it signed for 127.0.0.1 and
// localhost, and returns the proxy's server TLS configuration and the CA's
// PEM file in dir.
func proxyTLS(t *testing.T, dir string) (*tls.Config, string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "compat proxy CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "proxy-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}, caFile
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
