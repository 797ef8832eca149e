//go:build unix

package main

import (
	"errors"
	"syscall"
)

// processAlive reports whether a process with this ID exists, as
// PostgreSQL checks a lock file's owner: signal 0 (EPERM means it exists
// but belongs to another user).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
