package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/metrics"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

// Files of the compose stack, relative to this package's directory.
var (
	composeFile       = filepath.Join("..", "docker-compose.yml")
	apisixConfig      = filepath.Join("apisix", "config.yaml")
	prometheusConfig  = filepath.Join("prometheus", "prometheus.yml")
	grafanaDatasource = filepath.Join("grafana", "provisioning", "datasources", "prometheus.yml")
	grafanaProvider   = filepath.Join("grafana", "provisioning", "dashboards", "graylane.yml")
	dashboardFile     = filepath.Join("grafana", "dashboards", "graylane.json")
)

// datasourceUID is the uid of the provisioned Prometheus datasource, which the dashboard names.
const datasourceUID = "prometheus"

// runnerMetricsEnv is the variable that gives graylane's APISIX plugin runner its /metrics address
// (MetricsAddrEnv in apisix-plugin, a main package this test cannot import).
const runnerMetricsEnv = "GRAYLANE_METRICS_ADDR"

// rolloutMetrics returns the metrics of the rollout controller (rollout.Controller, which `graylane
// rollout controller` serves), with their labels. They have no series until it leads and drives a
// rollout, so they are read from the descriptions it gives a registry; client_golang offers no
// accessor of a Desc's name and labels but its String. A name ending in _total is a counter, the
// others are gauges.
func rolloutMetrics(t *testing.T) map[string]exported {
	t.Helper()
	r, err := registrar.New(registrar.NewConfig("127.0.0.1:1")) // never dialled: Describe reads no state
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc)
	go func() {
		rollout.NewController(rollout.New(r), rollout.ControllerOptions{}).Describe(ch)
		close(ch)
	}()
	var descs []*prometheus.Desc
	for d := range ch {
		descs = append(descs, d)
	}
	out := map[string]exported{}
	for _, d := range descs {
		m := descString.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("rollout controller: a metric description this test cannot read: %s", d)
		}
		e := exported{kind: dto.MetricType_GAUGE}
		if strings.HasSuffix(m[1], "_total") {
			e.kind = dto.MetricType_COUNTER
		}
		if m[2] != "" {
			e.labels = strings.Split(m[2], ",")
		}
		out[m[1]] = e
	}
	if len(out) == 0 {
		t.Fatal("rollout controller: describes no metric")
	}
	return out
}

// descString matches prometheus.Desc.String: the name and the variable labels.
var descString = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", .*, variableLabels: \{([^}]*)\}\}$`)

// scrapeMetrics are the series Prometheus adds to every target, and targetLabels the labels it
// adds to every series.
var (
	scrapeMetrics = map[string]exported{"up": {dto.MetricType_GAUGE, nil}}
	targetLabels  = []string{"job", "instance"}
)

// exported is a metric's type and label names.
type exported struct {
	kind   dto.MetricType
	labels []string
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string     `json:"name"`
			Type       string     `json:"type"`
			Datasource datasource `json:"datasource"`
			Query      struct {
				Query string `json:"query"`
			} `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int        `json:"id"`
	Type       string     `json:"type"`
	Title      string     `json:"title"`
	Datasource datasource `json:"datasource"`
	Targets    []struct {
		RefID      string     `json:"refId"`
		Expr       string     `json:"expr"`
		Datasource datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// query is one PromQL expression of the dashboard, named for messages.
type query struct{ where, expr string }

// readDashboard parses the dashboard and returns it with its queries.
func readDashboard(t *testing.T) (dashboard, []query) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s does not parse: %v", dashboardFile, err)
	}
	var queries []query
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				queries = append(queries, query{fmt.Sprintf("panel %q, query %s", p.Title, tg.RefID), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, queries
}

// labelValues matches the template variable's query, label_values(metric, label).
var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)

// TestDashboard: the dashboard parses, names the provisioned datasource everywhere, has the
// $service variable, and every panel that shows data has queries.
func TestDashboard(t *testing.T) {
	d, queries := readDashboard(t)
	if d.UID != "graylane" || d.Title != "graylane: gray release" {
		t.Errorf("uid %q, title %q; want graylane, %q", d.UID, d.Title, "graylane: gray release")
	}
	if len(d.Templating.List) != 1 || d.Templating.List[0].Name != "service" || d.Templating.List[0].Type != "query" {
		t.Fatalf("templating: want the one query variable service, got %+v", d.Templating.List)
	}
	v := d.Templating.List[0]
	if !labelValues.MatchString(v.Query.Query) {
		t.Errorf("variable service: query %q, want label_values(METRIC, service)", v.Query.Query)
	}
	if v.Datasource.UID != datasourceUID {
		t.Errorf("variable service: datasource %q, want %q", v.Datasource.UID, datasourceUID)
	}
	ids := map[int]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q have the same id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.Type != "row" {
				if p.Datasource.UID != datasourceUID {
					t.Errorf("panel %q: datasource %q, want %q", p.Title, p.Datasource.UID, datasourceUID)
				}
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no queries", p.Title)
				}
			}
			for _, tg := range p.Targets {
				if tg.Datasource.UID != datasourceUID || strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q, query %s: datasource %q, expr %q", p.Title, tg.RefID, tg.Datasource.UID, tg.Expr)
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if len(queries) == 0 {
		t.Fatal("the dashboard has no queries")
	}
}

// graylaneMetrics returns the metrics graylane exports: those its registries gather (the decision
// counter, the server and client request metrics, the runner's Go and process collectors), the
// rollout controller's and the series Prometheus adds. A histogram stands for its _bucket (with
// le), _sum and _count series.
func graylaneMetrics(t *testing.T) map[string]exported {
	t.Helper()
	reg, _ := sampleRegistry(t)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]exported{}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "graylane_rollout_") {
			continue // sampleRegistry's stand-ins: the controller's own descriptions are read below
		}
		var labels []string
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(labels, l.GetName()) {
					labels = append(labels, l.GetName())
				}
			}
		}
		e := exported{f.GetType(), labels}
		out[f.GetName()] = e
		if f.GetType() == dto.MetricType_HISTOGRAM {
			out[f.GetName()+"_bucket"] = exported{dto.MetricType_COUNTER, append(slices.Clone(labels), "le")}
			out[f.GetName()+"_sum"] = exported{dto.MetricType_COUNTER, labels}
			out[f.GetName()+"_count"] = exported{dto.MetricType_COUNTER, labels}
		}
	}
	for _, m := range []map[string]exported{rolloutMetrics(t), scrapeMetrics} {
		for name, e := range m {
			out[name] = e
		}
	}
	for _, name := range []string{"graylane_decisions_total", "graylane_server_requests_total",
		"graylane_server_errors_total", "graylane_server_request_duration_seconds_bucket"} {
		if _, ok := out[name]; !ok {
			t.Fatalf("%s is not among the gathered metrics: %v", name, slices.Sorted(maps.Keys(out)))
		}
	}
	return out
}

// TestDashboardNamesExportedMetrics: every query of the dashboard, and its variable, names only
// metrics graylane exports, and only labels those metrics (or their targets) carry.
func TestDashboardNamesExportedMetrics(t *testing.T) {
	known := graylaneMetrics(t)
	d, queries := readDashboard(t)
	m := labelValues.FindStringSubmatch(d.Templating.List[0].Query.Query)
	if m == nil {
		t.Fatalf("variable service: %q is not label_values(METRIC, LABEL)", d.Templating.List[0].Query.Query)
	}
	queries = append(queries, query{"variable service", fmt.Sprintf("%s{%s=\"x\"}", m[1], m[2])})
	for _, q := range queries {
		names, labels := promqlNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: names no metric: %s", q.where, q.expr)
		}
		allowed := slices.Clone(targetLabels)
		for _, n := range names {
			e, ok := known[n]
			if !ok {
				t.Errorf("%s: %s is not a metric graylane exports: %s", q.where, n, q.expr)
				continue
			}
			allowed = append(allowed, e.labels...)
		}
		for _, l := range labels {
			if !slices.Contains(allowed, l) {
				t.Errorf("%s: label %s is on none of %v: %s", q.where, l, names, q.expr)
			}
		}
	}
}

// sampleRegistry registers graylane's metrics as its processes do, with stand-ins for the rollout
// controller's, and returns it with a function that records one round of traffic: requests in two
// lanes of bservice (some canary errors), gateway decisions, a rollout at step 2 of 4 and a
// notification.
func sampleRegistry(t *testing.T) (*prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	decisions, err := metrics.NewDecisions(reg)
	if err != nil {
		t.Fatal(err)
	}
	served, err := metrics.NewServerRequests(reg)
	if err != nil {
		t.Fatal(err)
	}
	calls, err := metrics.NewClientRequests(reg)
	if err != nil {
		t.Fatal(err)
	}
	// Stand-ins for the rollout controller's metrics, with its names and labels.
	gaugeVecs := map[string]*prometheus.GaugeVec{}
	counterVecs := map[string]*prometheus.CounterVec{}
	for name, e := range rolloutMetrics(t) {
		if e.kind == dto.MetricType_COUNTER {
			counterVecs[name] = prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: "stand-in"}, e.labels)
			reg.MustRegister(counterVecs[name])
			continue
		}
		gaugeVecs[name] = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: "stand-in"}, e.labels)
		reg.MustRegister(gaugeVecs[name])
	}
	gauges := func(name string) *prometheus.GaugeVec {
		t.Helper()
		if g, ok := gaugeVecs[name]; ok {
			return g
		}
		t.Fatalf("the rollout controller has no gauge %s", name)
		return nil
	}
	notifications, ok := counterVecs["graylane_rollout_notifications_total"]
	if !ok {
		t.Fatal("the rollout controller has no counter graylane_rollout_notifications_total")
	}
	gauges("graylane_rollout_controller_leader").WithLabelValues().Set(1)
	gauges("graylane_rollout_step").WithLabelValues("bservice", "canary").Set(2)
	gauges("graylane_rollout_steps").WithLabelValues("bservice", "canary").Set(4)
	gauges("graylane_rollout_weight").WithLabelValues("bservice", "canary").Set(5)
	gauges("graylane_rollout_gate_unknown").WithLabelValues("bservice", "canary").Set(0)
	for _, phase := range []string{"running", "paused", "promoted", "rolled_back", "aborted"} {
		v := 0.0
		if phase == "running" {
			v = 1
		}
		gauges("graylane_rollout_phase").WithLabelValues("bservice", "canary", phase).Set(v)
	}
	for gate, v := range map[string]float64{"requests": 120, "error_ratio": 0.01, "p99_seconds": 0.2,
		"baseline_error_ratio": 0.005, "baseline_p99_seconds": 0.15} {
		gauges("graylane_rollout_gate").WithLabelValues("bservice", "canary", gate).Set(v)
	}
	n := 0
	round := func() {
		n++
		for _, lane := range []string{"stable", "canary"} {
			served.Observe("bservice", lane, "/api/user", 200, 20*time.Millisecond)
			calls.Observe("cservice", lane, "/graylane.example.Echo/Who", 200, 5*time.Millisecond)
		}
		if n%3 == 0 {
			served.Observe("bservice", "canary", "/api/user", 500, 300*time.Millisecond)
		}
		decisions.Observe("bservice", "stable", gray.ReasonBase)
		decisions.Observe("bservice", "canary", gray.ReasonMatch)
		decisions.Observe("bservice", "canary", gray.ReasonWeight)
		notifications.WithLabelValues("bservice", "step", "ok").Inc()
	}
	round()
	return reg, round
}

// TestDashboardQueriesAnswer runs every query of the dashboard in a real Prometheus that scrapes
// graylane's metrics under traffic, with the dashboard's variables filled in as Grafana does: each
// must parse and return series, at least one of them a number.
func TestDashboardQueriesAnswer(t *testing.T) {
	reg, round := sampleRegistry(t)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				round()
			}
		}
	}()
	defer func() { close(stop); <-done }()

	target := strings.TrimPrefix(srv.URL, "http://")
	prom := promtest.Start(t, target)
	prom.WaitScraped(t, 1)

	vars := strings.NewReplacer("${service}", "bservice", "$service", "bservice",
		"$__rate_interval", "10s", "$__interval", "1s", "$__range", "1h")
	d, queries := readDashboard(t)
	for _, q := range queries {
		expr := vars.Replace(q.expr)
		if strings.Contains(expr, "$") {
			t.Errorf("%s: a variable the test does not fill in: %s", q.where, q.expr)
			continue
		}
		var last string
		deadline := time.Now().Add(20 * time.Second)
		for {
			ok, msg := answers(t, prom.URL, expr)
			if ok {
				break
			}
			last = msg
			if time.Now().After(deadline) {
				t.Errorf("%s: %s\n%s", q.where, last, q.expr)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	m := labelValues.FindStringSubmatch(d.Templating.List[0].Query.Query)
	if m == nil {
		t.Fatalf("variable service: %q is not label_values(METRIC, LABEL)", d.Templating.List[0].Query.Query)
	}
	var values struct {
		Data []string `json:"data"`
	}
	getJSON(t, prom.URL+"/api/v1/label/"+m[2]+"/values?"+url.Values{"match[]": {m[1]}}.Encode(), &values)
	if !slices.Equal(values.Data, []string{"bservice"}) {
		t.Errorf("variable service: %s gives %q, want [bservice]", d.Templating.List[0].Query.Query, values.Data)
	}
}

// answers runs an instant query and reports whether it returned series with a number among them,
// or what it returned instead.
func answers(t *testing.T, base, expr string) (bool, string) {
	t.Helper()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	getJSON(t, base+"/api/v1/query?"+url.Values{"query": {expr}}.Encode(), &r)
	if r.Status != "success" {
		t.Fatalf("Prometheus refuses the query: %s\n%s", r.Error, expr)
	}
	if r.Data.ResultType != "vector" {
		return false, "result type " + r.Data.ResultType + ", want a vector"
	}
	if len(r.Data.Result) == 0 {
		return false, "no series"
	}
	for _, s := range r.Data.Result {
		if v, _ := s.Value[1].(string); v != "NaN" && v != "" {
			return true, ""
		}
	}
	return false, fmt.Sprintf("only NaN: %v", r.Data.Result)
}

func getJSON(t *testing.T, u string, into any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// compose is the part of docker-compose.yml the tests read (yaml.v3 resolves its anchors and merge
// keys).
type compose struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
}

func readCompose(t *testing.T) compose {
	t.Helper()
	var c compose
	readYAML(t, composeFile, &c)
	if len(c.Services) == 0 {
		t.Fatalf("%s: no services", composeFile)
	}
	return c
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s does not parse: %v", path, err)
	}
}

// mount returns the container path the service mounts source (relative to the repository) at.
func (s composeService) mount(source string) (string, bool) {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && filepath.Clean(parts[0]) == filepath.Clean(source) {
			return parts[1], true
		}
	}
	return "", false
}

// listenPort returns the port of a listen address such as :9466 or 0.0.0.0:9466.
func listenPort(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return port
}

// TestComposeConfig: docker-compose accepts docker-compose.yml, and every file it mounts from the
// repository exists. docker-compose is required, as in `make compose`: no Docker engine is needed.
func TestComposeConfig(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose is not on PATH: run `make compose` (it installs Debian's docker-compose package) to validate docker-compose.yml")
	}
	cmd := exec.Command(bin, "-f", composeFile, "config", "-q")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker-compose -f %s config -q: %v\n%s", composeFile, err, out)
	}
	for name, s := range readCompose(t).Services {
		for _, v := range s.Volumes {
			source := strings.Split(v, ":")[0]
			if !strings.HasPrefix(source, ".") {
				continue // a named volume
			}
			if _, err := os.Stat(filepath.Join("..", source)); err != nil {
				t.Errorf("service %s mounts %s, which does not exist: %v", name, source, err)
			}
		}
	}
}

// scrapeConfig is the part of the Prometheus configuration the tests read.
type scrapeConfig struct {
	Global struct {
		ScrapeInterval string `yaml:"scrape_interval"`
	} `yaml:"global"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// TestPrometheusConfig: promtool accepts the scrape configuration, and it scrapes what the compose
// stack serves: every example service on its LISTEN port, the plugin runner at the address
// docker-compose.yml gives it (and APISIX passes on to it), the rollout controller on its --listen.
func TestPrometheusConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not on PATH: run `make prometheus` (it installs Debian's prometheus package, which has promtool)")
	}
	if out, err := exec.Command(promtool, "check", "config", prometheusConfig).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config %s: %v\n%s", prometheusConfig, err, out)
	}
	var cfg scrapeConfig
	readYAML(t, prometheusConfig, &cfg)
	jobs := map[string][]string{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			jobs[sc.JobName] = append(jobs[sc.JobName], st.Targets...)
		}
	}
	c := readCompose(t)

	var backends []string
	for name, s := range c.Services {
		if slices.Equal(s.Entrypoint, []string{"backend"}) {
			listen := s.Environment["LISTEN"]
			if listen == "" {
				listen = ":8080" // examples/backend's default
			}
			backends = append(backends, name+":"+listenPort(t, listen))
		}
	}
	if len(backends) == 0 {
		t.Fatal("no example service (entrypoint backend) in docker-compose.yml")
	}
	slices.Sort(backends)
	if got := slices.Sorted(slices.Values(jobs["backends"])); !slices.Equal(got, backends) {
		t.Errorf("job backends scrapes %v; docker-compose.yml runs %v", got, backends)
	}

	apisix, ok := c.Services["apisix"]
	if !ok {
		t.Fatal("docker-compose.yml has no apisix service")
	}
	addr := apisix.Environment[runnerMetricsEnv]
	if addr == "" {
		t.Fatalf("the apisix service does not set %s: the plugin runner serves no metrics", runnerMetricsEnv)
	}
	if want := []string{"apisix:" + listenPort(t, addr)}; !slices.Equal(jobs["graylane-apisix-runner"], want) {
		t.Errorf("job graylane-apisix-runner scrapes %v; the runner listens at %v", jobs["graylane-apisix-runner"], want)
	}
	var nginx struct {
		NginxConfig struct {
			Envs []string `yaml:"envs"`
		} `yaml:"nginx_config"`
	}
	readYAML(t, apisixConfig, &nginx)
	if !slices.Contains(nginx.NginxConfig.Envs, runnerMetricsEnv) {
		t.Errorf("%s: nginx_config.envs lacks %s, so APISIX does not pass it on to the runner", apisixConfig, runnerMetricsEnv)
	}

	controller, ok := c.Services["rollout-controller"]
	if !ok {
		t.Fatal("docker-compose.yml has no rollout-controller service")
	}
	i := slices.Index(controller.Command, "--listen")
	if i < 0 || i+1 >= len(controller.Command) {
		t.Fatalf("rollout-controller: command %q has no --listen", controller.Command)
	}
	if want := []string{"rollout-controller:" + listenPort(t, controller.Command[i+1])}; !slices.Equal(jobs["rollout-controller"], want) {
		t.Errorf("job rollout-controller scrapes %v; the controller listens at %v", jobs["rollout-controller"], want)
	}
}

// TestGrafanaProvisioning: the datasource is the compose stack's Prometheus under the uid the
// dashboard names, and the dashboard provider reads the folder docker-compose.yml mounts the
// dashboard into.
func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		Datasources []struct {
			UID      string `yaml:"uid"`
			Type     string `yaml:"type"`
			URL      string `yaml:"url"`
			JSONData struct {
				TimeInterval string `yaml:"timeInterval"`
			} `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	readYAML(t, grafanaDatasource, &ds)
	var cfg scrapeConfig
	readYAML(t, prometheusConfig, &cfg)
	c := readCompose(t)
	promURL := "http://prometheus:9090"
	if _, ok := c.Services["prometheus"]; !ok {
		t.Error("docker-compose.yml has no prometheus service")
	}
	if len(ds.Datasources) != 1 || ds.Datasources[0].UID != datasourceUID || ds.Datasources[0].Type != "prometheus" ||
		ds.Datasources[0].URL != promURL || ds.Datasources[0].JSONData.TimeInterval != cfg.Global.ScrapeInterval {
		t.Errorf("%s: %+v; want one prometheus datasource, uid %s, url %s, timeInterval %s (the scrape interval)",
			grafanaDatasource, ds.Datasources, datasourceUID, promURL, cfg.Global.ScrapeInterval)
	}
	if got := c.Services["sync"].Environment["GRAYLANE_PROMETHEUS"]; got != promURL {
		t.Errorf("graylane's environment: GRAYLANE_PROMETHEUS %q, want %s", got, promURL)
	}

	var prov struct {
		Providers []struct {
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, grafanaProvider, &prov)
	grafana, ok := c.Services["grafana"]
	if !ok {
		t.Fatal("docker-compose.yml has no grafana service")
	}
	for source, want := range map[string]string{
		"./deploy/grafana/provisioning/datasources": "/etc/grafana/provisioning/datasources",
		"./deploy/grafana/provisioning/dashboards":  "/etc/grafana/provisioning/dashboards",
	} {
		if got, _ := grafana.mount(source); got != want {
			t.Errorf("grafana mounts %s at %q, want %s", source, got, want)
		}
	}
	dir, ok := grafana.mount("./" + filepath.ToSlash(filepath.Join("deploy", filepath.Dir(dashboardFile))))
	if !ok {
		t.Fatalf("grafana does not mount the folder of %s", dashboardFile)
	}
	if len(prov.Providers) != 1 || prov.Providers[0].Type != "file" || prov.Providers[0].Options.Path != dir {
		t.Errorf("%s: %+v; want one file provider with path %s", grafanaProvider, prov.Providers, dir)
	}
	home := grafana.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
	if want := dir + "/" + filepath.Base(dashboardFile); home != want {
		t.Errorf("grafana: home dashboard %q, want %s", home, want)
	}
	if grafana.Environment["GF_AUTH_ANONYMOUS_ENABLED"] != "true" || grafana.Environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] != "Viewer" {
		t.Errorf("grafana: anonymous access %q as %q, want true as Viewer",
			grafana.Environment["GF_AUTH_ANONYMOUS_ENABLED"], grafana.Environment["GF_AUTH_ANONYMOUS_ORG_ROLE"])
	}
}
