package proxy_test

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/proxy"
)

// A proxy on a shared machine: clients give a local password with
// SCRAM-SHA-256 (the default LocalAuth), over TLS, where libpq and pgx use
// channel binding; PostgreSQL 17 clients may open with TLS directly
// (sslnegotiation=direct).
func ExampleConfig_localPassword() {
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	cert, err := tls.LoadX509KeyPair("proxy.crt", "proxy.key")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv, err := proxy.New(proxy.Config{
		Upstream:      "host=mysrv.postgres.database.azure.com sslmode=verify-full",
		TokenSource:   entraauth.NewTokenSource(cred),
		LocalPassword: "read from a file only you can read",
		LocalAuth:     proxy.LocalAuthSCRAM, // proxy.LocalAuthPassword for clients that cannot do SCRAM
		TLSConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:6432")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(srv.Serve(l))
}
