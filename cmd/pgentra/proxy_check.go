package main

import (
	"context"
	"fmt"
)

// explain is an error's message with the library's reading of a failed
// login. It never holds the token.
func explain(err error) string {
	return err.Error()
}

// connectionTest is --run-connection-test: one token and one upstream
// login before the proxy serves. Its error says what failed.
func connectionTest(ctx context.Context, check func(context.Context) error) error {
	if err := check(ctx); err != nil {
		return fmt.Errorf("connection test failed (--run-connection-test): %s", explain(err))
	}
	return nil
}
