package main

import (
	"flag"
	"fmt"
	"sort"
	"strings"
)

// envPrefix starts the environment variable of each proxy flag.
const envPrefix = "PGENTRA_"

// envName is the environment variable of a flag: PGENTRA_ and the flag's
// name upper-cased, with - as _ (--health-check: PGENTRA_HEALTH_CHECK).
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyEnv sets each flag of fs that the command line did not set from
// its environment variable, if that is set (even to ""). A value the flag
// refuses is a usage error naming the variable. environ is the
// environment, as os.Environ gives it. It returns the PGENTRA_ variables
// that name no flag, for a warning: most likely typos.
func applyEnv(fs *flag.FlagSet, environ []string) (unknown []string, err error) {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, envPrefix) {
			env[k] = v
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "version" {
			return // an action, not a setting
		}
		name := envName(f.Name)
		known[name] = true
		if err != nil || set[f.Name] {
			return
		}
		if v, ok := env[name]; ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%w: environment variable %s=%q (for --%s): %v", errUsage, name, v, f.Name, serr)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	for k := range env {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	return unknown, nil
}
