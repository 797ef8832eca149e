package proxy_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/proxy"
)

// A proxy on 127.0.0.1:5432 for an Azure server: point any PostgreSQL
// client at it, with no password, and it is logged in as the Azure
// identity with verified TLS.
func Example() {
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	srv, err := proxy.New(proxy.Config{
		Upstream:    "host=mysrv.postgres.database.azure.com sslmode=verify-full",
		TokenSource: entraauth.NewTokenSource(cred),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:5432")
	if err != nil {
		fmt.Println(err)
		return
	}
	go func() {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		<-ctx.Done()
		// Let sessions finish for up to a minute.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(l); err != proxy.ErrServerClosed {
		fmt.Println(err)
	}
}
