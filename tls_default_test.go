package entraauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgentra/entraauth/internal/pgtest"
)

// noSSLEnv clears what would name an sslmode or a root certificate outside
// the connection string: the variables, and the files pgx reads from the
// home directory (~/.postgresql/root.crt, ~/.pg_service.conf).
func noSSLEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGSERVICE", "PGSERVICEFILE", "PGPASSWORD", "PGUSER"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
}

// tcpConnString is a connection string to pg over TCP naming no sslmode
// and no root certificate.
func tcpConnString(pg *pgtest.Server, user string, extra ...string) string {
	return strings.Join(append([]string{"host=" + pg.Host, "port=" + itoa(int(pg.Port)), "dbname=postgres", "user=" + user, "connect_timeout=10"}, extra...), " ")
}

// roleSeq makes role names unique across -count runs on the shared server.
var roleSeq atomic.Int64

// uniqueRole returns a role name (an Entra user principal name) used by no
// other test or run.
func uniqueRole(prefix string) string {
	return prefix + "-" + itoa(int(roleSeq.Add(1))) + "@contoso.com"
}

// serverSaw reports whether the server log shows a login attempt by role
// with a password: authorized, or refused for its password.
func serverSaw(pg *pgtest.Server, role string) bool {
	log := pg.Log()
	return strings.Contains(log, "connection authorized: user="+role) ||
		strings.Contains(log, `password authentication failed for user "`+role+`"`)
}

func TestNoSSLModeRefusesAnUntrustedServerAndSendsNoToken(t *testing.T) {
	pg := testServer(t)
	noSSLEnv(t)
	role := uniqueRole("tlsdefault1")
	cred := roleCredential(t, pg, role, role, "")
	ctx := context.Background()

	// The server's certificate is signed by a CA of its own, which is not
	// in the system pool: without sslmode, nothing may be sent.
	pool := newPool(t, tcpConnString(pg, role), Hook(cred), 2)
	err := pool.Ping(ctx)
	if !errors.Is(err, ErrServerNotVerified) {
		t.Fatalf("err = %v, want ErrServerNotVerified", err)
	}
	var unknownCA x509.UnknownAuthorityError
	if !errors.As(err, &unknownCA) {
		t.Errorf("err = %v, want it to wrap x509.UnknownAuthorityError", err)
	}
	for _, want := range []string{"sslrootcert", "DigiCert Global Root G2", "Microsoft RSA Root CA 2017", "sslmode=require"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	db := sql.OpenDB(Connector(tcpConnString(pg, role), cred))
	defer db.Close()
	if err := db.PingContext(ctx); !errors.Is(err, ErrServerNotVerified) {
		t.Fatalf("Connector: err = %v, want ErrServerNotVerified", err)
	}
	if !strings.Contains(pg.Log(), "could not accept SSL connection") {
		t.Error("the server log shows no refused TLS handshake: did the test reach the server?")
	}
	if serverSaw(pg, role) {
		t.Fatal("the server received a login with a password although its certificate was not verified")
	}

	// sslmode=require, named explicitly, still connects without
	// verification: the control showing the check above can fail.
	pool = newPool(t, tcpConnString(pg, role, "sslmode=require"), Hook(cred), 2)
	if user, err := currentUser(ctx, pool); err != nil || user != role {
		t.Fatalf("sslmode=require: current_user = %q, %v", user, err)
	}
	if !serverSaw(pg, role) {
		t.Fatal("the server log shows no login for sslmode=require: serverSaw cannot see logins")
	}
}

func TestNoSSLModeTrustsSSLRootCert(t *testing.T) {
	pg := testServer(t)
	noSSLEnv(t)
	role := uniqueRole("tlsdefault2")
	cred := roleCredential(t, pg, role, role, "")
	ctx := context.Background()

	pool := newPool(t, tcpConnString(pg, role, "sslrootcert="+pg.CAFile), Hook(cred), 2)
	if user, err := currentUser(ctx, pool); err != nil || user != role {
		t.Fatalf("sslrootcert: current_user = %q, %v", user, err)
	}

	t.Setenv("PGSSLROOTCERT", pg.CAFile)
	db := sql.OpenDB(Connector(tcpConnString(pg, role), cred))
	defer db.Close()
	var user string
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil || user != role {
		t.Fatalf("PGSSLROOTCERT: current_user = %q, %v", user, err)
	}
}

func TestSSLModeNamedElsewhereIsKept(t *testing.T) {
	pg := testServer(t)
	role := uniqueRole("tlsdefault3")
	cred := roleCredential(t, pg, role, role, "")
	ctx := context.Background()
	connect := func(t *testing.T, connString string) {
		t.Helper()
		pool := newPool(t, connString, Hook(cred), 1)
		if user, err := currentUser(ctx, pool); err != nil || user != role {
			t.Fatalf("current_user = %q, %v", user, err)
		}
	}
	t.Run("PGSSLMODE", func(t *testing.T) {
		noSSLEnv(t)
		t.Setenv("PGSSLMODE", "require")
		connect(t, tcpConnString(pg, role))
	})
	t.Run("service file", func(t *testing.T) {
		noSSLEnv(t)
		file := filepath.Join(t.TempDir(), "pg_service.conf")
		if err := os.WriteFile(file, []byte("[app]\nsslmode=require\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		connect(t, tcpConnString(pg, role, "service=app", "servicefile="+file))
	})
	t.Run("URL ssl=true", func(t *testing.T) {
		noSSLEnv(t)
		connect(t, "postgres://"+strings.ReplaceAll(role, "@", "%40")+"@"+pg.Addr()+"/postgres?ssl=true&connect_timeout=10")
	})
}

func TestNoSSLModeHostNameMismatchSaysWhatToDo(t *testing.T) {
	pg := testServer(t)
	noSSLEnv(t)
	role := uniqueRole("tlsdefault4")
	cred := roleCredential(t, pg, role, role, "")
	// A name the certificate (localhost, 127.0.0.1, ::1) does not list,
	// resolved to the server.
	cfg, err := pgxpool.ParseConfig(strings.Replace(tcpConnString(pg, role, "sslrootcert="+pg.CAFile), "host="+pg.Host, "host=db.example.test", 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.LookupFunc = func(context.Context, string) ([]string, error) { return []string{pg.Host}, nil }
	cfg.BeforeConnect = Hook(cred)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	err = pool.Ping(context.Background())
	var hostErr x509.HostnameError
	if !errors.Is(err, ErrServerNotVerified) || !errors.As(err, &hostErr) {
		t.Fatalf("err = %v, want ErrServerNotVerified wrapping x509.HostnameError", err)
	}
	for _, want := range []string{`not for "db.example.test"`, "localhost, 127.0.0.1", "sslmode=require"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	if serverSaw(pg, role) {
		t.Fatal("the server received a login although the host name did not match")
	}
}

func TestNoSSLModeServerRefusingTLSGetsNoToken(t *testing.T) {
	pg := testServer(t)
	noSSLEnv(t)
	role := uniqueRole("tlsdefault5")
	cred := roleCredential(t, pg, role, role, "")
	proxy := newTLSRefusingProxy(t, pg.Addr())
	_, port, _ := net.SplitHostPort(proxy.ln.Addr().String())
	pool := newPool(t, "host=127.0.0.1 port="+port+" dbname=postgres user="+role+" connect_timeout=10", Hook(cred), 1)
	if err := pool.Ping(context.Background()); err == nil {
		t.Fatal("connected although the server refused TLS")
	}
	if proxy.conns.Load() == 0 || proxy.plaintext.Load() != 0 {
		t.Fatalf("connections = %d, plaintext startups = %d; want some and 0", proxy.conns.Load(), proxy.plaintext.Load())
	}
}

// selfSigned returns a certificate for the given DNS names and IP addresses.
func selfSigned(t *testing.T, dnsNames []string, ips []net.IP) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test"},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestVerifierChecksLikeVerifyFull(t *testing.T) {
	cert := selfSigned(t, []string{"srv.example.com"}, nil)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	state := tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	verify := func(host string, roots *x509.CertPool) error {
		c := verifyingTLS(&tls.Config{InsecureSkipVerify: true, RootCAs: roots}, host)
		if c.ServerName != host || !verifiesHost(c) || unverified(c) {
			t.Fatalf("config for %s: ServerName %q, verifies %v", host, c.ServerName, verifiesHost(c))
		}
		return c.VerifyConnection(state)
	}
	if err := verify("srv.example.com", roots); err != nil {
		t.Fatalf("trusted certificate for its name: %v", err)
	}
	err := verify("10.0.0.1", roots)
	if !errors.Is(err, ErrServerNotVerified) || !strings.Contains(err.Error(), `issued for srv.example.com, not for "10.0.0.1"`) ||
		!strings.Contains(err.Error(), "sslmode=require") {
		t.Fatalf("IP address against a certificate for a name: %v", err)
	}
	err = verify("srv.example.com", nil)
	if !errors.Is(err, ErrServerNotVerified) || !strings.Contains(err.Error(), "system's trusted CAs") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	if err := verifyingTLS(&tls.Config{InsecureSkipVerify: true}, "h").VerifyConnection(tls.ConnectionState{}); !errors.Is(err, ErrServerNotVerified) {
		t.Fatalf("no certificate: %v", err)
	}
}

func TestUnnamedSSLModeBecomesVerifyFull(t *testing.T) {
	noSSLEnv(t)
	for _, tc := range []struct {
		connString string
		verified   bool // the guard's TLS config verifies the host
	}{
		{"host=db.example.com", true},
		{"host=10.1.2.3", true},
		{"host=db.example.com sslnegotiation=direct", true},
		{"host=a.example.com,b.example.com", true},
		{"postgres://db.example.com/app", true},
		{"host=db.example.com application_name='sslmode=require'", true}, // quoted: not a setting
		{"host=db.example.com sslmode=require", false},
		{"host=db.example.com sslmode=prefer", false},
		{"host=db.example.com sslmode=verify-ca", false},
		{"postgres://db.example.com/app?sslmode=require", false},
		{"postgres://db.example.com/app?ssl=true", false},
		{"host=db.example.com sslmode=verify-full", true},
	} {
		shared := connConfig(t, tc.connString)
		cfg := *shared // a shallow copy, as database/sql's connector hands the hook
		origSkip, origVerify := shared.TLSConfig.InsecureSkipVerify, shared.TLSConfig.VerifyConnection
		ts := NewTokenSource(newFakeCredential("a@x.com"))
		if err := ts.guardTransport(&cfg, ts.connFacts(&cfg)); err != nil {
			t.Fatalf("%s: %v", tc.connString, err)
		}
		if shared.TLSConfig.InsecureSkipVerify != origSkip || (shared.TLSConfig.VerifyConnection == nil) != (origVerify == nil) {
			t.Fatalf("%s: the shared TLS config was modified", tc.connString)
		}
		targets := []*tls.Config{cfg.TLSConfig}
		hosts := []string{cfg.Host}
		for _, fb := range cfg.Fallbacks {
			targets, hosts = append(targets, fb.TLSConfig), append(hosts, fb.Host)
		}
		for i, c := range targets {
			if c == nil {
				t.Fatalf("%s: a plaintext target is left", tc.connString)
			}
			if got := verifiesHost(c); got != tc.verified {
				t.Errorf("%s: target %s verifies the host: %v, want %v", tc.connString, hosts[i], got, tc.verified)
			}
			if tc.verified && c.ServerName != hosts[i] {
				t.Errorf("%s: target %s has ServerName %q", tc.connString, hosts[i], c.ServerName)
			}
		}
	}
}

func TestVerifyingConfigIsCachedPerConfigNotMixed(t *testing.T) {
	noSSLEnv(t)
	const connString = "host=db.example.com dbname=app"
	ts := NewTokenSource(newFakeCredential("a@x.com"))
	plain := connConfig(t, connString)
	custom := connConfig(t, connString)
	customRoots := x509.NewCertPool()
	custom.TLSConfig.RootCAs = customRoots
	custom.TLSConfig.MinVersion = tls.VersionTLS13

	upgraded := func(shared *pgx.ConnConfig) *tls.Config {
		cfg := shared.Copy() // what pgxpool hands the hook: a deep copy
		if err := ts.guardTransport(cfg, ts.connFacts(cfg)); err != nil {
			t.Fatal(err)
		}
		return cfg.TLSConfig
	}
	p1, c1 := upgraded(plain), upgraded(custom)
	p2, c2 := upgraded(plain), upgraded(custom)
	if p1 != p2 {
		t.Error("the same config got a new verifying TLS config on each connect")
	}
	if p1.RootCAs != nil || p1.MinVersion != 0 {
		t.Errorf("plain config got the custom one's settings: RootCAs %v, MinVersion %x", p1.RootCAs, p1.MinVersion)
	}
	if c1.RootCAs != customRoots || c1.MinVersion != tls.VersionTLS13 || c2.RootCAs != customRoots {
		t.Errorf("custom config lost its settings: RootCAs %p, MinVersion %x", c1.RootCAs, c1.MinVersion)
	}
	if !verifiesHost(c1) || !verifiesHost(p1) {
		t.Error("a config was not upgraded")
	}
}

// TestTLSFingerprintCoversConfig fails when tls.Config gains a field that
// fingerprint neither compares nor rules out: review fingerprint then.
func TestTLSFingerprintCoversConfig(t *testing.T) {
	known := map[string]bool{}
	for _, f := range []string{
		// compared
		"Certificates", "NextProtos", "CipherSuites", "CurvePreferences", "EncryptedClientHelloConfigList",
		"EncryptedClientHelloKeys", "RootCAs", "ClientCAs", "ServerName", "SessionTicketKey", "ClientAuth",
		"Renegotiation", "MinVersion", "MaxVersion", "InsecureSkipVerify", "PreferServerCipherSuites",
		"SessionTicketsDisabled", "DynamicRecordSizingDisabled",
		// not cached when set
		"Rand", "Time", "NameToCertificate", "GetCertificate", "GetClientCertificate", "GetConfigForClient",
		"VerifyPeerCertificate", "VerifyConnection", "ClientSessionCache", "UnwrapSession", "WrapSession",
		"KeyLogWriter", "EncryptedClientHelloRejectionVerify", "GetEncryptedClientHelloKeys",
	} {
		known[f] = true
	}
	typ := reflect.TypeFor[tls.Config]()
	for i := range typ.NumField() {
		if f := typ.Field(i); f.IsExported() && !known[f.Name] {
			t.Errorf("tls.Config.%s is not covered by fingerprint", f.Name)
		}
	}
	if n := reflect.TypeFor[tlsFingerprint]().NumField(); n != 18 {
		t.Errorf("tlsFingerprint has %d fields; update this test's list", n)
	}
}

func TestVerifyingConfigAllocatesNothingWhenWarm(t *testing.T) {
	noSSLEnv(t)
	ts, _, _ := newClockedSource(t, time.Hour)
	shared := connConfig(t, "host=srv.postgres.database.azure.com dbname=app")
	cfg := *shared
	if err := ts.BeforeConnect(context.Background(), &cfg); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		cfg := *shared
		if err := ts.BeforeConnect(context.Background(), &cfg); err != nil {
			t.Fatal(err)
		}
		if !verifiesHost(cfg.TLSConfig) || len(cfg.Fallbacks) != 0 {
			t.Fatal("not upgraded")
		}
	})
	if allocs != 0 {
		t.Fatalf("BeforeConnect with no sslmode named allocates %.1f times per call, want 0", allocs)
	}
}
