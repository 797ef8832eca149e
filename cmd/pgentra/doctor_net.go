package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// addrKind says what kind of address a is: loopback, private (RFC 1918
// or ULA, as a private endpoint's), link-local or public.
func addrKind(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate() && a.Is4():
		return "private, RFC 1918"
	case a.IsPrivate():
		return "private, ULA"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsUnspecified():
		return "unspecified"
	}
	return "public"
}

// describeAddrs lists addresses with their kinds.
func describeAddrs(addrs []string) string {
	out := make([]string, 0, len(addrs))
	for _, s := range addrs {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, fmt.Sprintf("%s (%s)", s, addrKind(a)))
		} else {
			out = append(out, s)
		}
	}
	return strings.Join(out, ", ")
}

// dnsStep looks the host up, as a client would.
func (d *doctor) dnsStep(ctx context.Context) *step {
	if d.hostaddr != "" {
		s := passed("dns", fmt.Sprintf("not looked up: hostaddr %s is connected to, and %s is the name the certificate must carry", d.hostaddr, d.host))
		return s.fact("address", describeAddrs([]string{d.hostaddr}))
	}
	if _, err := netip.ParseAddr(d.host); err == nil {
		return passed("dns", "not looked up: the host is an IP address").fact("address", describeAddrs([]string{d.host}))
	}
	addrs, err := net.DefaultResolver.LookupHost(ctx, d.host)
	if err != nil {
		return failed("dns", fmt.Sprintf("%s does not resolve", d.host),
			"check the host name (an Azure server's is NAME.postgres.database.azure.com), and for a private endpoint that this machine's DNS resolves the privatelink.postgres.database.azure.com zone").
			fact("error", err.Error())
	}
	var public int
	for _, s := range addrs {
		if a, err := netip.ParseAddr(s); err == nil && addrKind(a) == "public" {
			public++
		}
	}
	s := passed("dns", fmt.Sprintf("%s resolves to %s", d.host, describeAddrs(addrs)))
	switch {
	case public == 0:
		s.fact("addresses", "not public: a private endpoint's, or this network's own")
	case public < len(addrs):
		s.fact("addresses", "public and not public: clients may reach either")
	default:
		s.fact("addresses", "public: the server's public endpoint (a private endpoint's would be private)")
	}
	if cname, err := net.DefaultResolver.LookupCNAME(ctx, d.host); err == nil && !strings.EqualFold(strings.TrimSuffix(cname, "."), strings.TrimSuffix(d.host, ".")) {
		s.fact("cname", strings.TrimSuffix(cname, "."))
		if strings.Contains(strings.ToLower(cname), ".privatelink.") {
			if public > 0 {
				s.fact("private endpoint", "the name goes through a privatelink CNAME but resolves to public addresses here: this machine's DNS does not use the private DNS zone privatelink.postgres.database.azure.com")
			} else {
				s.fact("private endpoint", "yes: the name goes through a privatelink CNAME to private addresses")
			}
		}
	}
	return s
}

// dialAddr is the address connections go to.
func (d *doctor) dialAddr() string {
	h := d.host
	if d.hostaddr != "" {
		h = d.hostaddr
	}
	return net.JoinHostPort(h, strconv.Itoa(int(d.port)))
}

// tcpStep connects to the port.
func (d *doctor) tcpStep(ctx context.Context, dns *step) *step {
	if dns.Status == statusFail {
		return skipped("tcp", "no address to connect to: the host does not resolve")
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", d.dialAddr())
	if err != nil {
		return failed("tcp", fmt.Sprintf("nothing accepts connections at %s", d.dialAddr()),
			"check the port (Azure's is 5432, its PgBouncer's 6432), that the server is running, and that its networking (firewall rules, public access or private endpoint) lets this machine in").
			fact("error", err.Error())
	}
	defer c.Close()
	return passed("tcp", fmt.Sprintf("%s accepts connections", d.dialAddr())).fact("connected to", c.RemoteAddr().String())
}

// knownRoots are the roots Azure Database for PostgreSQL's certificates
// chain to, by subject common name.
var knownRoots = []string{"DigiCert Global Root G2", "Microsoft RSA Root CA 2017"}

// rootName names a root certificate: one of knownRoots, or "other: its
// subject".
func rootName(c *x509.Certificate) string {
	for _, n := range knownRoots {
		if c.Subject.CommonName == n {
			return n
		}
	}
	return "other: " + c.Subject.String()
}

// roots returns the pool the server's chain must end in, and its
// description.
func (d *doctor) roots() (*x509.CertPool, string, error) {
	if d.rootCert == "" || d.rootCert == "system" {
		pool, err := x509.SystemCertPool()
		return pool, "the system's roots", err
	}
	pem, err := os.ReadFile(d.rootCert)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, "", fmt.Errorf("no PEM certificate in %s", d.rootCert)
	}
	return pool, "sslrootcert " + d.rootCert, nil
}

// sslRequest is PostgreSQL's SSLRequest message.
var sslRequest = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)

// tlsStep does the TLS handshake the PostgreSQL way, SSLRequest first, and
// checks the server's chain and host name as sslmode asks.
func (d *doctor) tlsStep(ctx context.Context, tcp *step) *step {
	if tcp.Status != statusPass {
		return skipped("tls", "no connection to shake hands on")
	}
	pool, rootsDesc, err := d.roots()
	if err != nil {
		return failed("tls", "the root certificates cannot be read",
			"give sslrootcert= or PGSSLROOTCERT a PEM file holding DigiCert Global Root G2 and Microsoft RSA Root CA 2017, or unset it for the system's roots").
			fact("error", err.Error())
	}
	var dialer net.Dialer
	raw, err := dialer.DialContext(ctx, "tcp", d.dialAddr())
	if err != nil {
		return failed("tls", "the connection failed", "see the tcp step").fact("error", err.Error())
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	if _, err := raw.Write(sslRequest); err != nil {
		return failed("tls", "sending SSLRequest failed", "check that the port is a PostgreSQL server's").fact("error", err.Error())
	}
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil {
		return failed("tls", "no answer to SSLRequest", "check that the port is a PostgreSQL server's").fact("error", err.Error())
	}
	if answer[0] != 'S' {
		return failed("tls", "the server does not offer TLS",
			"Azure Database for PostgreSQL always offers TLS: check that host and port are the Azure server's, not another PostgreSQL or a proxy without TLS")
	}
	conf := &tls.Config{InsecureSkipVerify: true} // verified below, to say what is wrong
	if _, err := netip.ParseAddr(d.host); err != nil {
		conf.ServerName = d.host
	}
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		return failed("tls", "the TLS handshake failed", "check that the port is an Azure server's; a proxy or firewall may be in the way").fact("error", err.Error())
	}
	st := tc.ConnectionState()
	certs := st.PeerCertificates
	leaf := certs[0]
	var presented []string
	for _, c := range certs {
		presented = append(presented, c.Subject.CommonName)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, chainErr := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter})
	hostErr := leaf.VerifyHostname(d.host)
	names := append(append([]string(nil), leaf.DNSNames...), ipStrings(leaf.IPAddresses)...)

	root := "not verified"
	if chainErr == nil {
		root = rootName(chains[0][len(chains[0])-1])
	}
	hostFact := fmt.Sprintf("%s verifies", d.host)
	if hostErr != nil {
		hostFact = fmt.Sprintf("%s is not in the certificate (its names: %s)", d.host, strings.Join(names, ", "))
	}
	fill := func(s *step) *step {
		s.fact("sslmode", d.sslmode).fact("version", tls.VersionName(st.Version))
		s.fact("chain", strings.Join(presented, " ← ")).fact("root", root).fact("roots", rootsDesc)
		if chainErr != nil {
			s.fact("chain error", chainErr.Error())
		}
		return s.fact("host name", hostFact)
	}
	verify := d.sslmode == "verify-ca" || d.sslmode == "verify-full"
	switch {
	case chainErr != nil && verify:
		return fill(failed("tls", fmt.Sprintf("the server's certificate does not chain to %s", rootsDesc),
			"give sslrootcert= or PGSSLROOTCERT the CA the server's certificate chains to (Azure's: DigiCert Global Root G2 and Microsoft RSA Root CA 2017), or unset it for the system's roots"))
	case hostErr != nil && d.sslmode == "verify-full":
		return fill(failed("tls", fmt.Sprintf("the certificate is not for %s", d.host),
			fmt.Sprintf("connect by a name the certificate carries (%s), such as the server's NAME.postgres.database.azure.com rather than an IP address or a DNS alias of your own", strings.Join(names, ", "))))
	case !verify:
		return fill(passed("tls", fmt.Sprintf("TLS, not verified (sslmode=%s)", d.sslmode)))
	}
	return fill(passed("tls", fmt.Sprintf("TLS, the chain ends at %s", root)))
}

func ipStrings(ips []net.IP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

// tlsConfig is the TLS configuration of the login, as sslmode asks:
// nothing checked for require, the chain for verify-ca, chain and host
// name for verify-full.
func (d *doctor) tlsConfig() (*tls.Config, error) {
	pool, _, err := d.roots()
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{RootCAs: pool, ServerName: d.host}
	switch d.sslmode {
	case "verify-full":
		return conf, nil
	case "verify-ca":
		conf.InsecureSkipVerify = true
		conf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs := make([]*x509.Certificate, len(raw))
			inter := x509.NewCertPool()
			for i, b := range raw {
				c, err := x509.ParseCertificate(b)
				if err != nil {
					return err
				}
				certs[i] = c
				if i > 0 {
					inter.AddCert(c)
				}
			}
			if len(certs) == 0 {
				return errors.New("no certificate")
			}
			_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter})
			return err
		}
		return conf, nil
	}
	conf.InsecureSkipVerify = true
	return conf, nil
}
