//go:build graylane_baseline

package main

import (
	"net/http"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	"github.com/apache/apisix-go-plugin-runner/pkg/plugin"
)

// noop is the benchmarks' baseline: a plugin that does nothing, so that a call costs only the
// runner's protocol work. Only builds with the graylane_baseline tag carry it.
type noop struct{}

func (*noop) Name() string                                            { return "graylane-baseline" }
func (*noop) ParseConf([]byte) (any, error)                           { return struct{}{}, nil }
func (*noop) RequestFilter(any, http.ResponseWriter, pkgHTTP.Request) {}
func (*noop) ResponseFilter(any, pkgHTTP.Response)                    {}

var _ plugin.Plugin = (*noop)(nil)

func init() { extraPlugins = append(extraPlugins, &noop{}) }
