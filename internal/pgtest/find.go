package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNoBinaries is returned (wrapped) by Start when no PostgreSQL server
// binaries (initdb and postgres) are found.
var ErrNoBinaries = errors.New("pgtest: no PostgreSQL server binaries found (set PG_BIN to the directory holding initdb and postgres)")

// binSearch describes where to look for initdb and postgres. Its fields are
// the machine-facing parts, so tests can run the search against a fake
// machine.
type binSearch struct {
	getenv   func(string) string
	pgConfig func() (string, error) // output of `pg_config --bindir`
	globs    []string               // patterns like /usr/lib/postgresql/*/bin
	lookPath func(string) (string, error)
}

// findBinDir is the binary search Start uses; tests replace it.
var findBinDir = func() (string, error) {
	return binSearch{
		getenv:   os.Getenv,
		pgConfig: pgConfigBindir,
		globs:    []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"},
		lookPath: exec.LookPath,
	}.find()
}

func pgConfigBindir() (string, error) {
	path, err := exec.LookPath("pg_config")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--bindir").Output()
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// find returns the first directory holding both initdb and postgres, trying
// in order: $PG_BIN, `pg_config --bindir`, the globs (highest version first)
// and $PATH. A PG_BIN that is set but holds no server binaries is an error
// (wrapping ErrNoBinaries) rather than silently ignored.
func (b binSearch) find() (string, error) {
	if dir := b.getenv("PG_BIN"); dir != "" {
		if hasServerBinaries(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%w: PG_BIN=%q holds no initdb and postgres executables", ErrNoBinaries, dir)
	}
	if b.pgConfig != nil {
		// On Debian, /usr/bin/pg_config may belong to the client package
		// and report /usr/bin, which has no initdb: check, don't trust.
		if dir, err := b.pgConfig(); err == nil && dir != "" && hasServerBinaries(dir) {
			return dir, nil
		}
	}
	for _, dir := range globByVersion(b.globs) {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	if b.lookPath != nil {
		if p, err := b.lookPath("initdb"); err == nil {
			if real, err := filepath.EvalSymlinks(p); err == nil {
				p = real
			}
			if p, err := filepath.Abs(p); err == nil {
				if dir := filepath.Dir(p); hasServerBinaries(dir) {
					return dir, nil
				}
			}
		}
	}
	return "", ErrNoBinaries
}

// globByVersion expands the patterns and orders each pattern's matches by
// the version number found in the path, highest first.
func globByVersion(patterns []string) []string {
	var dirs []string
	for _, pattern := range patterns {
		matches, _ := filepath.Glob(pattern)
		slices.SortStableFunc(matches, func(a, b string) int {
			return slices.Compare(versionOf(b), versionOf(a))
		})
		dirs = append(dirs, matches...)
	}
	return dirs
}

// versionOf extracts the numeric parts of the first path element that
// starts with a digit or a "pgsql-" prefix: "/usr/lib/postgresql/9.6/bin"
// gives [9 6].
func versionOf(path string) []int {
	for _, elem := range strings.Split(filepath.ToSlash(path), "/") {
		elem = strings.TrimPrefix(elem, "pgsql-")
		if elem == "" || elem[0] < '0' || elem[0] > '9' {
			continue
		}
		var v []int
		for _, part := range strings.Split(elem, ".") {
			n, err := strconv.Atoi(part)
			if err != nil {
				break
			}
			v = append(v, n)
		}
		return v
	}
	return nil
}

func hasServerBinaries(dir string) bool {
	return isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
