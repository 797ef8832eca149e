package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and its key,
// and returns their paths.
func writeCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pgentra proxy test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// pgxLogin connects with pgx to the proxy with extra settings and returns
// current_user.
func pgxLogin(t *testing.T, p *proxyProc, extra ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := strings.Join(append([]string{"host=" + p.host, "port=" + p.port, "dbname=postgres", "user=whoever"}, extra...), " ")
	conn, err := pgx.Connect(ctx, cs)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var user string
	err = conn.QueryRow(ctx, "select current_user").Scan(&user)
	return user, err
}

// The local password is asked for with SCRAM-SHA-256 by default (pgx's
// require_auth proves it), also over direct TLS with channel binding;
// --local-auth password asks in cleartext and warns when clients get no
// TLS.
func TestProxyLocalAuth(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("l0cal pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeCert(t)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--local-password-file", pwFile, "--tls-cert", certFile, "--tls-key", keyFile)...)
	if user, err := pgxLogin(t, p, "sslmode=disable", "password='l0cal pw'", "require_auth=scram-sha-256"); err != nil || user != alice.UPN {
		t.Errorf("pgx with require_auth=scram-sha-256: %q, %v", user, err)
	}
	if user, err := pgxLogin(t, p, "sslmode=verify-full", "sslrootcert="+certFile, "sslnegotiation=direct",
		"channel_binding=require", "password='l0cal pw'"); err != nil || user != alice.UPN {
		t.Errorf("pgx over direct TLS with channel binding: %q, %v", user, err)
	}
	if _, err := pgxLogin(t, p, "sslmode=disable", "password='l0cal pw'", "require_auth=password"); err == nil {
		t.Error("require_auth=password was satisfied under the default")
	}
	if strings.Contains(p.stderr.String(), "cleartext") {
		t.Errorf("a cleartext warning under the default: %s", p.stderr.String())
	}

	q := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--local-password-file", pwFile, "--local-auth", "password")...)
	if user, err := pgxLogin(t, q, "sslmode=disable", "password='l0cal pw'", "require_auth=password"); err != nil || user != alice.UPN {
		t.Errorf("pgx with require_auth=password under --local-auth password: %q, %v", user, err)
	}
	if s := q.stderr.String(); !strings.Contains(s, "level=WARN") || !strings.Contains(s, "cleartext") {
		t.Errorf("no warning about a cleartext password without TLS: %s", s)
	}
	for _, s := range []string{p.stderr.String(), q.stderr.String()} {
		if strings.Contains(s, "l0cal pw") {
			t.Error("the local password was logged")
		}
	}
}
