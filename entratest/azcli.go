package entratest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// AzureCLI is a fake Azure CLI for azidentity.AzureCLICredential: an
// executable bash script named az that answers
//
//	az account get-access-token -o json --resource <resource> [--tenant <tenant>] [--subscription <id>]
//
// (also --scope <scope> instead of --resource) with a freshly minted token
// for one principal, in the JSON the real CLI prints: accessToken,
// expiresOn (local time, "2006-01-02 15:04:05.000000"), expires_on (Unix
// seconds), subscription, tenant and tokenType. An unknown resource, another
// output format or another command fails like the real CLI: a message on
// stderr and a non-zero exit status.
//
// The script forwards its arguments to the test process over a loopback
// TCP connection (bash's /dev/tcp; it needs nothing but bash), where the
// kit mints the token, counts the invocation and waits the latency. It works
// on Unix-like systems only.
type AzureCLI struct {
	iss    *Issuer
	p      Principal
	dir    string
	secret string

	ln     net.Listener
	done   chan struct{}
	wg     sync.WaitGroup
	closed sync.Once

	invocations atomic.Int64

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	lifetime time.Duration
	latency  time.Duration
	failMsg  string
	args     [][]string
}

// azScript is the fake az. %[1]s is bash's path, %[2]s the kit's address
// as host/port, %[3]s the shared secret.
const azScript = `#!%[1]s
# Fake Azure CLI written by entratest (github.com/pgentra/entraauth/entratest).
# It forwards its arguments to the test that created it and prints the answer.
{ exec 3<>/dev/tcp/%[2]s; } 2>/dev/null || {
	echo "ERROR: entratest fake az: the test kit at %[2]s is gone" >&2
	exit 1
}
printf '%%s\0' '%[3]s' "$#" "$@" >&3
IFS= read -r code <&3 || {
	echo "ERROR: entratest fake az: no answer from the test kit" >&2
	exit 1
}
case "$code" in
0) out=1 ;;
[1-9]|[1-9][0-9]|[1-2][0-9][0-9]) out=2 ;;
*) echo "ERROR: entratest fake az: bad answer from the test kit" >&2; exit 1 ;;
esac
while IFS= read -r line || [ -n "$line" ]; do
	printf '%%s\n' "$line" >&$out
done <&3
exit "$code"
`

// maxAzArgs bounds the arguments the kit accepts from one invocation.
const maxAzArgs = 256

// NewAzureCLI writes a fake az into a new temporary directory and starts
// the loopback listener it talks to. Tokens live one hour unless
// [AzureCLI.SetLifetime] says otherwise. Close it when done.
func NewAzureCLI(iss *Issuer, p Principal) (*AzureCLI, error) {
	if runtime.GOOS == "windows" {
		return nil, errors.New("entratest: the fake Azure CLI needs bash and a Unix-like system")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		return nil, fmt.Errorf("entratest: the fake Azure CLI needs bash: %w", err)
	}
	if bash, err = filepath.Abs(bash); err != nil {
		return nil, fmt.Errorf("entratest: the fake Azure CLI needs bash: %w", err)
	}
	var secret [16]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("entratest: fake az secret: %w", err)
	}
	dir, err := os.MkdirTemp("", "entratest-az-")
	if err != nil {
		return nil, fmt.Errorf("entratest: fake az directory: %w", err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("entratest: fake az listener: %w", err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	a := &AzureCLI{
		iss:      iss,
		p:        p,
		dir:      dir,
		secret:   hex.EncodeToString(secret[:]),
		ln:       ln,
		done:     make(chan struct{}),
		conns:    map[net.Conn]struct{}{},
		lifetime: defaultLifetime,
	}
	script := fmt.Sprintf(azScript, bash, fmt.Sprintf("127.0.0.1/%d", addr.Port), a.secret)
	if err := os.WriteFile(filepath.Join(dir, "az"), []byte(script), 0o700); err != nil {
		_ = ln.Close()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("entratest: writing fake az: %w", err)
	}
	a.wg.Add(1)
	go a.accept()
	return a, nil
}

// Dir returns the directory holding the az script.
func (a *AzureCLI) Dir() string { return a.dir }

// Setenv puts the fake az first on PATH for the rest of the test, with
// t.Setenv (so the test must not be parallel; PATH is restored at its end).
// azidentity.AzureCLICredential runs "/bin/sh -c 'az account …'" and so
// finds it.
func (a *AzureCLI) Setenv(t testing.TB) {
	t.Helper()
	path := a.dir
	if old := os.Getenv("PATH"); old != "" {
		path += string(os.PathListSeparator) + old
	}
	t.Setenv("PATH", path)
}

// SetLatency makes each later invocation take at least d before it answers.
func (a *AzureCLI) SetLatency(d time.Duration) {
	a.mu.Lock()
	a.latency = d
	a.mu.Unlock()
}

// SetLifetime sets the lifetime of the tokens az prints from now on
// (default one hour; at least one second).
func (a *AzureCLI) SetLifetime(d time.Duration) {
	a.mu.Lock()
	a.lifetime = d
	a.mu.Unlock()
}

// FailWith makes later invocations print message on stderr and exit with
// status 1, as az does when, say, nobody is logged in ("ERROR: Please run
// 'az login' to setup account."). azidentity.AzureCLICredential returns an
// error carrying the message (a CredentialUnavailableError inside
// DefaultAzureCredential). FailWith("") makes az succeed again.
func (a *AzureCLI) FailWith(message string) {
	a.mu.Lock()
	a.failMsg = message
	a.mu.Unlock()
}

// Invocations returns how many times the script has run and reached the
// kit.
func (a *AzureCLI) Invocations() int64 { return a.invocations.Load() }

// Args returns a copy of the arguments of each invocation, in order (say,
// ["account" "get-access-token" "-o" "json" "--resource" "https://…"]).
func (a *AzureCLI) Args() [][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([][]string, len(a.args))
	for i, args := range a.args {
		out[i] = append([]string(nil), args...)
	}
	return out
}

// Close stops the listener, ends invocations in flight (their az exits with
// status 1), waits for them and removes the script's directory. It is safe
// to call more than once.
func (a *AzureCLI) Close() {
	a.closed.Do(func() {
		close(a.done)
		_ = a.ln.Close()
		a.mu.Lock()
		for c := range a.conns {
			_ = c.Close()
		}
		a.mu.Unlock()
		a.wg.Wait()
		_ = os.RemoveAll(a.dir)
	})
}

func (a *AzureCLI) accept() {
	defer a.wg.Done()
	backoff := time.Duration(0)
	for {
		c, err := a.ln.Accept()
		if err != nil {
			// Until Close, keep accepting after errors such as running out
			// of file descriptors, as net/http does, so az never waits on a
			// listener nobody serves.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-a.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		backoff = 0
		a.mu.Lock()
		select {
		case <-a.done:
			a.mu.Unlock()
			_ = c.Close()
			return
		default:
		}
		a.conns[c] = struct{}{}
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			a.serve(c)
			a.mu.Lock()
			delete(a.conns, c)
			a.mu.Unlock()
			_ = c.Close()
		}()
	}
}

// serve reads one invocation, NUL-separated: secret, argument count,
// arguments; and answers with the exit status on a line, then the output.
func (a *AzureCLI) serve(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	field := func() (string, error) {
		s, err := r.ReadString(0)
		return strings.TrimSuffix(s, "\x00"), err
	}
	secret, err := field()
	if err != nil || subtle.ConstantTimeCompare([]byte(secret), []byte(a.secret)) != 1 {
		return
	}
	ns, err := field()
	if err != nil {
		return
	}
	n, err := strconv.Atoi(ns)
	if err != nil || n < 0 || n > maxAzArgs {
		return
	}
	args := make([]string, n)
	for i := range args {
		if args[i], err = field(); err != nil {
			return
		}
	}
	a.invocations.Add(1)
	a.mu.Lock()
	a.args = append(a.args, args)
	lifetime, latency, failMsg := a.lifetime, a.latency, a.failMsg
	a.mu.Unlock()

	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-a.done:
			t.Stop()
			return
		case <-t.C:
		}
	}
	code, out := 0, ""
	if failMsg != "" {
		code, out = 1, failMsg
	} else {
		code, out = a.run(args, lifetime)
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d\n%s", code, out)
	if !strings.HasSuffix(out, "\n") {
		b.WriteByte('\n')
	}
	_, _ = io.Copy(c, &b)
}

// run executes az's arguments and returns the exit status and what goes to
// stdout (status 0) or stderr.
func (a *AzureCLI) run(args []string, lifetime time.Duration) (int, string) {
	if len(args) < 2 || args[0] != "account" || args[1] != "get-access-token" {
		return 2, fmt.Sprintf("ERROR: entratest fake az only knows 'az account get-access-token', not 'az %s'", strings.Join(args, " "))
	}
	var resource, tenant, subscription string
	output := "json"
	for i := 2; i < len(args); i++ {
		flag := args[i]
		if i+1 >= len(args) {
			return 2, fmt.Sprintf("ERROR: argument %s: expected one argument", flag)
		}
		val := args[i+1]
		i++
		switch flag {
		case "-o", "--output":
			output = val
		case "--resource":
			resource = val
		case "--scope":
			resource = strings.TrimSuffix(val, defaultSuffix)
		case "-t", "--tenant":
			tenant = val
		case "-s", "--subscription":
			subscription = val
		default:
			return 2, fmt.Sprintf("ERROR: unrecognized arguments: %s", flag)
		}
	}
	if output != "json" {
		return 2, fmt.Sprintf("ERROR: entratest fake az only prints json, not %q", output)
	}
	if resource == "" {
		resource = strings.TrimSuffix(ScopeARMPublic, defaultSuffix)
	}
	p := a.p
	if tenant != "" {
		p.TenantID = tenant
	}
	if p.TenantID == "" {
		p.TenantID = a.iss.TenantID()
	}
	if _, _, err := resourceOf(resource); err != nil || strings.HasSuffix(resource, defaultSuffix) {
		return 1, fmt.Sprintf("ERROR: AADSTS500011: The resource principal named %s was not found in the tenant named %s.", resource, p.TenantID)
	}
	tok, err := a.iss.Mint(p, resource, lifetime)
	if err != nil {
		return 1, "ERROR: " + err.Error()
	}
	if subscription == "" {
		subscription = subscriptionID
	}
	b, err := json.MarshalIndent(map[string]any{
		"accessToken":  tok.Token,
		"expiresOn":    tok.ExpiresOn.Local().Format("2006-01-02 15:04:05.000000"),
		"expires_on":   tok.ExpiresOn.Unix(),
		"subscription": subscription,
		"tenant":       p.TenantID,
		"tokenType":    "Bearer",
	}, "", "  ")
	if err != nil {
		return 1, "ERROR: " + err.Error()
	}
	return 0, string(b)
}
