// Command gatewaybench measures what a graylane route costs on a running APISIX (traditional mode,
// Admin API) whose plugin runner is graylane's, such as the compose stack or the shared recipe for a
// real APISIX on one machine. `make bench-apisix` runs it.
//
// It registers its own service in Consul, SERVICE-bench, whose stable instance reuses the address
// of one base instance of SERVICE, keeps its upstreams with an in-process sync (as `graylane apisix
// sync` does), and measures five routes to the same base upstream:
//
//	plain               no plugin
//	traffic-split alone graylane's traffic-split rules (canary and stable lanes), no runner
//	graylane, hop off   graylane's route while the service has no gray lane: the sync has disabled
//	                    the runner's hop (ext-plugin-pre-req _meta.disable) and removed traffic-split
//	graylane, test      graylane's route while a weight-0 canary takes the requests with a userid
//	                    header: the bench's requests carry none, so the route's hop filter keeps
//	                    them from the runner, and traffic-split sends them to stable
//	graylane, weighted  graylane's route while a canary takes 5 % of users: every request goes
//	                    through the runner and traffic-split, one user in twenty to the canary
//	                    (which shares the stable instance's address)
//
// Each route gets N keep-alive connections for D seconds, the routes taken in turn over R rounds
// (every other round in reverse order, so that drift on a shared machine spreads evenly), after a
// warm-up of each. Where the gateway's processes are visible in /proc (same host), the CPU time of
// its nginx workers and of the runner is read before and after each run and divided by the
// requests answered. It prints a markdown table (medians over the rounds, lowest–highest round in
// parentheses, ratios to the plain route taken within each round) and removes everything it wrote,
// also on Ctrl-C.
//
// The gateway, Admin API and Consul come from the end-to-end check's variables (see package
// apisix/e2e: GRAYLANE_E2E_GATEWAY, APISIX_ADMIN_ADDR, APISIX_ADMIN_KEY, CONSUL_HTTP_ADDR; defaults:
// the compose stack); the rest from flags or the environment:
//
//	-service      GRAYLANE_BENCH_SERVICE      bservice  (an example backend: its answer is checked)
//	-duration     GRAYLANE_BENCH_DURATION     10s       per route and round
//	-connections  GRAYLANE_BENCH_CONNECTIONS  16
//	-rounds       GRAYLANE_BENCH_ROUNDS       3
//	-warmup       GRAYLANE_BENCH_WARMUP       2s        per route, before the first round
//	GRAYLANE_BENCH_GATEWAY_PIDS  the gateway's worker pids (default: /proc's "nginx: worker process")
//	GRAYLANE_BENCH_RUNNER_PID    the runner's pid (default: /proc's graylane-apisix-runner)
//
// The load generator runs on this machine too: on a small machine it takes part of the cores the
// gateway would otherwise have, so the throughput figures are lower than the gateway's own ceiling
// (its CPU per request is printed under the table).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/e2e"
	"github.com/graylane/graylane/watch"
)

// logOut receives progress and diagnostics; the report goes to stdout.
var logOut = os.Stderr

// settle is how long the bench waits after the Admin API shows a route change, for the gateway's
// workers to take it from etcd.
const settle = time.Second

// stickyHeader is the sticky header of graylane's route; requests carry one of 64 users in it.
const stickyHeader = "x-user-id"

type options struct {
	cfg      e2e.Config
	duration time.Duration
	warmup   time.Duration
	conns    int
	rounds   int
	verbose  bool
}

// benchRoute is one of the measured routes.
type benchRoute struct {
	key     string  // in the progress lines
	title   string  // in the table
	path    string  // the request's path
	release release // the bench service's release while the route is measured
}

func main() {
	var o options
	var errs []error
	o.cfg = e2e.FromEnv()
	o.cfg.Service = envOr("GRAYLANE_BENCH_SERVICE", "bservice")
	flag.StringVar(&o.cfg.Service, "service", o.cfg.Service, "the service whose base instance serves the bench (GRAYLANE_BENCH_SERVICE)")
	flag.DurationVar(&o.duration, "duration", envDuration("GRAYLANE_BENCH_DURATION", 10*time.Second, &errs), "load per route and round (GRAYLANE_BENCH_DURATION)")
	flag.DurationVar(&o.warmup, "warmup", envDuration("GRAYLANE_BENCH_WARMUP", 2*time.Second, &errs), "warm-up per route before the first round (GRAYLANE_BENCH_WARMUP)")
	flag.IntVar(&o.conns, "connections", envInt("GRAYLANE_BENCH_CONNECTIONS", 16, &errs), "keep-alive connections (GRAYLANE_BENCH_CONNECTIONS)")
	flag.IntVar(&o.rounds, "rounds", envInt("GRAYLANE_BENCH_ROUNDS", 3, &errs), "rounds over the routes (GRAYLANE_BENCH_ROUNDS)")
	flag.BoolVar(&o.verbose, "v", false, "log what the sync writes")
	flag.Parse()
	if o.duration <= 0 || o.warmup < 0 || o.conns < 1 || o.rounds < 1 {
		errs = append(errs, errors.New("want -duration > 0, -warmup >= 0, -connections >= 1, -rounds >= 1"))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(logOut, "gatewaybench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the clean-up runs; a second Ctrl-C ends the process at once
	}()
	err := run(ctx, o)
	stop()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(logOut, "gatewaybench: interrupted")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(logOut, "gatewaybench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	cfg := o.cfg
	gw, err := url.Parse(strings.TrimRight(cfg.Gateway, "/"))
	if err != nil || gw.Scheme != "http" || gw.Host == "" {
		return fmt.Errorf("gateway %q: want http://host:port (GRAYLANE_E2E_GATEWAY)", cfg.Gateway)
	}
	addr := gw.Host
	if gw.Port() == "" {
		addr = net.JoinHostPort(gw.Hostname(), "80")
	}
	admin, err := apisix.NewAdmin(cfg.Admin, cfg.AdminKey)
	if err != nil {
		return err
	}
	consul, err := api.NewClient(watch.NewConfig(cfg.Consul))
	if err != nil {
		return err
	}
	w, err := watch.New(watch.NewConfig(cfg.Consul))
	if err != nil {
		return err
	}
	defer w.Close()
	stable, err := baseInstance(ctx, w, cfg.Service, cfg.Consul)
	if err != nil {
		return err
	}

	service := cfg.Service + "-bench"
	prefix := "/graylane-bench/" + cfg.Service + "/"
	logf := func(string, ...any) {}
	if o.verbose {
		logf = func(format string, args ...any) { fmt.Fprintf(logOut, format+"\n", args...) }
	}
	f := &fixture{admin: admin, consul: consul, w: w, service: service, stable: stable,
		gateway: gw.Scheme + "://" + gw.Host, graylane: graylaneRoute(service, prefix+"graylane/*", stickyHeader),
		plainID: "graylane-bench-" + cfg.Service + "-plain", splitID: "graylane-bench-" + cfg.Service + "-split", logf: logf}
	if err := f.graylane.Validate(); err != nil {
		return err
	}
	defer f.cleanUp()
	fmt.Fprintf(logOut, "setting up %s (stable at %s:%d, %s's address) and its routes under %s\n",
		service, stable.Address, stable.Port, stable.ID, prefix)
	if err := f.setUp(ctx, prefix); err != nil {
		return err
	}

	routes := []benchRoute{
		{key: "plain", title: "(a) plain: no plugin", path: prefix + "plain/api/order"},
		{key: "split", title: "(b) traffic-split alone: graylane's rules, no runner", path: prefix + "split/api/order"},
		{key: "hop-off", title: "(c) graylane's route, no gray lane (runner's hop off)", path: prefix + "graylane/api/order"},
		{key: "test", title: "(d) graylane's route, weight-0 canary on a header the requests lack (hop filtered)", path: prefix + "graylane/api/order", release: testRelease},
		{key: "weighted", title: "(e) graylane's route, 5 % canary (every request through the runner + traffic-split)", path: prefix + "graylane/api/order", release: weightedRelease},
	}
	m := &measurer{f: f, addr: addr, conns: o.conns, clk: clockTicks(),
		gateway: procGroup{name: "gateway", env: "GRAYLANE_BENCH_GATEWAY_PIDS", find: gatewayWorkers},
		runner:  procGroup{name: "runner", env: "GRAYLANE_BENCH_RUNNER_PID", find: runners}}
	for _, g := range []*procGroup{&m.gateway, &m.runner} {
		pids, err := g.pids()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			fmt.Fprintf(logOut, "no %s process in /proc (a gateway on another host or in a VM): its CPU per request is n/a\n", g.name)
		} else {
			fmt.Fprintf(logOut, "%s CPU from pids %v\n", g.name, pids)
		}
	}

	server := ""
	if o.warmup > 0 {
		fmt.Fprintf(logOut, "warm-up: %v per route\n", o.warmup)
	}
	for _, r := range routes {
		if server, err = m.prepare(ctx, r); err != nil {
			return err
		}
		if o.warmup > 0 {
			if res := m.load(r).run(ctx, o.warmup, func() {}); res.Errors > 0 {
				fmt.Fprintf(logOut, "warm-up %s: %d errors (first: %s)\n", r.key, res.Errors, res.FirstErr)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}

	results := make([][]measure, len(routes))
	for round := range o.rounds {
		order := slices.Clone(routes)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, r := range order {
			if _, err := m.prepare(ctx, r); err != nil {
				return err
			}
			res := m.measure(ctx, r, o.duration)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(logOut, "round %d/%d %-8s %s\n", round+1, o.rounds, r.key, res)
			i := slices.IndexFunc(routes, func(x benchRoute) bool { return x.key == r.key })
			results[i] = append(results[i], res)
		}
	}

	fmt.Printf("gateway: %s at %s; service %s, stable at %s:%d (%s's address)\n",
		orUnknown(server), f.gateway, service, stable.Address, stable.Port, stable.ID)
	fmt.Printf("load: %d keep-alive connections, %d rounds × %d routes × %v (routes alternated, every other round reversed), warm-up %v per route; GET with 7 headers, %s one of 64 users\n",
		o.conns, o.rounds, len(routes), o.duration, o.warmup, stickyHeader)
	fmt.Printf("machine: %s; the load generator runs on the same cores\n\n", machine())
	fmt.Print(table(routes, results))
	client := []string{}
	for i, r := range routes {
		client = append(client, fmt.Sprintf("%s %s", r.key, column(results[i], func(m measure) float64 { return m.clientUS }).format(micros)))
	}
	var all []measure
	for _, rs := range results {
		all = append(all, rs...)
	}
	fmt.Printf("\nload generator CPU µs/req: %s; other processes (the backends, anything else on the machine): %s cores during the runs\n",
		strings.Join(client, ", "), column(all, func(m measure) float64 { return m.otherCores }).format(cores))
	fmt.Println(targets(results))
	return nil
}

// targets says whether the targets are met, from the median ratios to the plain route.
func targets(results [][]measure) string {
	plain := results[0]
	rate := ratios(results[2], plain, func(m measure) float64 { return m.rate })
	test := ratios(results[3], plain, measure.totalUS)
	weighted := ratios(results[4], plain, measure.totalUS)
	verdict := func(s spread, ok func(float64) bool) string {
		switch {
		case s.known == 0:
			return "unknown"
		case ok(s.med):
			return "met"
		}
		return "not met"
	}
	within := func(v float64) bool { return v <= 2.5 }
	return fmt.Sprintf("targets: (c) throughput ≥ 0.95× plain: %s, %s; gateway + runner CPU per request during a release ≤ 2.5× plain: (d) %s, %s; (e) %s, %s",
		rate.format(times), verdict(rate, func(v float64) bool { return v >= 0.95 }),
		test.format(times), verdict(test, within), weighted.format(times), verdict(weighted, within))
}

// baseInstance returns one instance of the service's base lane, waiting for Consul's first answer.
func baseInstance(ctx context.Context, w *watch.Watcher, service, consul string) (watch.Endpoint, error) {
	view := w.Service(service)
	select {
	case <-view.Ready():
	case <-ctx.Done():
		return watch.Endpoint{}, ctx.Err()
	case <-time.After(30 * time.Second):
		return watch.Endpoint{}, fmt.Errorf("no answer from Consul at %s for %s within 30s: %+v", consul, service, view.State())
	}
	base := view.Snapshot().Base().Instances
	if len(base) == 0 {
		return watch.Endpoint{}, fmt.Errorf("%s has no passing instance in its base lane", service)
	}
	return base[0], nil
}

// measurer runs the loads and reads the CPU counters around them.
type measurer struct {
	f       *fixture
	addr    string
	conns   int
	clk     float64 // clock ticks per second
	gateway procGroup
	runner  procGroup
}

func (m *measurer) load(r benchRoute) *load {
	return &load{addr: m.addr, reqs: requests(m.addr, r.path, stickyHeader, 64), conns: m.conns}
}

// prepare puts the bench service in the route's state (canary registered or not) and checks that
// the route answers from the stable instance; it returns the gateway's Server header.
func (m *measurer) prepare(ctx context.Context, r benchRoute) (string, error) {
	if m.f.release != r.release {
		if err := m.f.setRelease(ctx, r.release); err != nil {
			return "", err
		}
		select {
		case <-time.After(settle):
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return m.f.probe(ctx, r.path, stickyHeader)
}

func (m *measurer) measure(ctx context.Context, r benchRoute, d time.Duration) measure {
	gwPids, _ := m.gateway.pids() // checked at the start; found again, as a worker may have been replaced
	rnPids, _ := m.runner.pids()
	var gw0, rn0 cpuTime
	var self0 time.Duration
	var busy0 uint64
	var machineOK0 bool
	res := m.load(r).run(ctx, d, func() {
		gw0, rn0, self0 = sample(gwPids), sample(rnPids), selfCPU()
		busy0, _, machineOK0 = machineTicks()
	})
	gw1, rn1, self1 := sample(gwPids), sample(rnPids), selfCPU()
	busy1, _, machineOK1 := machineTicks()
	gwTicks, gwOK := gw1.since(gw0)
	rnTicks, rnOK := rn1.since(rn0)
	perReq := func(ticks uint64, ok bool) float64 {
		if !ok || res.OK == 0 {
			return math.NaN()
		}
		return float64(ticks) / m.clk * 1e6 / float64(res.OK)
	}
	out := measure{rate: res.Rate(), p50: res.Percentile(0.50), p99: res.Percentile(0.99),
		errors: res.Errors, firstErr: res.FirstErr,
		gatewayUS: perReq(gwTicks, gwOK), runnerUS: perReq(rnTicks, rnOK),
		clientUS: math.NaN(), otherCores: math.NaN()}
	if res.OK > 0 {
		out.clientUS = float64(self1-self0) / float64(time.Microsecond) / float64(res.OK)
	}
	if gwOK && rnOK && machineOK0 && machineOK1 {
		other := float64(busy1-busy0)/m.clk - float64(gwTicks+rnTicks)/m.clk - (self1 - self0).Seconds()
		out.otherCores = max(other, 0) / res.Elapsed.Seconds()
	}
	return out
}

func (m measure) String() string {
	other := "n/a"
	if !math.IsNaN(m.otherCores) {
		other = cores(m.otherCores)
	}
	s := fmt.Sprintf("%9s req/s  p50 %-7s p99 %-7s errors %d  gateway %s µs/req  runner %s µs/req  load generator %s µs/req  other processes %s cores",
		thousands(m.rate), millis(ms(m.p50)), millis(ms(m.p99)), m.errors,
		orNA(m.gatewayUS), orNA(m.runnerUS), orNA(m.clientUS), other)
	if m.firstErr != "" {
		s += "  first error: " + m.firstErr
	}
	return s
}

func orNA(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return micros(v)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown gateway"
	}
	return s
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envDuration(k string, def time.Duration, errs *[]error) time.Duration {
	v := os.Getenv(k)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s=%q: want a duration such as 10s", k, v))
		return def
	}
	return d
}

func envInt(k string, def int, errs *[]error) int {
	v := os.Getenv(k)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s=%q: want a number", k, v))
		return def
	}
	return n
}
