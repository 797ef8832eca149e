package main

import (
	"strings"
)

// ourPsqlFlags are the flags pgentra psql takes before psql's arguments,
// and whether each takes a value.
var ourPsqlFlags = map[string]bool{
	"credential": true, "client-id": true, "tenant": true, "host": true,
	"scope": true, "env-prefix": true, "timeout": true, "help": false,
}

// splitPsqlArgs splits pgentra's leading flags from psql's arguments. Ours
// come first and end at the first argument that is not one of them, or at
// "--", which is dropped. psql's own -h is psql's; --host is ours and sets
// PGHOST, which comes to the same.
func splitPsqlArgs(args []string) (ours, rest []string) {
	return splitOurFlags(args, ourPsqlFlags)
}

// splitOurFlags splits the leading flags named in known (true for those
// that take a value) from the arguments after them, as splitPsqlArgs does.
func splitOurFlags(args []string, known map[string]bool) (ours, rest []string) {
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			return args[:i], args[i+1:]
		}
		if !strings.HasPrefix(a, "-") || len(a) < 3 {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takesValue, ok := known[name]
		if !ok || (name == "help" && hasValue) {
			break
		}
		i++
		if takesValue && !hasValue && i < len(args) {
			i++
		}
	}
	return args[:i], args[i:]
}

// psqlArgs is what pgentra needs to know of psql's arguments, read the way
// psql's getopt_long reads them.
type psqlArgs struct {
	args []string
	// host, port and user are the last -h, -p and -U (or the user named
	// by a positional argument), "" when not given.
	host, port, user string
	// db is the database name argument psql uses (the last -d, else the
	// first positional argument): args[dbArg][dbOff:]. dbArg is -1 when
	// there is none.
	db           string
	dbArg, dbOff int
	// list is -l: psql then connects to the postgres database unless
	// one is named.
	list bool
	// infoOnly is -V, --version, -? or --help: psql prints something and
	// exits without connecting.
	infoOnly bool
}

// psqlShortWithValue are psql's one-letter options that take a value.
const psqlShortWithValue = "cdfvLoFPRThpU"

// psqlLong are psql's long options; true for those that take a value.
// --help takes one only after "=".
var psqlLong = map[string]bool{
	"command": true, "dbname": true, "file": true, "set": true, "variable": true,
	"log-file": true, "output": true, "field-separator": true, "pset": true,
	"record-separator": true, "table-attr": true, "host": true, "port": true, "username": true,
	"list": false, "version": false, "no-psqlrc": false, "single-transaction": false, "help": false,
	"echo-all": false, "echo-errors": false, "echo-queries": false, "echo-hidden": false,
	"no-readline": false, "quiet": false, "single-step": false, "single-line": false,
	"no-align": false, "csv": false, "html": false, "tuples-only": false, "expanded": false,
	"field-separator-zero": false, "record-separator-zero": false, "no-password": false, "password": false,
}

// psqlLongShort maps the long options pgentra cares about to their short
// forms.
var psqlLongShort = map[string]byte{
	"host": 'h', "port": 'p', "username": 'U', "dbname": 'd', "list": 'l', "version": 'V', "help": '?',
}

// psqlLongOption returns the long option name abbreviates (getopt takes
// unique prefixes), or "".
func psqlLongOption(name string) string {
	if _, ok := psqlLong[name]; ok {
		return name
	}
	match := ""
	for full := range psqlLong {
		if strings.HasPrefix(full, name) {
			if match != "" {
				return ""
			}
			match = full
		}
	}
	return match
}

// scanPsqlArgs reads psql's arguments. With posixlyCorrect (the
// POSIXLY_CORRECT variable), getopt stops at the first argument that is
// not an option, as psql's does.
func scanPsqlArgs(args []string, posixlyCorrect bool) psqlArgs {
	pa := psqlArgs{args: args, dbArg: -1}
	var positional []int
	option := func(c byte, arg, off int) {
		val := ""
		if arg >= 0 {
			val = args[arg][off:]
		}
		switch c {
		case 'h':
			pa.host = val
		case 'p':
			pa.port = val
		case 'U':
			pa.user = val
		case 'd':
			pa.db, pa.dbArg, pa.dbOff = val, arg, off
		case 'l':
			pa.list = true
		case 'V', '?':
			pa.infoOnly = true
		}
	}
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			i++
			positional = append(positional, seq(i, len(args))...)
			i = len(args)
		case strings.HasPrefix(a, "--"):
			name, _, hasVal := strings.Cut(a[2:], "=")
			name = psqlLongOption(name)
			arg, off := -1, 0
			if hasVal {
				arg, off = i, strings.IndexByte(a, '=')+1
			} else if psqlLong[name] && i+1 < len(args) {
				i++
				arg = i
			}
			if c, ok := psqlLongShort[name]; ok {
				option(c, arg, off)
			}
		case strings.HasPrefix(a, "-") && a != "-":
			for j := 1; j < len(a); j++ {
				c := a[j]
				if !strings.ContainsRune(psqlShortWithValue, rune(c)) {
					option(c, -1, 0)
					continue
				}
				arg, off := i, j+1
				if off == len(a) && i+1 < len(args) {
					i++
					arg, off = i, 0
				}
				option(c, arg, off)
				break
			}
		case posixlyCorrect:
			positional = append(positional, seq(i, len(args))...)
			i = len(args)
		default:
			positional = append(positional, i)
		}
	}
	for _, p := range positional {
		switch {
		case pa.dbArg < 0:
			pa.db, pa.dbArg, pa.dbOff = args[p], p, 0
		case pa.user == "":
			pa.user = args[p]
		}
	}
	return pa
}

// seq returns the integers from lo up to hi.
func seq(lo, hi int) []int {
	var s []int
	for i := lo; i < hi; i++ {
		s = append(s, i)
	}
	return s
}
