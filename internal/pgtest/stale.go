package pgtest

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Every Server's temp root holds a lock file that the owning process keeps
// flock'ed for the server's lifetime. The kernel drops the lock when the
// process dies however it dies, so a root whose lock can be taken belongs
// to a test binary that was killed before it could call Stop (its
// postmaster got SIGKILL through Pdeathsig). Start removes such leftovers
// once per process.

const (
	rootPrefix   = "entraauth-pgtest-"
	lockName     = "lock"
	lockTempName = "lock.new"
)

var staleOnce sync.Once

// removeStaleRoots removes the leftover temp roots of dead processes in
// the given base directories, at most once per process.
func removeStaleRoots(logf func(string, ...any), bases ...string) {
	staleOnce.Do(func() { removeStaleIn(logf, bases...) })
}

func removeStaleIn(logf func(string, ...any), bases ...string) {
	for _, base := range bases {
		entries, err := os.ReadDir(base)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), rootPrefix) {
				continue
			}
			dir := filepath.Join(base, e.Name())
			if removeIfStale(dir) {
				logf("pgtest: removed %s left behind by a dead process", dir)
			}
		}
	}
}

// removeIfStale removes dir if its lock file exists and nobody holds it.
// A root without a lock file is either being created right now or not
// ours: it is left alone.
func removeIfStale(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockName))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return false
	}
	return os.RemoveAll(dir) == nil
}

// lockRoot creates and locks root's lock file. The file is locked under a
// temporary name and then renamed, so no other process can ever see the
// lock file unlocked while its owner lives.
func lockRoot(root string) (*os.File, error) {
	tmp := filepath.Join(root, lockTempName)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(root, lockName)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
