// Command proxy measures the throughput of pgentra proxy next to a direct
// connection and to pgbouncer, in one run, against one real PostgreSQL
// over verified TLS. It is not a test and CI does not run it; run.sh in
// this directory runs it (installing pgbouncer if needed):
//
//	bench/proxy/run.sh [-duration 20s] [-rounds 5]
//
// It starts a throwaway PostgreSQL with TLS (internal/pgtest), creates a
// role whose password is an Entra-shaped token (the "token as password"
// trick: the server checks the token as Azure would check the same
// string), initializes pgbench's tables, then for each round runs
//
//	pgbench -S -c 4 -j 2 -T <duration>
//
// three ways: direct (sslmode=verify-full), through the proxy engine
// (proxy.Server, the code behind pgentra proxy, upstream verify-full, one
// TokenSource), and through pgbouncer in session mode with
// server_tls_sslmode=verify-full. Clients reach the proxy and pgbouncer
// over loopback TCP in plaintext, as local tools would. The three paths
// alternate within each round, so a change in the machine's load falls on
// all of them. It prints each run's TPS and the CPU time the proxy and
// pgbouncer used, then the medians and the medians of the same-round
// ratios, and writes a CPU profile of the proxy during its last run.
//
// With -paths pgbouncer-tx,pgbouncer-tx-proxy it compares instead the two
// ways of running a self-hosted pgbouncer in transaction mode (README: A
// self-hosted PgBouncer with Entra tokens): pgbouncer alone, logging in
// over verified TLS with a static password (the token, as in the
// pgbouncer path), against pgbouncer in front of the proxy engine on a
// unix socket (no password in pgbouncer; the proxy logs in with the
// TokenSource's token over verified TLS).
//
// With -paths proxy,proxy-metrics it measures the cost of pgentra proxy
// --prometheus: proxy-metrics is a second proxy engine, configured the
// same, whose Prometheus handler (internal/proxymetrics, as --prometheus
// serves it) is scraped over HTTP every -scrape-interval while its run
// lasts; the scrapes' CPU counts in its hop CPU.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgentra/entraauth"
	"github.com/pgentra/entraauth/entratest"
	"github.com/pgentra/entraauth/internal/pgtest"
	"github.com/pgentra/entraauth/internal/proxymetrics"
	"github.com/pgentra/entraauth/proxy"
)

func main() {
	duration := flag.Duration("duration", 20*time.Second, "length of each pgbench run (-T)")
	rounds := flag.Int("rounds", 5, "rounds of direct, proxy, pgbouncer, interleaved")
	scale := flag.Int("scale", 10, "pgbench -i scale")
	profile := flag.String("cpuprofile", "proxy-cpu.pprof", "where to write the proxy's CPU profile (last round)")
	unix := flag.Bool("unix", false, "also measure clients reaching the proxy over a unix socket (proxy-unix)")
	scrapeEvery := flag.Duration("scrape-interval", time.Second, "how often proxy-metrics is scraped during its runs")
	pathList := flag.String("paths", "direct,proxy,pgbouncer",
		"the paths to measure, in round order: direct, proxy, pgbouncer, pgbouncer-tx (transaction mode, static password), pgbouncer-tx-proxy (transaction mode, to the proxy on a unix socket), proxy-metrics (the proxy with its Prometheus handler scraped)")
	flag.Parse()
	paths := strings.Split(*pathList, ",")
	if *unix {
		paths = append(paths, "proxy-unix")
	}
	if err := run(*duration, *rounds, *scale, *profile, paths, *scrapeEvery); err != nil {
		fmt.Fprintln(os.Stderr, "bench/proxy:", err)
		os.Exit(1)
	}
}

const role = "bench-alice@contoso.com"

func run(duration time.Duration, rounds, scale int, profile string, paths []string, scrapeEvery time.Duration) error {
	for _, p := range paths {
		if !slices.Contains([]string{"direct", "proxy", "pgbouncer", "pgbouncer-tx", "pgbouncer-tx-proxy", "proxy-unix", "proxy-metrics"}, p) {
			return fmt.Errorf("unknown path %q in -paths", p)
		}
	}
	ctx := context.Background()
	pg, err := pgtest.Start(ctx, pgtest.Options{Logf: func(string, ...any) {}})
	if err != nil {
		return err
	}
	defer pg.Stop()

	// The token the proxy will use is the role's password.
	iss, err := entratest.NewIssuer()
	if err != nil {
		return err
	}
	cred := entratest.NewCredential(iss, entratest.User(role))
	cred.SetLifetime(2 * time.Hour)
	ts := entraauth.NewTokenSource(cred, entraauth.WithRequireVerifiedTLS())
	tok, err := ts.Token(ctx)
	if err != nil {
		return err
	}
	if err := pg.CreateRole(ctx, role, tok.Value); err != nil {
		return err
	}
	if err := pg.Exec(ctx, fmt.Sprintf(`create database bench owner %q`, role)); err != nil {
		return err
	}
	direct := fmt.Sprintf("host=127.0.0.1 port=%d dbname=bench user=%s sslmode=verify-full sslrootcert=%s", pg.Port, role, pg.CAFile)
	fmt.Printf("PostgreSQL %s on %s, TLS with certificate verification; pgbench scale %d\n", pg.Version, pg.Addr(), scale)
	if out, err := pgbench(tok.Value, "-i", "-q", "-s", strconv.Itoa(scale), direct); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}

	// The proxy engine, as pgentra proxy runs it.
	srv, err := proxy.New(proxy.Config{
		Upstream:    fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s", pg.Port, pg.CAFile),
		TokenSource: ts,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = srv.Serve(pl) }()
	defer srv.Close()
	_, proxyPort, _ := net.SplitHostPort(pl.Addr().String())
	viaProxy := fmt.Sprintf("host=127.0.0.1 port=%s dbname=bench sslmode=disable", proxyPort)

	// proxy-metrics: the same engine, with its Prometheus handler on HTTP.
	viaMetrics, scrapeOn, scrapes, err := startMetricsProxy(ts, pg, scrapeEvery)
	if err != nil {
		return err
	}
	defer scrapeOn(false)

	// The proxy's unix socket, for proxy-unix and for pgbouncer-tx-proxy
	// (as pgbouncer's OS user: pgentra proxy --unix-socket makes it 0600).
	dir, err := os.MkdirTemp("", "bench-proxy-sock-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	sock := filepath.Join(dir, ".s.PGSQL.5432")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(sock, uidOf("postgres"), -1); err != nil {
			return err
		}
	}
	go func() { _ = srv.Serve(ul) }()
	viaProxyUnix := fmt.Sprintf("host=%s port=5432 dbname=bench", dir)

	// Each pgbouncer path has a pgbouncer of its own.
	bouncers := map[string]*bouncer{}
	staticPassword := fmt.Sprintf("host=127.0.0.1 port=%d dbname=bench user=%s password=%s", pg.Port, quoteIni(role), tok.Value)
	for _, p := range paths {
		var b *bouncer
		switch p {
		case "pgbouncer":
			b, err = startPgbouncer(pg, staticPassword, "session")
		case "pgbouncer-tx":
			b, err = startPgbouncer(pg, staticPassword, "transaction")
		case "pgbouncer-tx-proxy":
			b, err = startPgbouncer(pg, fmt.Sprintf("host=%s port=5432 dbname=bench user=%s", dir, quoteIni(role)), "transaction")
		default:
			continue
		}
		if err != nil {
			return err
		}
		defer b.stop()
		bouncers[p] = b
	}
	viaBouncer := func(p string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d dbname=bench user=%s sslmode=disable", bouncers[p].port, role)
	}

	args := []string{"-S", "-n", "-c", "4", "-j", "2", "-T", strconv.Itoa(int(duration.Seconds()))}
	fmt.Printf("pgbench %s, %d rounds\n\n", strings.Join(args, " "), rounds)
	fmt.Printf("%-6s %-18s %10s %10s %14s\n", "round", "path", "tps", "lat_ms", "hop_cpu_s")
	tps := map[string][]float64{}
	cpus := map[string][]float64{} // hop CPU seconds per transaction
	for r := 1; r <= rounds; r++ {
		for _, path := range paths {
			var conn string
			var cpu func() time.Duration
			switch path {
			case "direct":
				conn, cpu = direct, func() time.Duration { return 0 }
			case "proxy":
				conn, cpu = viaProxy, selfCPU
			case "pgbouncer", "pgbouncer-tx":
				conn, cpu = viaBouncer(path), bouncers[path].cpu
			case "pgbouncer-tx-proxy":
				b := bouncers[path]
				conn, cpu = viaBouncer(path), func() time.Duration { return b.cpu() + selfCPU() }
			case "proxy-unix":
				conn, cpu = viaProxyUnix, selfCPU
			case "proxy-metrics":
				conn, cpu = viaMetrics, selfCPU
				scrapeOn(true)
			}
			if path == "proxy" && r == rounds && profile != "" {
				f, err := os.Create(profile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
			}
			c0 := cpu()
			out, err := pgbench(tok.Value, append(args, conn)...)
			c1 := cpu()
			if path == "proxy-metrics" {
				scrapeOn(false)
			}
			if path == "proxy" && r == rounds && profile != "" {
				pprof.StopCPUProfile()
			}
			if err != nil {
				return fmt.Errorf("pgbench via %s: %v\n%s", path, err, out)
			}
			t, lat := parsePgbench(out)
			hop := (c1 - c0).Seconds()
			fmt.Printf("%-6d %-18s %10.0f %10.3f %14.2f\n", r, path, t, lat, hop)
			tps[path] = append(tps[path], t)
			cpus[path] = append(cpus[path], hop/(t*duration.Seconds()))
		}
	}
	// Medians, and medians of the same-round ratios, which cancel the
	// load that other work on the machine puts on one round.
	ratio := func(a, b string) float64 {
		rs := make([]float64, rounds)
		for i := range rs {
			rs[i] = tps[a][i] / tps[b][i]
		}
		return median(rs)
	}
	fmt.Printf("\nmedian over %d rounds:\n", rounds)
	for _, path := range paths {
		fmt.Printf("  %-18s tps %8.0f, hop CPU per transaction %.1f µs\n", path, median(tps[path]), median(cpus[path])*1e6)
	}
	fmt.Println("median same-round ratios:")
	for _, pair := range [][2]string{
		{"proxy", "pgbouncer"}, {"proxy", "direct"}, {"pgbouncer", "direct"},
		{"proxy-unix", "direct"}, {"proxy-unix", "pgbouncer"},
		{"pgbouncer-tx-proxy", "pgbouncer-tx"}, {"pgbouncer-tx", "direct"}, {"pgbouncer-tx-proxy", "direct"},
		{"proxy-metrics", "proxy"},
	} {
		if tps[pair[0]] != nil && tps[pair[1]] != nil {
			fmt.Printf("  %s / %s %.3f\n", pair[0], pair[1], ratio(pair[0], pair[1]))
		}
	}
	if tps["proxy-metrics"] != nil {
		fmt.Printf("proxy-metrics scrapes: %d (every %v during its runs), each checked for pgentra_proxy_sessions_opened_total\n", scrapes(), scrapeEvery)
	}
	fmt.Printf("GOMAXPROCS %d, %s\n", runtime.GOMAXPROCS(0), runtime.Version())
	if profile != "" {
		fmt.Printf("CPU profile of the proxy's last run: %s (go tool pprof -top %s)\n", profile, profile)
	}
	return nil
}

// median returns the middle value of xs (the mean of the two middle ones
// for an even count).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// pgbench runs pgbench with the token as PGPASSWORD (the proxy's clients
// need none; the direct and pgbouncer paths do).
func pgbench(password string, args ...string) (string, error) {
	cmd := exec.Command("pgbench", args...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var (
	tpsRE = regexp.MustCompile(`tps = ([0-9.]+)`)
	latRE = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
)

func parsePgbench(out string) (tps, latMS float64) {
	if m := tpsRE.FindStringSubmatch(out); m != nil {
		tps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := latRE.FindStringSubmatch(out); m != nil {
		latMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return tps, latMS
}

// selfCPU is this process's CPU time (user and system): the proxy's,
// since nothing else here works while pgbench runs.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bouncer is a running pgbouncer.
type bouncer struct {
	cmd  *exec.Cmd
	dir  string
	port int
}

// startPgbouncer runs pgbouncer in poolMode with one database, bench,
// whose [databases] line is server: to pg with a password over verified
// TLS, or to the proxy's unix socket (where pgbouncer uses no TLS and no
// password). pgbouncer refuses to run as root, so as root it runs as the
// postgres OS user.
func startPgbouncer(pg *pgtest.Server, server, poolMode string) (*bouncer, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if bin = "/usr/sbin/pgbouncer"; !fileExists(bin) {
			return nil, errors.New("pgbouncer not found (Debian: apt-get install pgbouncer; run.sh does it)")
		}
	}
	dir, err := os.MkdirTemp("", "bench-pgbouncer-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ca := filepath.Join(dir, "ca.pem")
	caPEM, err := os.ReadFile(pg.CAFile)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(ca, caPEM, 0o644); err != nil {
		return nil, err
	}
	ini := fmt.Sprintf(`[databases]
bench = %s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = any
pool_mode = %s
max_client_conn = 100
default_pool_size = 20
server_tls_sslmode = verify-full
server_tls_ca_file = %s
logfile = %s
pidfile = %s
`, server, port, poolMode, ca, filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	cfg := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(cfg, []byte(ini), 0o644); err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", "-u", "postgres", "--", bin, cfg)
		// The log file must be writable by postgres.
		if err := os.Chown(dir, uidOf("postgres"), -1); err != nil {
			return nil, err
		}
	} else {
		cmd = exec.Command(bin, cfg)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &bouncer{cmd: cmd, dir: dir, port: port}
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			b.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			return nil, fmt.Errorf("pgbouncer did not start: %s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return b, nil
}

// quoteIni quotes a user name with @ for pgbouncer's connection string.
func quoteIni(s string) string { return "'" + s + "'" }

// stop shuts pgbouncer down at once (SIGTERM to pgbouncer itself: runuser
// does not pass SIGINT on, and SIGINT's safe shutdown waits for clients),
// killing it after 10 s.
func (b *bouncer) stop() {
	if b.cmd.Process != nil {
		if pid, err := os.ReadFile(filepath.Join(b.dir, "pgbouncer.pid")); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				_ = syscall.Kill(n, syscall.SIGTERM)
			}
		}
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = b.cmd.Process.Kill()
			<-done
		}
	}
	os.RemoveAll(b.dir)
}

// cpu is pgbouncer's CPU time so far, from /proc (runuser's child).
func (b *bouncer) cpu() time.Duration {
	pidText, err := os.ReadFile(filepath.Join(b.dir, "pgbouncer.pid"))
	if err != nil {
		return 0
	}
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pidText)) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func uidOf(name string) int {
	out, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		return -1
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// startMetricsProxy starts a second proxy engine like the first, with its
// Prometheus handler (as pgentra proxy --prometheus serves it) on a
// loopback HTTP listener. on(true) starts scraping it every interval, as
// Prometheus would; on(false) stops. scrapes counts the good scrapes.
func startMetricsProxy(ts *entraauth.TokenSource, pg *pgtest.Server, interval time.Duration) (conn string, on func(bool), scrapes func() int64, err error) {
	srv, err := proxy.New(proxy.Config{
		Upstream:    fmt.Sprintf("host=127.0.0.1 port=%d sslmode=verify-full sslrootcert=%s", pg.Port, pg.CAFile),
		TokenSource: ts,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return "", nil, nil, err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	go func() { _ = srv.Serve(pl) }()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	hs := &http.Server{Handler: proxymetrics.Handler(srv), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(hl) }()
	url := "http://" + hl.Addr().String() + "/metrics"
	var good atomic.Int64
	var stop chan struct{}
	var done chan struct{}
	on = func(start bool) {
		if stop != nil {
			close(stop)
			<-done
			stop = nil
		}
		if !start {
			return
		}
		stop, done = make(chan struct{}), make(chan struct{})
		go func(stop, done chan struct{}) {
			defer close(done)
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				resp, err := http.Get(url)
				if err != nil {
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if strings.Contains(string(b), "pgentra_proxy_sessions_opened_total") {
					good.Add(1)
				}
			}
		}(stop, done)
	}
	_, port, _ := net.SplitHostPort(pl.Addr().String())
	return fmt.Sprintf("host=127.0.0.1 port=%s dbname=bench sslmode=disable", port), on, good.Load, nil
}
