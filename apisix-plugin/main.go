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
// Flags (after run): -log-level debug|info|warn|error (default warn; info logs every call).
// The runner stops on SIGTERM or SIGINT, closing its Consul watches.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/apache/apisix-go-plugin-runner/pkg/log"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
	"github.com/apache/apisix-go-plugin-runner/pkg/runner"
	"go.uber.org/zap/zapcore"

	"github.com/graylane/graylane/apisix/extplugin"
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
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}

	p := extplugin.New(append([]extplugin.Option{extplugin.WithLogger(log.Warnf)}, opts...)...)
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
