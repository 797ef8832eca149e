//go:build unix

package main

import (
	"fmt"
	"io"
	"syscall"
)

// execPsql replaces pgentra with psql, so psql has the terminal, the
// standard streams and the signals (Ctrl-C cancels its query), and its exit
// status is the command's. It returns only if the exec fails.
func execPsql(path string, args, env []string, _, stderr io.Writer) int {
	err := syscall.Exec(path, append([]string{"psql"}, args...), env)
	return fail(stderr, "psql", fmt.Errorf("running %s: %w", path, err))
}
