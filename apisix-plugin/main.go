// Command graylane-apisix-runner is an APISIX Go plugin runner with graylane's plugin. APISIX starts
// it from config.yaml and talks to it over a unix socket:
//
//	ext-plugin:
//	  cmd: ["/usr/local/apisix/graylane-apisix-runner", "run"]
//	nginx_config:
//	  envs: [CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN]
//
// APISIX passes APISIX_LISTEN_ADDRESS and APISIX_CONF_EXPIRE_TIME itself; every other variable
// reaches the runner only when nginx_config.envs lists it, so list the CONSUL_* variables graylane
// needs there (the address, the token, TLS files). A route enables the plugin through
// ext-plugin-pre-req; `graylane apisix route` prints such a route.
//
// Flags (after run): -log-level debug|info|warn|error (default warn; info logs every call);
// -pprof host:port (or GRAYLANE_PPROF_ADDR, listed in nginx_config.envs) serves Go's profiles at
// /debug/pprof/ there, for profiling the runner under a gateway's real load; keep it on loopback.
// The runner stops on SIGTERM or SIGINT, closing its Consul watches.
//
// Metrics: with GRAYLANE_METRICS_ADDR set (host:port; list it in nginx_config.envs too), the runner
// serves Prometheus metrics at /metrics there: graylane_decisions_total{service,lane,reason},
// graylane_consul_refused_total (requests the Consul agent refused with 429: raise its
// limits.http_max_conns_per_client) and the Go runtime's. Per-lane status codes and latency at the gateway come from APISIX's own prometheus
// plugin, since each lane has its own upstream.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"
	"time"

	"github.com/apache/apisix-go-plugin-runner/pkg/log"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apache/apisix-go-plugin-runner/pkg/runner"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap/zapcore"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/metrics"
	"github.com/graylane/graylane/watch"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run runs the runner until SIGTERM or SIGINT; opts configure the plugin (tests give it a Source).
func run(args []string, opts ...extplugin.Option) int {
	if len(args) == 0 || args[0] != "run" {
		fmt.Fprintln(os.Stderr, "usage: graylane-apisix-runner run [-log-level warn]")
		return 2
	}
	fs := flag.NewFlagSet("graylane-apisix-runner run", flag.ContinueOnError)
	level := zapcore.WarnLevel
	fs.Var(&level, "log-level", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", os.Getenv(PprofAddrEnv), "serve Go's profiles at /debug/pprof/ on this address (loopback)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *pprofAddr != "" {
		stop, err := servePprof(*pprofAddr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "graylane-apisix-runner: -pprof %s: %v\n", *pprofAddr, err)
			return 1
		}
		defer stop()
	}

	// The watcher reports an agent refusing its connections (429) in the runner's log, once a
	// minute, and the metrics count the refusals.
	var source atomic.Pointer[extplugin.WatcherSource]
	base := []extplugin.Option{extplugin.WithLogger(log.Warnf), extplugin.WithSource(func() (extplugin.Source, error) {
		s, err := extplugin.NewWatcherSource(watch.WithLogger(log.Warnf))
		if err != nil {
			return nil, err
		}
		source.Store(s)
		return s, nil
	})}
	refused := func() float64 {
		if s := source.Load(); s != nil {
			return float64(s.Refused())
		}
		return 0
	}
	if addr := os.Getenv(MetricsAddrEnv); addr != "" {
		stop, decisions, err := serveMetrics(addr, refused)
		if err != nil {
			fmt.Fprintf(os.Stderr, "graylane-apisix-runner: %s=%s: %v\n", MetricsAddrEnv, addr, err)
			return 1
		}
		defer stop()
		base = append(base, extplugin.WithDecisions(decisions))
	}
	p := extplugin.New(append(base, opts...)...)
	for _, pl := range append([]plugin.Plugin{p}, extraPlugins...) {
		if err := plugin.RegisterPlugin(pl); err != nil {
			fmt.Fprintf(os.Stderr, "graylane-apisix-runner: register plugin %s: %v\n", pl.Name(), err)
			return 1
		}
	}
	runner.Run(runner.RunnerConfig{LogLevel: level, LogOutput: os.Stdout})
	if err := p.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "graylane-apisix-runner: %v\n", err)
		return 1
	}
	return 0
}

// extraPlugins are registered beside graylane; builds for benchmarks add a baseline (noop.go).
var extraPlugins []plugin.Plugin

// MetricsAddrEnv names the variable that holds the address of the runner's /metrics endpoint.
const MetricsAddrEnv = "GRAYLANE_METRICS_ADDR"

// PprofAddrEnv names the variable that holds the address of the runner's /debug/pprof/ endpoint.
const PprofAddrEnv = "GRAYLANE_PPROF_ADDR"

// servePprof serves net/http/pprof's handlers on addr, on a mux of its own, until stop.
func servePprof(addr string) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return func() { _ = srv.Close() }, nil
}

// serveMetrics serves /metrics on addr with the decision counter registered, until stop.
func serveMetrics(addr string, refused func() float64) (stop func(), d *metrics.Decisions, err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "graylane_consul_refused_total",
			Help: "Requests of the runner's Consul watcher that the agent refused with 429 Too Many Requests (its limits.http_max_conns_per_client).",
		}, refused))
	if d, err = metrics.NewDecisions(reg); err != nil {
		return nil, nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return func() { _ = srv.Close() }, d, nil
}
