package entraauth

import (
	"errors"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestParseConnStringForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in    string
		want        map[string]string // nil: an error is wanted
		wantDropped []string
		wantErr     error  // when set, errors.Is must hold
		wantErrHas  string // when set, the error must mention it
	}{
		// .NET form, keywords in any case (issue 11, item 12).
		{name: ".NET form, lower-case keywords", in: "host=srv;database=app;username=u;password=p4ss;",
			want: map[string]string{"host": "srv", "dbname": "app", "user": "u", "password": "p4ss"}},
		{name: ".NET form, upper-case keywords", in: "HOST=srv; DATABASE=app; USER ID=u; SSL MODE=VerifyFull",
			want: map[string]string{"host": "srv", "dbname": "app", "user": "u", "sslmode": "verify-full"}},
		{name: ".NET form, lower case, port first", in: "port=5432;host=srv;sslmode=require",
			want: map[string]string{"host": "srv", "port": "5432", "sslmode": "require"}},
		{name: ".NET form with a keyword entraauth does not read", in: "host=srv;Pooling=true;password=p4ss",
			wantErrHas: "unsupported keyword"},
		{name: "key/value with a password holding a semicolon", in: "password=a;b host=srv",
			want: map[string]string{"host": "srv", "password": "a;b"}},
		{name: "key/value with a semicolon in a later value", in: "host=srv dbname=app password=a;b application_name='x;y'",
			want: map[string]string{"host": "srv", "dbname": "app", "password": "a;b", "application_name": "x;y"}},
		{name: "a password that reads both ways", in: "password=x;host=srv",
			wantErr: errAmbiguousForms},
		{name: "a key/value host holding a semicolon", in: "host=srv;x dbname=app",
			wantErr: errBadHost},

		// JDBC ssl follows pgjdbc (issue 11, item 11).
		{name: "JDBC ssl=true", in: "jdbc:postgresql://h:5432/db?ssl=true",
			want: map[string]string{"host": "h", "port": "5432", "dbname": "db", "sslmode": "verify-full"}},
		{name: "JDBC bare ssl", in: "jdbc:postgresql://h/db?ssl",
			want: map[string]string{"host": "h", "dbname": "db", "sslmode": "verify-full"}},
		{name: "JDBC ssl= (empty)", in: "jdbc:postgresql://h/db?ssl=",
			want: map[string]string{"host": "h", "dbname": "db", "sslmode": "verify-full"}},
		{name: "JDBC ssl=TRUE", in: "jdbc:postgresql://h/db?ssl=TRUE",
			want: map[string]string{"host": "h", "dbname": "db", "sslmode": "verify-full"}},
		{name: "JDBC ssl=false names no sslmode", in: "jdbc:postgresql://h/db?ssl=false",
			want: map[string]string{"host": "h", "dbname": "db"}},
		{name: "JDBC sslmode wins over ssl", in: "jdbc:postgresql://h/db?ssl=true&sslmode=require",
			want: map[string]string{"host": "h", "dbname": "db", "sslmode": "require"}},
		{name: "JDBC sslmode in upper case", in: "jdbc:postgresql://h/db?sslmode=VERIFY-FULL",
			want: map[string]string{"host": "h", "dbname": "db", "sslmode": "verify-full"}},
		{name: "JDBC ssl=yes", in: "jdbc:postgresql://h/db?ssl=yes", wantErrHas: "ssl query parameter"},
		{name: "URL ssl=true (node-postgres)", in: "postgres://h/db?ssl=true",
			want: map[string]string{"host": "h", "dbname": "db", "sslmode": "verify-full"}},

		// JDBC properties pgx has no equivalent of are dropped (item 14).
		{name: "JDBC properties", in: "jdbc:postgresql://h/db?user=u&authenticationPluginClassName=com.azure.Plugin" +
			"&sslfactory=org.postgresql.ssl.NonValidatingFactory&loginTimeout=5&ApplicationName=my+app&currentSchema=s" +
			"&targetServerType=preferSecondary&connectTimeout=7&sslrootcert=%2Fca.pem&socketTimeout=30&targetServerType=master",
			want: map[string]string{"host": "h", "dbname": "db", "user": "u", "application_name": "my app", "search_path": "s",
				"target_session_attrs": "primary", "connect_timeout": "7", "sslrootcert": "/ca.pem"},
			wantDropped: []string{"authenticationPluginClassName", "sslfactory", "loginTimeout", "socketTimeout"}},
		{name: "JDBC targetServerType pgx cannot do", in: "jdbc:postgresql://h/db?targetServerType=preferPrimary",
			want: map[string]string{"host": "h", "dbname": "db"}, wantDropped: []string{"targetServerType"}},
		{name: "URL parameters are settings", in: "postgres://h/db?search_path=s&loginTimeout=5",
			want: map[string]string{"host": "h", "dbname": "db", "search_path": "s", "loginTimeout": "5"}},

		// URL user information (item 13).
		{name: "URL password with an unescaped @", in: "postgres://u:p@ss@h/db", wantErr: errAmbiguousURL},
		{name: "URL password with an unescaped /", in: "postgres://u:pa/ss@h/db", wantErr: errAmbiguousURL},
		{name: "URL password with an unescaped ?", in: "postgres://u:pa?ss@h/db", wantErr: errAmbiguousURL},
		{name: "URL password with digits and a /", in: "postgres://u:12/34@h/db", wantErr: errAmbiguousURL},
		{name: "URL with a password and an @ in the query", in: "postgres://u:p@h/db?application_name=a@b", wantErr: errAmbiguousURL},
		{name: "URL password with : ; = & # kept whole", in: "postgres://u:a:b;c=d&e#f@h:5432/db",
			want: map[string]string{"host": "h", "port": "5432", "dbname": "db", "user": "u", "password": "a:b;c=d&e#f"}},
		{name: "URL without a password, an @ in the query", in: "postgres://h/db?user=alice@contoso.com",
			want: map[string]string{"host": "h", "dbname": "db", "user": "alice@contoso.com"}},
		{name: "URL user with an unescaped @", in: "postgres://alice@contoso.com@h/db", wantErr: errBadHost},
		{name: "URL query parameter without a value", in: "postgres://h/db?application_name", wantErrHas: "no \"=\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := parseConnString(tt.in)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("parsed %q as %v; want an error", tt.in, p.vals)
				}
				t.Log(err)
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("error %v; want %v", err, tt.wantErr)
				}
				if tt.wantErrHas != "" && !strings.Contains(err.Error(), tt.wantErrHas) {
					t.Errorf("error %v does not mention %q", err, tt.wantErrHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse %q: %v", tt.in, err)
			}
			if !reflect.DeepEqual(p.vals, tt.want) {
				t.Errorf("parse %q:\n got %v\nwant %v", tt.in, p.vals, tt.want)
			}
			if !reflect.DeepEqual(p.dropped, tt.wantDropped) {
				t.Errorf("dropped %v; want %v", p.dropped, tt.wantDropped)
			}
		})
	}
}

// Password chunks: passwords are made of them joined by special
// characters, and no printed text may hold any of them.
var passwordChunk = regexp.MustCompile(`pw[A-C]q[1-3]`)

// specialPasswordChars are the characters that split a password written
// unescaped in one form or another.
var specialPasswordChars = []string{"/", "@", "?", "#", ":", ";", "=", "&", "+", " ", "'", `"`, `\`, "%", ",", "[", "]"}

// testPasswords returns every password of three chunks joined by two
// special characters, and of two chunks joined by one.
func testPasswords() []string {
	var pws []string
	for _, a := range specialPasswordChars {
		pws = append(pws, "pwAq1"+a+"pwBq2")
		for _, b := range specialPasswordChars {
			pws = append(pws, "pwAq1"+a+"pwBq2"+b+"pwCq3")
		}
	}
	return pws
}

// connStringShapes write a connection string holding a password, in every
// form, escaped as the form wants it and not. skip names the characters
// that end a password's value in that form for the client it was written
// for too (a raw ";" in the .NET form, a raw "&" in a query): no parser can
// tell those apart from the next setting.
var connStringShapes = []struct {
	name      string
	skip      string
	write     func(pw string) string
	wantOther map[string]string // the settings other than the password
}{
	{name: "key/value", write: func(pw string) string {
		return "host=host.example port=5432 dbname=db user=user password=" + quoteValue(pw) + " sslmode=require"
	}},
	{name: "URL, escaped", write: func(pw string) string {
		return "postgres://" + url.UserPassword("user", pw).String() + "@host.example:5432/db?sslmode=require&application_name=app"
	}, wantOther: map[string]string{"application_name": "app"}},
	{name: "URL, unescaped", write: func(pw string) string {
		return "postgresql://user:" + pw + "@host.example:5432/db?sslmode=require&application_name=app"
	}, wantOther: map[string]string{"application_name": "app"}},
	{name: "JDBC, escaped", write: func(pw string) string {
		return "jdbc:postgresql://host.example:5432/db?user=user&password=" + url.QueryEscape(pw) + "&sslmode=require&loginTimeout=5"
	}},
	{name: "JDBC, unescaped", skip: "&+%", write: func(pw string) string {
		return "jdbc:postgresql://host.example:5432/db?user=user&password=" + pw + "&sslmode=require&loginTimeout=5"
	}},
	{name: ".NET, quoted", write: func(pw string) string {
		return `Server=host.example;Port=5432;Database=db;User Id=user;Password="` + strings.ReplaceAll(pw, `"`, `""`) + `";Ssl Mode=Require`
	}},
	{name: ".NET, unquoted", skip: ";", write: func(pw string) string {
		return "Server=host.example;Port=5432;Database=db;User Id=user;Password=" + pw + ";Ssl Mode=Require"
	}},
	{name: ".NET, lower case, unquoted", skip: ";", write: func(pw string) string {
		return "host=host.example;port=5432;database=db;username=user;password=" + pw + ";sslmode=require"
	}},
}

// TestPasswordNeverLandsInAnotherSetting is issue 11's item 13 made
// general: for every form and thousands of passwords holding the
// characters that split them, a parse either fails, saying nothing of the
// password, or reads the whole password as the password and every other
// setting as written. So nothing read from a password's position can be
// printed as a host, port, database, user or setting.
func TestPasswordNeverLandsInAnotherSetting(t *testing.T) {
	t.Parallel()
	for _, shape := range connStringShapes {
		t.Run(shape.name, func(t *testing.T) {
			t.Parallel()
			parsed, refused := 0, 0
			for _, pw := range testPasswords() {
				if strings.ContainsAny(pw, shape.skip) {
					continue
				}
				in := shape.write(pw)
				p, err := parseConnString(in)
				if err != nil {
					refused++
					if passwordChunk.MatchString(err.Error()) {
						t.Fatalf("%s: the error shows part of the password: %v", in, err)
					}
					continue
				}
				parsed++
				want := map[string]string{"host": "host.example", "port": "5432", "dbname": "db", "user": "user",
					"sslmode": "require", "password": pw}
				for k, v := range shape.wantOther {
					want[k] = v
				}
				if !reflect.DeepEqual(p.vals, want) {
					t.Fatalf("%s:\n got %q\nwant %q", in, p.vals, want)
				}
				if s := p.String(true) + strings.Join(p.dropped, " "); passwordChunk.MatchString(s) {
					t.Fatalf("%s: printed as %s", in, s)
				}
				// The key/value string made of it reads back the same,
				// and redacts the same.
				back, err := parseConnString(p.String(false))
				if err != nil || !reflect.DeepEqual(back.vals, p.vals) {
					t.Fatalf("%s: written as %s, read back as %v, %v", in, p.String(true), back, err)
				}
				if r := redactConnString(p.String(false)); r != p.String(true) {
					t.Fatalf("%s: redacted as %s, want %s", in, r, p.String(true))
				}
			}
			t.Logf("%d parsed, %d refused", parsed, refused)
			if parsed == 0 {
				t.Error("no password parsed")
			}
		})
	}
}
