package rollout_test

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/rollout"
)

func TestParsePlanRefusesWhatCannotRun(t *testing.T) {
	base := "service: shop\nprometheus: http://p:9090\n"
	gates := "\ngates: {error_ratio: {max: 0.01}}"
	for _, c := range []struct{ yaml, says string }{
		{base + "steps: [{weight: 5, hold: 1m}, {weight: 2, hold: 1m}]" + gates, "steps[1].weight: 2% is below the step before (5%)"},
		{base + "steps: [{weight: 101, hold: 1m}]" + gates, "is more than 100"},
		{base + "steps: [{weight: 5, hold: soon}]" + gates, `"soon" is not a duration`},
		{base + "steps: [{weight: 5, hold: 1m}]\ngates: {eror_ratio: {max: 1}}", "field eror_ratio not found"},
		{"service: shop\nprometheus: http://p\nsteps: [{weight: 5, hold: 1m}]", "no gate is set"},
		{"service: shop\nsteps: [{weight: 5, hold: 1m}]" + gates, "prometheus: missing"},
		{base + "steps: []" + gates, "steps: missing"},
		{base + "lane: stable\nsteps: [{weight: 5, hold: 1m}]" + gates, `lane: "stable" is also the baseline`},
		{base + "steps: [{weight: 5, hold: 1m}]\ngates: {error_ratio: {max: 5}}", "not a ratio between 0 and 1"},
		{base + "steps: [{weight: 5, hold: 1m}]\nqueries: {requests: 'sum({{.Nope'}" + gates, "queries.requests"},
	} {
		if _, err := rollout.ParsePlan([]byte(c.yaml)); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s\ngot %v\nwant %q", c.yaml, err, c.says)
		}
	}
	p, err := rollout.ParsePlan([]byte(base + "steps: [{weight: 0, hold: 10m}, {weight: 0.5, hold: 10m}, {weight: 100, hold: 1h}]" + gates))
	if err != nil {
		t.Fatal(err)
	}
	if p.Lane != "canary" || p.Baseline != "stable" || time.Duration(p.Interval) != 10*time.Second || p.Steps[1].Weight.String() != "0.5" {
		t.Fatalf("defaults: %+v", p)
	}
}

func TestGatesJudge(t *testing.T) {
	g := rollout.Gates{MinRequests: 100, ErrorRatio: rollout.RatioGate{Max: 0.02, MaxVsBaseline: 2},
		LatencyP99: rollout.LatencyGate{Max: rollout.Duration(200 * time.Millisecond), MaxVsBaseline: 1.5}}
	lane := func(req, errs, p99 float64) rollout.LaneReading {
		return rollout.LaneReading{Requests: req, Errors: errs, P99: p99, HasP99: req > 0}
	}
	missing := func(r rollout.LaneReading, queries ...string) rollout.LaneReading {
		r.Missing = queries
		if slices.Contains(queries, "p99") {
			r.HasP99 = false
		}
		return r
	}
	for _, c := range []struct {
		name      string
		lane, bas rollout.LaneReading
		want      rollout.Verdict
		says      string
	}{
		{"healthy", lane(1000, 1, 0.05), lane(9000, 9, 0.05), rollout.Pass, "gates passed"},
		{"too little traffic", lane(20, 0, 0.05), lane(9000, 9, 0.05), rollout.Hold, "holding: 20 requests of the 100"},
		{"no traffic", lane(0, 0, 0), lane(9000, 9, 0.05), rollout.Hold, "holding: 0 requests"},
		{"errors over the limit", lane(1000, 50, 0.05), lane(9000, 9, 0.05), rollout.Fail, "error_ratio.max failed: 5.00% > 2.00%"},
		{"errors over twice the baseline's", lane(1000, 15, 0.05), lane(9000, 45, 0.05), rollout.Fail, "error_ratio.max_vs_baseline failed: 1.50% > 2.00x baseline 0.50%"},
		{"a baseline without errors does not make one error a failure", lane(1000, 1, 0.05), lane(9000, 0, 0.05), rollout.Pass, "gates passed"},
		{"slow", lane(1000, 0, 0.3), lane(9000, 0, 0.05), rollout.Fail, "latency_p99.max failed: p99 300ms > 200ms"},
		{"slower than the baseline", lane(1000, 0, 0.15), lane(9000, 0, 0.05), rollout.Fail, "latency_p99.max_vs_baseline failed"},
		{"no errors series is unknown, not 0 %", missing(lane(1000, 0, 0.05), "errors"), lane(9000, 9, 0.05), rollout.Unknown, "no series for the lane's errors"},
		{"no p99 series is unknown", missing(lane(1000, 1, 0), "p99"), lane(9000, 9, 0.05), rollout.Unknown, "the lane's p99"},
		{"no baseline errors series is unknown for the relative gate", lane(1000, 1, 0.05), missing(lane(9000, 0, 0.05), "errors"), rollout.Unknown, "the baseline's errors"},
		{"a failing gate still fails beside an unknown one", missing(lane(1000, 50, 0), "p99"), lane(9000, 9, 0.05), rollout.Fail, "error_ratio.max failed"},
		{"no traffic still holds with nothing to read", missing(lane(0, 0, 0), "errors", "p99"), lane(9000, 9, 0.05), rollout.Hold, "holding: 0 requests"},
	} {
		v, says := g.Judge(rollout.Readings{Lane: c.lane, Baseline: c.bas})
		if v != c.want || !strings.Contains(says, c.says) {
			t.Errorf("%s: %s %q, want %s %q", c.name, v, says, c.want, c.says)
		}
	}
}

// TestExamplePlan: the plan the README shows parses.
func TestExamplePlan(t *testing.T) {
	data, err := os.ReadFile("../examples/rollout/bservice-plan.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := rollout.ParsePlan(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 5 || p.Gates.ErrorRatio.Max != 0.01 || time.Duration(p.Gates.LatencyP99.Max) != 500*time.Millisecond {
		t.Fatalf("%+v", p)
	}
}

// TestPauseKeepsTheWeightBeforeIt: an approval step after a 5 % step holds the lane at 5 %; it is
// not read as a step back to 0 %.
func TestPauseKeepsTheWeightBeforeIt(t *testing.T) {
	p, err := rollout.ParsePlan([]byte(`service: s
prometheus: http://127.0.0.1:9090
steps:
  - {weight: 5, hold: 1m}
  - pause: {}
  - {weight: 50, hold: 1m}
gates: {error_ratio: {max: 0.01}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Steps[1].Pause == nil || p.Steps[1].Weight.String() != "5" {
		t.Fatalf("the approval step: %+v", p.Steps[1])
	}
}
