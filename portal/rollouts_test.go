package portal

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/rollout"
)

// TestRolloutPanelFollowsGraylaneRollout starts a rollout as `graylane rollout start` records it,
// and steers it from the page: the panel appears, the lane's own buttons give way to the rollout's,
// a pause made outside the page shows, and an abort from the page rolls the lane back under the
// operator's name.
func TestRolloutPanelFollowsGraylaneRollout(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{}) // the default sources: rollouts in Consul
	b := newBrowser(t, ts)
	b.signIn("alice")
	mustNotContain(t, b.get("/s/"+svc).body, `id="rollout"`)

	prom := promtest.Start(t) // the rollout's queries are checked against it at start
	plan, err := rollout.ParsePlan([]byte(fmt.Sprintf(`
service: %s
lane: canary
prometheus: %s
steps: [{weight: 0, hold: 1m}, {weight: 25, hold: 1m}, {weight: 50, hold: 1m}]
gates: {window: 1m, min_requests: 100, error_ratio: {max: 0.01}}
`, svc, prom.URL)))
	if err != nil {
		t.Fatal(err)
	}
	x := rollout.New(newRegistrar(t, agent, "", "release-bot"))
	if _, err := x.Start(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the rollout panel", func() bool { return strings.Contains(b.get("/s/"+svc).body, `id="rollout"`) })
	p := b.get("/s/" + svc)
	mustContain(t, p.body, "step <b>1</b> of 3", "starting the step", "started by release-bot", `value="rollout-pause"`, `value="rollout-abort"`,
		"driven by the rollout: use its controls")
	mustNotContain(t, p.body, "Next: weight")
	// The server refuses a change to the driven lane even when a request asks for it.
	before := laneWeight(t, svc, "canary")
	p = b.follow("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"60"}})
	mustContain(t, p.body, "is driven by a rollout")
	mustNotContain(t, p.body, "Confirm: weight")
	if w := laneWeight(t, svc, "canary"); w != before {
		t.Fatalf("canary weight %s, was %s: a change beside the rollout was planned", w, before)
	}

	// Paused outside the page (graylane rollout pause): the page follows.
	if _, err := x.Pause(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the pause on the page", func() bool { return strings.Contains(b.get("/s/"+svc).body, `value="rollout-resume"`) })

	// Aborted from the page, after the confirmation.
	p = b.follow("/s/"+svc+"/plan", url.Values{"op": {"rollout-abort"}})
	mustContain(t, p.body, "Confirm: rollout abort", "aborted: lane canary back to weight 0")
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "rollout abort on "+svc+": done", "aborted", `data-change="rollback canary"`, `<span class="who-name">alice</span>`)
	mustNotContain(t, p.body, `value="rollout-pause"`, "driven by the rollout")
	if w := laneWeight(t, svc, "canary"); w != "0" {
		t.Fatalf("canary weight %s after the abort", w)
	}
	st, err := x.Get(context.Background(), svc)
	if err != nil || st.Status != rollout.StatusAborted || !strings.Contains(st.Message, "alice") {
		t.Fatalf("rollout after the abort: %+v, %v", st, err)
	}
	// Steering needs a running rollout.
	if p := b.post("/s/"+svc+"/plan", url.Values{"op": {"rollout-pause"}}); p.status != http.StatusSeeOther {
		t.Fatalf("pause of an ended rollout: %d", p.status)
	}
	mustContain(t, b.get("/s/"+svc).body, "has no running rollout")
}

func TestRolloutReadingsBecomeGatesAndRates(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	plan, err := rollout.ParsePlan([]byte(`
service: shop
lane: canary
prometheus: http://127.0.0.1:1
steps: [{weight: 5, hold: 10m}, {weight: 25, hold: 10m}]
gates: {window: 2m, min_requests: 200, error_ratio: {max: 0.01, max_vs_baseline: 2}, latency_p99: {max: 500ms}}
`))
	if err != nil {
		t.Fatal(err)
	}
	st := &rollout.State{Plan: *plan, Status: rollout.StatusRunning, Step: 1, StepApplied: true, StepStarted: now.Add(-4 * time.Minute),
		Readings: &rollout.Readings{Time: now.Add(-10 * time.Second),
			Lane:     rollout.LaneReading{Requests: 1200, Errors: 24, P99: 0.31, HasP99: true},
			Baseline: rollout.LaneReading{Requests: 24000, Errors: 24, P99: 0.2, HasP99: true}}}
	v := rolloutView(st, now)
	if v.Step != 2 || v.Steps != 2 || v.Weight != "25" || !v.NextStep.Equal(now.Add(6*time.Minute)) || v.Done {
		t.Fatalf("view %+v", v)
	}
	gates := map[string]Gate{}
	for _, g := range v.Gates {
		gates[g.Name] = g
	}
	if g := gates["traffic"]; !g.OK || g.Value != "1200 requests" || g.Threshold != "≥ 200 in 2m0s" {
		t.Fatalf("traffic gate %+v", g)
	}
	if g := gates["error ratio"]; g.OK || g.Value != "2.00 % (baseline 0.10 %)" || g.Threshold != "≤ 1.00 %, ≤ 2× baseline" {
		t.Fatalf("error gate %+v (2 %% against a 1 %% limit must fail)", g)
	}
	if g := gates["p99 latency"]; !g.OK || g.Value != "310ms (baseline 200ms)" {
		t.Fatalf("latency gate %+v", g)
	}
	rates := ratesOf(st, now)
	if c := rates["canary"]; c.RequestsPerSecond != 10 || c.ErrorRatio != 0.02 || c.P99 != 310*time.Millisecond {
		t.Fatalf("canary rates %+v", c)
	}
	if s := rates["stable"]; s.RequestsPerSecond != 200 {
		t.Fatalf("stable rates %+v", s)
	}
	if ratesOf(st, now.Add(time.Hour)) != nil {
		t.Fatal("readings an hour old shown as current rates")
	}
	st.Status = rollout.StatusPaused
	if v := rolloutView(st, now); !v.NextStep.IsZero() || !v.Paused {
		t.Fatalf("paused view %+v", v)
	}
}
