package proxy_test

import (
	"context"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/proxy"
)

// Check at startup that the identity can log in, as pgentra proxy
// --run-connection-test does, and read the counters a health check or a
// metrics exporter would.
func ExampleServer_CheckUpstream() {
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	srv, err := proxy.New(proxy.Config{
		Upstream:    "host=mysrv.postgres.database.azure.com dbname=postgres sslmode=verify-full",
		TokenSource: entraauth.NewTokenSource(cred),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.CheckUpstream(ctx); err != nil {
		// entraauth.Explain says which user was sent, with whose token,
		// and what to do.
		fmt.Println("cannot log in:", proxy.FailureReasonOf(err), entraauth.Explain(err))
		return
	}
	st := srv.Stats()
	fmt.Println("logged in; token expires", st.Token.ExpiresOn, "; last login", st.LastLogin)
	for _, r := range proxy.FailureReasons() {
		fmt.Println(r, st.FailedBy[r])
	}
}
