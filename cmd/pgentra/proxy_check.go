package main

import (
	"context"
	"fmt"

	"github.com/pgentra/entraauth"
)

// explain is an error's message with the library's reading of a login
// the server refused (entraauth.Explain): the user sent and where it came
// from, the token's principal, and the fix. It never holds the token.
func explain(err error) string {
	return entraauth.Explain(err).Error()
}

// connectionTest is --run-connection-test: one token and one upstream
// login before the proxy serves. Its error says what failed.
func connectionTest(ctx context.Context, check func(context.Context) error) error {
	if err := check(ctx); err != nil {
		return fmt.Errorf("connection test failed (--run-connection-test): %s", explain(err))
	}
	return nil
}
