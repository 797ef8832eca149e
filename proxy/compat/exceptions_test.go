package compat

import "strings"

// byDesign lists the pgx tests that cannot pass through an auth proxy,
// with the reason. A key is "<package> <test>" as testID prints it, and
// covers the test's subtests. The README lists the same tests: keep them
// in step.
var byDesign = map[string]string{
	"pgconn TestConnectInvalidUser": "the proxy logs every session in as the token's principal; the user a client names is not checked unless the proxy runs with --strict-user",
}

// exception returns the reason id may differ through the proxy, or "".
func exception(id testID) string {
	for key, reason := range byDesign {
		pkg, name, _ := strings.Cut(key, " ")
		if id.Pkg == pkg && (id.Name == name || strings.HasPrefix(id.Name, name+"/")) {
			return reason
		}
	}
	return ""
}
