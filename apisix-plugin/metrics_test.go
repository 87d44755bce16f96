package main

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/graylane/graylane/internal/apisixtest"
)

// TestRunnerMetrics: with GRAYLANE_METRICS_ADDR set, the runner serves graylane_decisions_total, and
// after requests through its protocol the counter holds each decision under its lane and reason.
func TestRunnerMetrics(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	env := startGrayEnv(t, MetricsAddrEnv+"="+addr)
	c := apisixtest.Dial(t, env.sock)
	token, err := c.PrepareConf("route-1", [2]string{"graylane", testConf})
	if err != nil {
		t.Fatal(err)
	}
	matched := &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/api/user", Headers: [][2]string{{"userid", "123"}}}
	waitLane(t, c, matched, "canary", 20*time.Second)

	before := decisions(t, addr)
	for range 30 {
		laneOf(t, c, matched)
	}
	for i := range 70 {
		laneOf(t, c, &apisixtest.Request{Token: token, ID: 2, IP: untrusted, Path: "/", Headers: [][2]string{{"x-user-id", stableUser(i)}}})
	}
	after := decisions(t, addr)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	families, err := new(expfmt.TextParser).TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if f := families["graylane_consul_refused_total"]; err != nil || f == nil || f.GetMetric()[0].GetCounter().GetValue() != 0 {
		t.Errorf("graylane_consul_refused_total: %v %v", f, err)
	}
	for key, want := range map[[2]string]float64{{"canary", "match"}: 30, {"stable", "base"}: 70} {
		if got := after[key] - before[key]; got != want {
			t.Errorf("decisions lane=%s reason=%s grew by %v, want %v (%v)", key[0], key[1], got, want, after)
		}
	}
}

// decisions scrapes the runner's graylane_decisions_total by lane and reason.
func decisions(t *testing.T, addr string) map[[2]string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	families, err := new(expfmt.TextParser).TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]string]float64{}
	f := families["graylane_decisions_total"]
	if f == nil {
		return out
	}
	for _, m := range f.Metric {
		var lane, reason string
		for _, l := range m.Label {
			switch l.GetName() {
			case "lane":
				lane = l.GetValue()
			case "reason":
				reason = l.GetValue()
			}
		}
		out[[2]string{lane, reason}] += m.GetCounter().GetValue()
	}
	return out
}

// TestRunnerServesProfilesWhenAsked: with GRAYLANE_PPROF_ADDR (as APISIX passes variables) the
// runner serves Go's profiles there, and a CPU profile taken while it decides requests is valid.
func TestRunnerServesProfilesWhenAsked(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	env := startGrayEnv(t, PprofAddrEnv+"="+addr)
	c := apisixtest.Dial(t, env.sock)
	token, err := c.PrepareConf("route-1", [2]string{"graylane", testConf})
	if err != nil {
		t.Fatal(err)
	}
	waitLane(t, c, &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/api/user", Headers: [][2]string{{"userid", "123"}}}, "canary", 20*time.Second)
	resp, err := http.Get("http://" + addr + "/debug/pprof/profile?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	// A profile is gzip-compressed protobuf: it starts with gzip's magic bytes.
	if resp.StatusCode != http.StatusOK || len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("CPU profile: status %d, %d bytes", resp.StatusCode, len(body))
	}
}
