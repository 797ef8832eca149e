package entratest_test

import (
	"context"
	"database/sql"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
)

// TestPackageDocFirstSnippet is the package doc's first snippet, as
// written there (TestPackageDocSnippetsCompile checks that it is).
func TestPackageDocFirstSnippet(t *testing.T) {
	pgtest.SkipWithoutBinaries(t) // test-only: skips without PostgreSQL (fails under ENTRAAUTH_REQUIRE_PG=1)
	ctx := context.Background()
	iss, err := entratest.NewIssuer()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := entratest.NewServer(ctx, entratest.ServerConfig{Verifier: iss})
	if err != nil {
		t.Fatal(err) // errors.Is(err, entratest.ErrNoPostgreSQL) without binaries
	}
	t.Cleanup(func() { srv.Close() })
	alice := entratest.User("alice@contoso.com")
	if err := srv.AddRole(ctx, alice.UPN, alice.ObjectID); err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(entraauth.Connector(srv.ConnString(), entratest.NewCredential(iss, alice)))
	t.Cleanup(func() { db.Close() })
	var user string
	if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}

	if user != alice.UPN {
		t.Errorf("current_user = %q, want %q", user, alice.UPN)
	}
}

// TestPackageDocSnippetsCompile checks that the package doc's first two
// snippets are, line for line, code that this module compiles and runs:
// the first is TestPackageDocFirstSnippet's body, the second is
// internal/sharedusage's test file, and the README shows it as well. Source lines with a "// test-only"
// comment are left out of the comparison.
func TestPackageDocSnippetsCompile(t *testing.T) {
	snippets := packageDocCode(t)
	if len(snippets) < 2 {
		t.Fatalf("package doc has %d code blocks, want at least 2", len(snippets))
	}
	for i, c := range []struct {
		file   string
		indent string
	}{
		{"doc_test.go", "\t"},
		{filepath.Join("internal", "sharedusage", "sharedusage_test.go"), ""},
		{filepath.Join("..", "README.md"), ""},
	} {
		src, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		want := indentLines(snippets[min(i, 1)], c.indent)
		if !strings.Contains(withoutTestOnlyLines(string(src)), want) {
			t.Errorf("package doc snippet %d is not in %s as written:\n%s", min(i, 1)+1, c.file, want)
		}
	}
}

// packageDocCode returns the code blocks of doc.go's package comment.
func packageDocCode(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil {
		t.Fatal("doc.go has no package comment")
	}
	var p comment.Parser
	var code []string
	for _, b := range p.Parse(f.Doc.Text()).Content {
		if c, ok := b.(*comment.Code); ok {
			code = append(code, c.Text)
		}
	}
	return code
}

// indentLines prefixes each non-empty line of s with indent.
func indentLines(s, indent string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = indent + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// withoutTestOnlyLines drops the lines of src marked "// test-only".
func withoutTestOnlyLines(src string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(src, "\n") {
		if !strings.Contains(l, "// test-only") {
			b.WriteString(l)
		}
	}
	return b.String()
}
