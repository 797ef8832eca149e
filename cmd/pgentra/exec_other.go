//go:build !unix

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
)

// execPsql runs psql with the standard streams and returns its exit
// status. Ctrl-C reaches psql from the console; pgentra ignores it while
// psql runs.
func execPsql(path string, args, env []string, stdout, stderr io.Writer) int {
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	signal.Ignore(os.Interrupt)
	defer signal.Reset(os.Interrupt)
	err := cmd.Run()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return exitErr.ExitCode()
	}
	if err != nil {
		return fail(stderr, "psql", fmt.Errorf("running %s: %w", path, err))
	}
	return exitOK
}
