package main

// Tests build the runner binary, start it the way APISIX does (APISIX_LISTEN_ADDRESS=unix:...,
// APISIX_CONF_EXPIRE_TIME) and speak the wire protocol with ext-plugin-proto's flatbuffer builders
// (internal/apisixtest).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// runnerBinary builds the runner once per test run, with the benchmarks' baseline plugin beside
// graylane (build tag graylane_baseline).
func runnerBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "graylane-runner-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "graylane-apisix-runner")
		out, err := exec.Command("go", "build", "-tags", "graylane_baseline", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}
