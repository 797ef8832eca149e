package main

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// manifestFile is the sidecar manifest, also shown in the README.
var manifestFile = filepath.Join("..", "..", "deploy", "kubernetes", "pgentra-proxy-sidecar.yaml")

// The parts of Kubernetes objects the test reads.
type (
	k8sObject struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name        string            `yaml:"name"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"metadata"`
		Spec struct {
			Template struct {
				Metadata struct {
					Labels      map[string]string `yaml:"labels"`
					Annotations map[string]string `yaml:"annotations"`
				} `yaml:"metadata"`
				Spec struct {
					ServiceAccountName string         `yaml:"serviceAccountName"`
					InitContainers     []k8sContainer `yaml:"initContainers"`
					Containers         []k8sContainer `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	k8sContainer struct {
		Name          string   `yaml:"name"`
		RestartPolicy string   `yaml:"restartPolicy"`
		Args          []string `yaml:"args"`
		Env           []struct {
			Name  string `yaml:"name"`
			Value string `yaml:"value"`
		} `yaml:"env"`
		Ports []struct {
			ContainerPort int `yaml:"containerPort"`
		} `yaml:"ports"`
		StartupProbe   *k8sProbe `yaml:"startupProbe"`
		LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
		ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	}
	k8sProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port int    `yaml:"port"`
		} `yaml:"httpGet"`
		TimeoutSeconds int `yaml:"timeoutSeconds"`
	}
)

// readManifest parses the manifest's documents.
func readManifest(t *testing.T) (raw string, objs []k8sObject) {
	t.Helper()
	b, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(false)
	for {
		var o k8sObject
		if err := dec.Decode(&o); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("parsing %s: %v", manifestFile, err)
		}
		objs = append(objs, o)
	}
	return string(b), objs
}

// The README's manifest is the file's.
func TestSidecarManifestInREADME(t *testing.T) {
	raw, _ := readManifest(t)
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Running the proxy as a sidecar\n")
	if !ok {
		t.Fatal(`README.md has no section "Running the proxy as a sidecar"`)
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatal("the sidecar section has no yaml block")
	}
	block, _, _ = strings.Cut(block, "```\n")
	if block != raw {
		t.Errorf("the README's manifest differs from %s:\n%s", manifestFile, block)
	}
}

// sidecar is the manifest's proxy container, the pod's annotations, and
// its environment as a map.
func sidecar(t *testing.T, objs []k8sObject) (c k8sContainer, env map[string]string, annotations map[string]string) {
	t.Helper()
	var sa, dep *k8sObject
	for i := range objs {
		switch objs[i].Kind {
		case "ServiceAccount":
			sa = &objs[i]
		case "Deployment":
			dep = &objs[i]
		}
	}
	if sa == nil || dep == nil {
		t.Fatalf("the manifest has no ServiceAccount or no Deployment: %+v", objs)
	}
	pod := dep.Spec.Template
	// Workload identity: the service account names the client ID, the pod
	// uses it and is labelled for the webhook.
	if pod.Spec.ServiceAccountName != sa.Metadata.Name || sa.Metadata.Annotations["azure.workload.identity/client-id"] == "" ||
		pod.Metadata.Labels["azure.workload.identity/use"] != "true" {
		t.Errorf("workload identity is not set up: service account %q %v, pod uses %q, labels %v",
			sa.Metadata.Name, sa.Metadata.Annotations, pod.Spec.ServiceAccountName, pod.Metadata.Labels)
	}
	found := false
	for _, ic := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
		if len(ic.Args) > 0 && ic.Args[0] == "proxy" {
			c, found = ic, true
		}
	}
	if !found {
		t.Fatal("no container runs pgentra proxy")
	}
	env = map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	return c, env, pod.Metadata.Annotations
}

// The manifest's proxy, run with its arguments and variables (the upstream
// pointed at the emulator, the credential az's as workload identity
// cannot run here, and free ports for its listeners), answers each probe's
// path and the scrape path on the port they name: startup, liveness and
// readiness 200 with a good credential; without --run-connection-test and
// with a failing credential, readiness 503 (and startup and liveness 200),
// and with it, exit status 1.
func TestSidecarManifest(t *testing.T) {
	_, objs := readManifest(t)
	c, env, ann := sidecar(t, objs)
	if env["PGENTRA_CREDENTIAL"] != "workload-identity" {
		t.Errorf("PGENTRA_CREDENTIAL = %q; want workload-identity", env["PGENTRA_CREDENTIAL"])
	}
	if c.StartupProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Fatalf("probes missing: %+v", c)
	}
	if c.ReadinessProbe.TimeoutSeconds <= int(readinessWait.Seconds()) {
		t.Errorf("the readiness probe's timeout %ds is not over the handler's wait %v", c.ReadinessProbe.TimeoutSeconds, readinessWait)
	}
	if ann["prometheus.io/scrape"] != "true" {
		t.Errorf("prometheus.io/scrape = %q", ann["prometheus.io/scrape"])
	}
	// One port for everything: the HTTP address's, the container's, the
	// probes' and the scrape annotation's.
	host, port, err := net.SplitHostPort(env["PGENTRA_HTTP_ADDRESS"])
	if err != nil {
		t.Fatalf("PGENTRA_HTTP_ADDRESS %q: %v", env["PGENTRA_HTTP_ADDRESS"], err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		t.Errorf("PGENTRA_HTTP_ADDRESS %q: the kubelet probes the pod's IP; want 0.0.0.0", env["PGENTRA_HTTP_ADDRESS"])
	}
	ports := []string{port, ann["prometheus.io/port"]}
	for _, p := range []*k8sProbe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
		ports = append(ports, strconv.Itoa(p.HTTPGet.Port))
	}
	if len(c.Ports) > 0 {
		ports = append(ports, strconv.Itoa(c.Ports[0].ContainerPort))
	}
	for _, p := range ports {
		if p != port {
			t.Errorf("ports differ: %v", ports)
			break
		}
	}
	paths := map[string]string{"startup": c.StartupProbe.HTTPGet.Path, "liveness": c.LivenessProbe.HTTPGet.Path,
		"readiness": c.ReadinessProbe.HTTPGet.Path, "scrape": ann["prometheus.io/path"]}

	f := newFixture(t)
	az := f.az(t, alice)
	run := func(args []string) []string {
		e := []string{pathWith(az.Dir())}
		for k, v := range env {
			switch k {
			case "PGENTRA_UPSTREAM":
				v = f.srv.Addr()
			case "PGENTRA_CREDENTIAL":
				v = "cli"
			case "PGENTRA_LISTEN":
				v = "127.0.0.1:0"
			case "PGENTRA_HTTP_ADDRESS":
				v = net.JoinHostPort(host, "0")
			}
			e = append(e, k+"="+v)
		}
		return append(childEnv(e...), "PGENTRA_SSLROOTCERT="+f.srv.CAFile())
	}
	urlOf := func(p *proxyProc) string {
		_, got, err := net.SplitHostPort(strings.TrimPrefix(p.httpURL(t), "http://"))
		if err != nil {
			t.Fatal(err)
		}
		return "http://127.0.0.1:" + got
	}

	p := startProxyCmdUntil(t, run(c.Args), listeningRE, c.Args[1:]...)
	base := urlOf(p)
	for _, probe := range []string{"startup", "liveness", "readiness"} {
		waitGet(t, base+paths[probe], 200, "ok")
	}
	if paths["scrape"] != "/metrics" {
		t.Errorf("prometheus.io/path = %q; want /metrics", paths["scrape"])
	}
	if metricValue(scrape(t, base), "pgentra_proxy_token_fetches_total") < 1 {
		t.Errorf("no token fetch counted after the connection test")
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}

	// A failing credential.
	az.FailWith("ERROR: AADSTS70021: No matching federated identity record found for presented assertion.")
	var noTest []string
	for _, a := range c.Args[1:] {
		if a != "--run-connection-test" {
			noTest = append(noTest, a)
		}
	}
	p = startProxyCmdUntil(t, run(c.Args), listeningRE, noTest...)
	base = urlOf(p)
	wantGet(t, base+paths["startup"], 200, "ok")
	wantGet(t, base+paths["liveness"], 200, "ok")
	wantGet(t, base+paths["readiness"], 503, "no Entra token")
	p.stop(t)
	r := pgentra(t, run(c.Args), c.Args...)
	if r.code != 1 || !strings.Contains(r.stderr, "connection test failed") || !strings.Contains(r.stderr, "AADSTS70021") {
		t.Errorf("the manifest's proxy with a failing credential: %+v; want exit status 1 and the credential's error", r)
	}
	checkJSONLines(t, r.stderr, "connection test failed")
}
