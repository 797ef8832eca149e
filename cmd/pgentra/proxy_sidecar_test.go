package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgentra/entraauth/entratest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var httpListeningRE = regexp.MustCompile(`(?:msg="pgentra proxy: HTTP listening" addr=|"msg":"pgentra proxy: HTTP listening","addr":")([^\s"]+)`)

// httpURL is the base URL of the proxy's HTTP listener, from its log.
func (p *proxyProc) httpURL(t *testing.T) string {
	t.Helper()
	m := httpListeningRE.FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no HTTP listening line: %s", p.stderr.String())
	}
	return "http://" + m[1]
}

// httpGet GETs url and returns the status and body.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// wantGet GETs url and checks the status and that the body has want.
func wantGet(t *testing.T, url string, status int, want string) {
	t.Helper()
	if code, body := httpGet(t, url); code != status || !strings.Contains(body, want) {
		t.Errorf("GET %s: %d %q; want %d and %q", url, code, body, status, want)
	}
}

// waitGet polls url until it answers status with want in the body.
func waitGet(t *testing.T, url string, status int, want string) {
	t.Helper()
	var code int
	var body string
	waitUntil(t, fmt.Sprintf("GET %s to be %d %q", url, status, want), func() bool {
		code, body = httpGet(t, url)
		return code == status && strings.Contains(body, want)
	})
}

// gate is a TCP forwarder to target that holds every connection until
// opened: an upstream that answers only when the test says so.
type gate struct {
	l        net.Listener
	accepted atomic.Int64
	open     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
	target   string
}

func newGate(t *testing.T, target string) *gate {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{l: l, open: make(chan struct{}), target: target}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			g.accepted.Add(1)
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				defer c.Close()
				<-g.open
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
				<-done
				c.Close()
				u.Close()
				<-done
			}()
		}
	}()
	t.Cleanup(func() {
		g.opened()
		l.Close()
		g.wg.Wait()
	})
	return g
}

func (g *gate) opened() { g.once.Do(func() { close(g.open) }) }

// The health endpoints before, during and after --run-connection-test:
// /startup and /readiness are 503 "starting" while the test's login
// waits, /liveness 200; after it, all three are 200. /readiness then
// answers from the sessions' logins within the window, and logs in itself
// when none is recent.
func TestProxyHealthConnectionTest(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	g := newGate(t, f.srv.Addr())
	// The server's certificate names 127.0.0.1, as the gate's address does.
	p := startProxyCmdUntil(t, childEnv(pathWith(az.Dir())), httpListeningRE,
		"--credential", "cli", "--upstream", g.l.Addr().String(), "--sslrootcert", f.srv.CAFile(),
		"--health-check", "--http-address", "127.0.0.1:0", "--run-connection-test", "--listen", "127.0.0.1:0")
	base := p.httpURL(t)
	wantGet(t, base+"/startup", 503, "starting")
	wantGet(t, base+"/liveness", 200, "ok")
	wantGet(t, base+"/readiness", 503, "starting")
	wantGet(t, base+"/metrics", 404, "") // no --prometheus
	if n := f.srv.Stats().Accepted; n != 0 {
		t.Fatalf("%d logins before the gate opened", n)
	}
	g.opened()
	waitGet(t, base+"/startup", 200, "ok")
	waitUntil(t, "the connection test's and the listener's lines", func() bool {
		return strings.Contains(p.stderr.String(), "connection test passed") && listeningRE.MatchString(p.stderr.String())
	})
	wantGet(t, base+"/liveness", 200, "ok")
	wantGet(t, base+"/readiness", 200, "ok")
	// The connection test's login is recent: readiness logged in no more.
	if n := f.srv.Stats().Accepted; n != 1 {
		t.Errorf("%d upstream logins; want 1 (the connection test's)", n)
	}
	// POST is not a probe.
	resp, err := http.Post(base+"/readiness", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readiness: %d; want 405", resp.StatusCode)
	}
}

// /readiness turns 503 when the token has expired and the credential
// fails, once the window has passed, and 200 again when the credential
// is back; /liveness stays 200 through it.
func TestProxyReadinessFlips(t *testing.T) {
	f := newFixture(t)
	az := f.az(t, alice)
	// Tokens that live 3 seconds: each is unusable soon after.
	az.SetLifetime(3 * time.Second)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--health-check", "--http-address", "127.0.0.1:0", "--readiness-window", "1s")...)
	base := p.httpURL(t)
	waitGet(t, base+"/readiness", 200, "ok")
	az.FailWith("ERROR: Please run 'az login' to setup account.")
	waitGet(t, base+"/readiness", 503, "no Entra token")
	wantGet(t, base+"/liveness", 200, "ok")
	wantGet(t, base+"/startup", 200, "ok")
	waitUntil(t, "the readiness failure in the log, with its error", func() bool {
		return strings.Contains(p.stderr.String(), "readiness: the upstream login failed") && strings.Contains(p.stderr.String(), "az login")
	})
	az.FailWith("")
	waitGet(t, base+"/readiness", 200, "ok")

	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}

	// A user the server refuses for the token: the reason names the
	// SQLSTATE, and the log has the server's message.
	p = startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--health-check", "--http-address", "127.0.0.1:0", "--user", "cli-identity")...)
	wantGet(t, p.httpURL(t)+"/readiness", 503, "the upstream server refused the login: SQLSTATE 28P01")
	// The log line comes through a pipe: it may trail the HTTP answer.
	waitUntil(t, "the server's refusal in the log", func() bool {
		return strings.Contains(p.stderr.String(), `password authentication failed for user \"cli-identity\"`)
	})
}

// --run-connection-test: exit status 1 with the server's refusal when the
// token's principal has no role; the proxy serves when it has one.
func TestProxyRunConnectionTest(t *testing.T) {
	f := newFixture(t)
	nobody := f.az(t, entratest.User("cli-nobody@contoso.com"))
	r := pgentra(t, childEnv(pathWith(nobody.Dir())), append([]string{"proxy"}, f.proxyArgs("--run-connection-test", "--listen", "127.0.0.1:0")...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "connection test failed") ||
		!strings.Contains(r.stderr, `password authentication failed for user "cli-nobody@contoso.com"`) {
		t.Errorf("connection test with no role: %+v; want exit status 1 and the server's refusal", r)
	}
	// Explained by entraauth.Explain: the user sent, the token's
	// principal, and the SQL that creates the role.
	for _, want := range []string{`sent user "cli-nobody@contoso.com"`, "Fix:", "pgaadauth_create_principal"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the connection test's failure does not say %q: %s", want, r.stderr)
		}
	}
	t.Logf("pgentra proxy --run-connection-test, no role:\n%s", r.stderr)
	if strings.Contains(r.stderr, "listening") {
		t.Errorf("the proxy listened after a failed connection test: %s", r.stderr)
	}
	// No token at all.
	az := f.az(t, alice)
	az.FailWith("ERROR: Please run 'az login' to setup account.")
	r = pgentra(t, childEnv(pathWith(az.Dir())), append([]string{"proxy"}, f.proxyArgs("--run-connection-test", "--listen", "127.0.0.1:0")...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "connection test failed") || !strings.Contains(r.stderr, "az login") {
		t.Errorf("connection test with no token: %+v; want exit status 1 and the credential's error", r)
	}
	az.FailWith("")
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--run-connection-test")...)
	if !strings.Contains(p.stderr.String(), "connection test passed") {
		t.Errorf("no connection test line: %s", p.stderr.String())
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
}

// scrape GETs /metrics and parses it.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return mf
}

// metricValue is the value of the metric family name with the given
// label (name=value, or none); -1 when absent.
func metricValue(mf map[string]*dto.MetricFamily, name string, label ...string) float64 {
	fam := mf[name]
	if fam == nil {
		return -1
	}
	for _, m := range fam.GetMetric() {
		ok := true
		for i := 0; i+1 < len(label); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				found = found || (lp.GetName() == label[i] && lp.GetValue() == label[i+1])
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// /metrics after real sessions through psql: opened and bytes move, a
// client refused for its local password counts under local_auth, the
// token's fetches and expiry are there, and the login histogram counts
// each login.
func TestProxyMetrics(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("local-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--prometheus", "--http-address", "127.0.0.1:0", "--local-password-file", pwFile)...)
	base := p.httpURL(t)
	wantGet(t, base+"/readiness", 404, "") // no --health-check
	mf := scrape(t, base)
	for _, name := range []string{"pgentra_proxy_sessions_opened_total", "pgentra_proxy_bytes_relayed_total", "pgentra_proxy_upstream_login_duration_seconds"} {
		if v := metricValue(mf, name); v != 0 {
			t.Errorf("%s = %v before any session; want 0", name, v)
		}
	}
	if v := metricValue(mf, "pgentra_proxy_token_expiry_timestamp_seconds"); v != -1 {
		t.Errorf("token expiry %v before any token; want none", v)
	}
	if mf["go_goroutines"] == nil || mf["process_cpu_seconds_total"] == nil {
		t.Errorf("no Go or process metrics")
	}

	r := runCmd(t, p.env("postgres", "PGPASSWORD=local-secret"), "psql", "-X", "-A", "-t", "-c", "select repeat('x', 100000)")
	if r.code != 0 {
		t.Fatalf("psql: %+v", r)
	}
	mf = scrape(t, base)
	toClient1 := metricValue(mf, "pgentra_proxy_bytes_relayed_total", "direction", "to_client")
	toUpstream1 := metricValue(mf, "pgentra_proxy_bytes_relayed_total", "direction", "to_upstream")
	if toClient1 < 100000 || toUpstream1 <= 0 {
		t.Errorf("bytes relayed: to_client %v, to_upstream %v; want over 100000 and over 0", toClient1, toUpstream1)
	}
	r = runCmd(t, p.env("postgres", "PGPASSWORD=local-secret"), "psql", "-X", "-A", "-t", "-c", "select 1")
	if r.code != 0 {
		t.Fatalf("psql: %+v", r)
	}
	r = runCmd(t, p.env("postgres", "PGPASSWORD=wrong"), "psql", "-X", "-A", "-t", "-c", "select 1")
	if r.code != 2 || !strings.Contains(r.stderr, "password authentication failed") {
		t.Fatalf("psql with the wrong local password: %+v", r)
	}
	waitUntil(t, "the sessions to close", func() bool {
		return metricValue(scrape(t, base), "pgentra_proxy_sessions_open") == 0
	})
	mf = scrape(t, base)
	for _, c := range []struct {
		name  string
		label []string
		want  float64
	}{
		{"pgentra_proxy_sessions_opened_total", nil, 2},
		{"pgentra_proxy_sessions_open", nil, 0},
		{"pgentra_proxy_sessions_failed_total", []string{"reason", "local_auth"}, 1},
		{"pgentra_proxy_sessions_failed_total", []string{"reason", "token"}, 0},
		{"pgentra_proxy_sessions_failed_total", []string{"reason", "upstream_login"}, 0},
		{"pgentra_proxy_sessions_failed_total", []string{"reason", "over_limit"}, 0},
		{"pgentra_proxy_upstream_login_duration_seconds", nil, 2},
		{"pgentra_proxy_token_fetches_total", nil, 1},
		{"pgentra_proxy_token_fetch_failures_total", nil, 0},
		{"pgentra_proxy_cancel_requests_total", []string{"result", "forwarded"}, 0},
	} {
		if v := metricValue(mf, c.name, c.label...); v != c.want {
			t.Errorf("%s%v = %v; want %v", c.name, c.label, v, c.want)
		}
	}
	if v := metricValue(mf, "pgentra_proxy_bytes_relayed_total", "direction", "to_client"); v <= toClient1 {
		t.Errorf("bytes to clients did not grow with the second session: %v, then %v", toClient1, v)
	}
	if v := metricValue(mf, "pgentra_proxy_bytes_relayed_total", "direction", "to_upstream"); v <= toUpstream1 {
		t.Errorf("bytes to the upstream did not grow with the second session: %v, then %v", toUpstream1, v)
	}
	exp := metricValue(mf, "pgentra_proxy_token_expiry_timestamp_seconds")
	if now := float64(time.Now().Unix()); exp < now || exp > now+2*3600 {
		t.Errorf("token expiry %v; want within two hours from now (%v)", exp, now)
	}
	if v := metricValue(mf, "pgentra_proxy_upstream_last_login_timestamp_seconds"); v <= 0 {
		t.Errorf("last login %v", v)
	}
	if fam := mf["pgentra_proxy_sessions_failed_total"]; fam == nil || len(fam.GetMetric()) != 8 {
		t.Errorf("sessions_failed_total: %v; want a series for each of the 8 reasons", fam)
	}
}

// --structured-logs: every line is a JSON object with a msg, and none
// holds the token; errors after the flags are parsed are JSON lines too.
func TestProxyStructuredLogs(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	p := startProxyCmd(t, childEnv(pathWith(az.Dir())), f.proxyArgs("--structured-logs", "--health-check", "--http-address", "127.0.0.1:0", "--user", "someone-else")...)
	wantGet(t, p.httpURL(t)+"/liveness", 200, "ok")
	r := runCmd(t, p.env("postgres"), "psql", "-X", "-A", "-t", "-c", "select 1")
	if r.code != 2 { // someone-else has no role: the refusal is logged
		t.Fatalf("psql: %+v", r)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d", code)
	}
	checkJSONLines(t, p.stderr.String(), "pgentra proxy: listening", "pgentra proxy: session refused", "pgentra proxy: shutting down")
	// The refusal is explained (entraauth.Explain), with its reason.
	for _, want := range []string{`"reason":"upstream_login"`, `sent user \"someone-else\"`, "Fix:"} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("the refused session's line lacks %s: %s", want, p.stderr.String())
		}
	}

	r = pgentra(t, childEnv("PGENTRA_MAX_CONNECTIONS=-1"), "proxy", "--structured-logs", "--credential", "cli", "--upstream", "srv.example")
	if r.code != 2 {
		t.Errorf("bad --max-connections: %+v; want exit status 2", r)
	}
	checkJSONLines(t, r.stderr, "--max-connections must not be negative")
}

// checkJSONLines checks that each line of out is a JSON object with time,
// level and msg, that none has a token, and that each of want is in some
// line's msg.
func checkJSONLines(t *testing.T, out string, want ...string) {
	t.Helper()
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q: %v", line, err)
			continue
		}
		msg, _ := m["msg"].(string)
		if msg == "" || m["time"] == nil || m["level"] == nil {
			t.Errorf("a line without time, level or msg: %q", line)
		}
		msgs = append(msgs, msg)
	}
	if strings.Contains(out, "eyJ") {
		t.Errorf("a token in the log: %s", out)
	}
	all := strings.Join(msgs, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("no line with %q in:\n%s", w, out)
		}
	}
}

// Every proxy flag has a PGENTRA_ variable; flags win; a bad value is a
// usage error naming the variable; an unknown PGENTRA_ variable is
// warned about.
func TestProxyEnvironment(t *testing.T) {
	needPsql(t)
	f := newFixture(t)
	az := f.az(t, alice)
	env := childEnv(pathWith(az.Dir()), "PGENTRA_CREDENTIAL=cli", "PGENTRA_UPSTREAM="+f.srv.Addr(),
		"PGENTRA_SSLROOTCERT="+f.srv.CAFile(), "PGENTRA_LISTEN=127.0.0.1:0", "PGENTRA_HEALTH_CHECK=true",
		"PGENTRA_HTTP_ADDRESS=127.0.0.1:0", "PGENTRA_STRUCTURED_LOGS=1", "PGENTRA_UPSTRAEM=typo")
	p := startProxyCmdUntil(t, env, listeningRE)
	p.host, p.port = listenAddr(t, p)
	wantGet(t, p.httpURL(t)+"/liveness", 200, "ok")
	r := runCmd(t, p.env("postgres"), "psql", "-X", "-A", "-t", "-c", "select current_user")
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("psql through a proxy set up by the environment: %+v", r)
	}
	p.stop(t)
	checkJSONLines(t, p.stderr.String(), "PGENTRA_UPSTRAEM names no flag")

	// Flags win: the variable's upstream is nowhere, the flag's is the server.
	env = childEnv(pathWith(az.Dir()), "PGENTRA_UPSTREAM=nowhere.invalid:1", "PGENTRA_SSLMODE=require", "PGENTRA_CREDENTIAL=no-such-kind")
	p = startProxyCmd(t, env, f.proxyArgs("--sslmode", "verify-full")...)
	r = runCmd(t, p.env("postgres"), "psql", "-X", "-A", "-t", "-c", "select current_user")
	if r.code != 0 || r.stdout != alice.UPN+"\n" {
		t.Errorf("psql through a proxy whose flags override the environment: %+v", r)
	}
	if strings.Contains(p.stderr.String(), "is not verified") {
		t.Errorf("PGENTRA_SSLMODE won over --sslmode: %s", p.stderr.String())
	}

	for _, tt := range []struct{ env, want string }{
		{"PGENTRA_MAX_CONNECTIONS=lots", "PGENTRA_MAX_CONNECTIONS"},
		{"PGENTRA_HEALTH_CHECK=maybe", "PGENTRA_HEALTH_CHECK"},
		{"PGENTRA_SHUTDOWN_TIMEOUT=soon", "PGENTRA_SHUTDOWN_TIMEOUT"},
		{"PGENTRA_CREDENTIAL=no-such-kind", "unknown --credential"},
		{"PGENTRA_HTTP_ADDRESS=127.0.0.1:0", "--http-address serves --health-check and --prometheus"},
	} {
		r := pgentra(t, childEnv(tt.env), "proxy", "--upstream", "srv.example")
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("pgentra proxy with %s: %+v; want exit status 2 and %q", tt.env, r, tt.want)
		}
	}
}

// listenAddr is the address the proxy listens on, from its log.
func listenAddr(t *testing.T, p *proxyProc) (string, string) {
	t.Helper()
	m := listeningRE.FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("not listening: %s", p.stderr.String())
	}
	h, port, err := net.SplitHostPort(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return h, port
}

// --version on the proxy (and the other subcommands) prints what
// pgentra version prints, without starting anything.
func TestSubcommandVersion(t *testing.T) {
	want := pgentra(t, childEnv(), "version")
	if want.code != 0 || want.stdout == "" {
		t.Fatalf("pgentra version: %+v", want)
	}
	for _, args := range [][]string{{"proxy", "--version"}, {"proxy", "--upstream", "srv.example", "--version"}, {"token", "--version"}, {"user", "--version"}, {"doctor", "--version"}, {"doctor", "--output", "json", "--version", "-h", "srv.example"}} {
		r := pgentra(t, childEnv("PGENTRA_MAX_CONNECTIONS=bad"), args...)
		if r.code != 0 || r.stdout != want.stdout || r.stderr != "" {
			t.Errorf("pgentra %q: %+v; want %q", args, r, want.stdout)
		}
	}
}

// proxy --help documents the production flags, the endpoints' answers and
// the PGENTRA_ rule; pgentra help points to them.
func TestProxyHelpProduction(t *testing.T) {
	r := pgentra(t, childEnv(), "proxy", "--help")
	for _, want := range []string{"--health-check", "--prometheus", "--http-address ADDR", "--readiness-window D", "--run-connection-test",
		"--structured-logs", "--version", `/startup    200 "ok"`, `/liveness   200 "ok"`, `/readiness  200 "ok"`, `"shutting down"`,
		"PGENTRA_UPSTREAM", "A flag\non the command line wins over its variable"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("pgentra proxy --help lacks %q", want)
		}
	}
	if r := pgentra(t, childEnv(), "help"); !strings.Contains(r.stdout, "--health-check") || !strings.Contains(r.stdout, "PGENTRA_") {
		t.Errorf("pgentra help does not mention the sidecar flags: %s", r.stdout)
	}
}
