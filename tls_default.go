package entraauth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unsafe"
)

// No sslmode named means verify-full. pgx, like libpq, defaults to
// sslmode=prefer: TLS without any certificate check (InsecureSkipVerify),
// then plaintext. The transport guard drops the plaintext attempt; this
// file replaces the unchecked TLS config by one that checks the server as
// pgx's verify-full does (pgconn's configTLS): the chain against RootCAs
// (sslrootcert or PGSSLROOTCERT when given, else the system pool) and the
// certificate against the host name connected to. Everything else in the
// config (client certificates, SNI, ALPN for sslnegotiation=direct) is
// kept, as pgx builds it the same for every sslmode.
//
// The check runs in VerifyConnection rather than by clearing
// InsecureSkipVerify, so that a failure can say how to fix it; it is the
// check crypto/tls makes (x509.Certificate.Verify with the host name).

// unverified reports whether nothing checks the server's certificate in c:
// pgx's prefer, allow and require. A config verifying in a callback of its
// own (pgx's verify-ca, or code's) is left as it is.
func unverified(c *tls.Config) bool {
	return c.InsecureSkipVerify && c.VerifyPeerCertificate == nil && c.VerifyConnection == nil
}

// verifiesHost reports whether c checks both the certificate chain and the
// host name with the standard checks: pgx's verify-full, or a config this
// file made.
func verifiesHost(c *tls.Config) bool {
	return !c.InsecureSkipVerify || isServerVerifier(c.VerifyConnection)
}

// verifiedTLSFor returns a config verifying host's certificate made from
// the unverified config in, cached per connection string and host while in
// stays the same.
func (ts *TokenSource) verifiedTLSFor(k connKey, host string, in *tls.Config) *tls.Config {
	fp, cacheable := fingerprint(in)
	if cacheable {
		if c := ts.configs.Load(); c != nil {
			for _, u := range c.tls {
				if u.conn == k && u.host == host && u.from == fp {
					return u.to
				}
			}
		}
	}
	out := verifyingTLS(in, host)
	if cacheable {
		ts.updateConfigCache(func(c *configCache) {
			c.tls = append(c.tls, &tlsUpgrade{conn: k, host: host, from: fp, to: out})
		})
	}
	return out
}

// verifyingTLS returns a copy of in that verifies the server as
// sslmode=verify-full does. in is never modified: it may be shared.
func verifyingTLS(in *tls.Config, host string) *tls.Config {
	out := in.Clone()
	out.ServerName = host // pgx's verify-full sets it whatever sslsni says
	v := &serverVerifier{host: host, roots: in.RootCAs, time: in.Time}
	out.VerifyConnection = v.verify
	return out
}

// serverVerifier checks a server's certificate for sslmode=verify-full.
type serverVerifier struct {
	host  string
	roots *x509.CertPool   // nil: the system pool
	time  func() time.Time // the config's clock, if it has one
}

// verify is the check crypto/tls makes when InsecureSkipVerify is false,
// with an error that says what to do.
func (v *serverVerifier) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: the server at %s sent no certificate", ErrServerNotVerified, v.host)
	}
	opts := x509.VerifyOptions{Roots: v.roots, DNSName: v.host, Intermediates: x509.NewCertPool()}
	if v.time != nil {
		opts.CurrentTime = v.time()
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return v.explain(err)
	}
	return nil
}

// requireHint is the way out for a user who knowingly wants no check.
const requireHint = "or, to encrypt without verifying the server (anyone on the network path could pose as it and receive the token), name sslmode=require"

// explain turns a verification failure into an error saying how to fix it.
func (v *serverVerifier) explain(err error) error {
	var hostErr x509.HostnameError
	if errors.As(err, &hostErr) {
		return fmt.Errorf("%w: no sslmode is named, so entraauth verifies the server (sslmode=verify-full), "+
			"and the certificate of %s is issued for %s, not for %q; "+
			"connect with a host name the certificate names (an IP address matches only if the certificate lists it), %s: %w",
			ErrServerNotVerified, v.host, certNames(hostErr.Certificate), v.host, requireHint, err)
	}
	roots := "the system's trusted CAs"
	if v.roots != nil {
		roots = "the CAs of sslrootcert"
	}
	return fmt.Errorf("%w: no sslmode is named, so entraauth verifies the server (sslmode=verify-full), "+
		"and the certificate of %s is not signed by %s; "+
		"trust the CA that issued it, in the system's pool or with sslrootcert=<file> (for Azure Database for PostgreSQL: "+
		"DigiCert Global Root G2 and Microsoft RSA Root CA 2017, see entraauth's README), %s: %w",
		ErrServerNotVerified, v.host, roots, requireHint, err)
}

// certNames lists the names a certificate is issued for.
func certNames(c *x509.Certificate) string {
	if c == nil {
		return "other names"
	}
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, "CN="+c.Subject.CommonName)
	}
	if len(names) == 0 {
		return "no host name"
	}
	return strings.Join(names, ", ")
}

// serverVerifierCode is the code address shared by every serverVerifier's
// verify method value, which tells a config made here from one made
// elsewhere.
var serverVerifierCode = reflect.ValueOf((&serverVerifier{}).verify).Pointer()

func isServerVerifier(f func(tls.ConnectionState) error) bool {
	return f != nil && reflect.ValueOf(f).Pointer() == serverVerifierCode
}

// tlsFingerprint is what a TLS config holds, by value and by the identity
// of what it points to, when it has no callbacks, maps or interfaces: two
// configs with the same fingerprint (such as copies made with Clone, as
// pgxpool makes for every connect) are the same config.
type tlsFingerprint struct {
	certificates, nextProtos, cipherSuites, curves, echConfigs, echKeys sliceID
	rootCAs, clientCAs                                                  *x509.CertPool
	serverName                                                          string
	sessionTicketKey                                                    [32]byte
	clientAuth                                                          tls.ClientAuthType
	renegotiation                                                       tls.RenegotiationSupport
	minVersion, maxVersion                                              uint16
	insecureSkipVerify, preferServerCipherSuites                        bool
	sessionTicketsDisabled, dynamicRecordSizingDisabled                 bool
}

// sliceID is a slice's identity: its array and length.
type sliceID struct {
	data unsafe.Pointer
	n    int
}

func idOf[T any](s []T) sliceID { return sliceID{unsafe.Pointer(unsafe.SliceData(s)), len(s)} }

// fingerprint returns c's fingerprint, and false when c has a callback, a
// map or an interface value, which a fingerprint cannot compare: such a
// config is not cached. Every exported field of tls.Config is either in the
// fingerprint or checked here (TestTLSFingerprintCoversConfig).
func fingerprint(c *tls.Config) (tlsFingerprint, bool) {
	//lint:ignore SA1019 deprecated, but still a field a config can set
	if c.NameToCertificate != nil {
		return tlsFingerprint{}, false
	}
	if c.Rand != nil || c.Time != nil ||
		c.GetCertificate != nil || c.GetClientCertificate != nil || c.GetConfigForClient != nil ||
		c.VerifyPeerCertificate != nil || c.VerifyConnection != nil ||
		c.ClientSessionCache != nil || c.UnwrapSession != nil || c.WrapSession != nil ||
		c.KeyLogWriter != nil || c.EncryptedClientHelloRejectionVerify != nil || c.GetEncryptedClientHelloKeys != nil {
		return tlsFingerprint{}, false
	}
	return tlsFingerprint{
		certificates: idOf(c.Certificates),
		nextProtos:   idOf(c.NextProtos),
		cipherSuites: idOf(c.CipherSuites),
		curves:       idOf(c.CurvePreferences),
		echConfigs:   idOf(c.EncryptedClientHelloConfigList),
		echKeys:      idOf(c.EncryptedClientHelloKeys),
		rootCAs:      c.RootCAs,
		clientCAs:    c.ClientCAs,
		serverName:   c.ServerName,
		//lint:ignore SA1019 deprecated, but still a field a config can set
		sessionTicketKey:   c.SessionTicketKey,
		clientAuth:         c.ClientAuth,
		renegotiation:      c.Renegotiation,
		minVersion:         c.MinVersion,
		maxVersion:         c.MaxVersion,
		insecureSkipVerify: c.InsecureSkipVerify,
		//lint:ignore SA1019 deprecated, but still a field a config can set
		preferServerCipherSuites:    c.PreferServerCipherSuites,
		sessionTicketsDisabled:      c.SessionTicketsDisabled,
		dynamicRecordSizingDisabled: c.DynamicRecordSizingDisabled,
	}, true
}
