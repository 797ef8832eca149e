package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// listenUnixSocket listens on the unix socket path (DIR/.s.PGSQL.PORT),
// for this OS user only, without ever taking over a socket someone else
// uses. Like PostgreSQL, it first creates the lock file path+".lock"
// holding its process ID: a live process's lock (another proxy's, or a
// PostgreSQL server's) is refused, a dead one's is taken over. Holding
// the lock, it refuses a socket file that answers (a server that keeps
// no lock file) or a path that is not a socket, and removes a socket
// nobody answers on. On Close, it removes the socket and the lock file
// only if they are still its own.
func listenUnixSocket(path string) (net.Listener, error) {
	lock, err := lockSocket(path)
	if err != nil {
		return nil, err
	}
	l, err := listenUnixLocked(path)
	if err != nil {
		lock.release()
		return nil, err
	}
	l.lock = lock
	return l, nil
}

// socketLock is a lock file this process created.
type socketLock struct{ path string }

// lockSocket creates socketPath's lock file, taking over one whose
// process is gone.
func lockSocket(socketPath string) (*socketLock, error) {
	lockPath := socketPath + ".lock"
	for range 2 {
		f, err := os.OpenFile(lockPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, werr := fmt.Fprintf(f, "%d\n%s\n", os.Getpid(), filepath.Dir(socketPath))
			cerr := f.Close()
			if err := errors.Join(werr, cerr); err != nil {
				_ = os.Remove(lockPath)
				return nil, fmt.Errorf("writing the lock file %s: %w", lockPath, err)
			}
			return &socketLock{path: lockPath}, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("creating the lock file %s: %w", lockPath, err)
		}
		pid, err := lockPID(lockPath)
		if err != nil {
			return nil, fmt.Errorf("the lock file %s exists but %v; if no server uses the socket %s, remove it", lockPath, err, socketPath)
		}
		if pid != os.Getpid() && processAlive(pid) {
			return nil, fmt.Errorf("the lock file %s exists: is another pgentra proxy or a PostgreSQL server (PID %d) using the socket %s? "+
				"Stop it, or give another --unix-socket directory or --listen port", lockPath, pid, socketPath)
		}
		// Left by a process that is gone.
		if err := os.Remove(lockPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing the stale lock file %s: %w", lockPath, err)
		}
	}
	return nil, fmt.Errorf("could not create the lock file %s: another process keeps creating it", lockPath)
}

// lockPID reads the process ID on a lock file's first line, as PostgreSQL
// writes it.
func lockPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, errors.New("holds no process ID")
	}
	return pid, nil
}

// release removes the lock file if it still holds this process's ID.
func (l *socketLock) release() {
	if pid, err := lockPID(l.path); err == nil && pid == os.Getpid() {
		_ = os.Remove(l.path)
	}
}

// listenUnixLocked listens on path, holding its lock: a socket file
// nobody answers on is removed first; anything else there is refused.
// The socket is made in a private directory, given mode 0600, then linked
// into place, so it is never open to others and never replaces a file.
func listenUnixLocked(path string) (*unixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not touching it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("a server already listens on the socket %s (with no lock file); not taking it over", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".pgentra-proxy-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	l, err := net.Listen("unix", filepath.Join(tmp, "s"))
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(filepath.Join(tmp, "s"), 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Link(filepath.Join(tmp, "s"), path); err != nil {
		l.Close()
		return nil, fmt.Errorf("placing the socket: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, err
	}
	return &unixListener{UnixListener: ul, path: path, file: fi}, nil
}

// unixListener removes its socket file and lock file when closed, if
// they are still its own.
type unixListener struct {
	*net.UnixListener
	path string
	file fs.FileInfo // the socket file as created, to recognise it
	lock *socketLock
	once sync.Once
}

// Close closes the listener and removes its files; it may be called more
// than once, concurrently.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
			_ = os.Remove(l.path)
		}
		if l.lock != nil {
			l.lock.release()
		}
	})
	return err
}

// Addr reports the socket's final path.
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }
