package rollout_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

// TestAbortWinsOverAStep: an operator's abort and a controller's step at the same instant. The
// controller commits a step's weight from the rollout state it loaded; before, an abort committed
// between that load and the step's commit lost: the rollout read "aborted" and the lane kept the
// step's weight. 50 aborts, each at a random moment around the controller's first step (weight
// 20), must all end at weight 0 with the rollout aborted.
func TestAbortWinsOverAStep(t *testing.T) {
	r, promURL, weight := serviceWithoutTraffic(t)
	plan, err := rollout.ParsePlan([]byte(`
service: race
lane: canary
prometheus: ` + promURL + `
interval: 100ms
steps:
  - {weight: 20, hold: 1h}
  - {weight: 50, hold: 1h}
gates: {min_requests: 1, error_ratio: {max: 0.05}}
`))
	if err != nil {
		t.Fatal(err)
	}
	x := rollout.New(r)
	lost := 0
	for i := range 50 {
		if _, err := x.Start(context.Background(), plan); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		done := make(chan error, 1)
		go func() {
			_, err := x.Run(ctx, "race", rollout.RunOptions{NoWait: true})
			done <- err
		}()
		time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
		st, err := x.Abort(context.Background(), "race")
		if err != nil {
			cancel()
			t.Fatalf("abort %d: %v", i, err)
		}
		if err := <-done; err != nil && !errors.Is(err, rollout.ErrRolledBack) {
			t.Logf("controller %d: %v", i, err)
		}
		cancel()
		if w := weight(); w != "0" || st.Status != rollout.StatusAborted {
			lost++
			t.Errorf("abort %d: the rollout is %s and the canary's weight %s%%, want aborted at 0", i, st.Status, w)
		}
	}
	if lost > 0 {
		t.Fatalf("%d of 50 aborts lost to a step", lost)
	}
}

// TestGatesWithoutDataNeverPass: a canary failing half its calls, read by a gate whose query finds
// nothing (a misspelt errors metric; a p99 query for a lane that has no such series). Before, the
// missing value read as 0 and the rollout walked the canary to promotion. Now the gate is unknown:
// the step holds, and after unknown_limit readings the rollout rolls back, saying which gate.
func TestGatesWithoutDataNeverPass(t *testing.T) {
	for _, c := range []struct {
		name, extra, says string
	}{
		{"a misspelt errors metric", `
queries:
  errors: 'sum(increase(graylane_server_errorz_total{service="{{.Service}}",lane="{{.Lane}}"}[{{.Window}}]))'
unknown_limit: 3`, "no series for the lane's errors"},
		{"an empty p99 query and no error gate", `
queries:
  p99: 'histogram_quantile(0.99, sum by (le) (rate(graylane_server_request_duration_seconds_bucket{service="{{.Service}}",lane="nowhere"}[{{.Window}}])))'
unknown_limit: 3`, "no series for the lane's p99"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startStack(t)
			p := s.plan(t, c.extra)
			if c.name == "an empty p99 query and no error gate" {
				p.Gates.ErrorRatio = rollout.RatioGate{}
				s.canary.delay.Store(int64(300 * time.Millisecond)) // a real p99 of 300 ms, which the gate cannot see
			} else {
				s.canary.failRate.Store(500) // half its calls fail, which the gate cannot see
			}
			defer s.traffic(t, true)()
			st, err, events := s.run(t, p)
			if !errors.Is(err, rollout.ErrRolledBack) || st.Status != rollout.StatusRolledBack || st.Step != 0 {
				t.Fatalf("rollout ended %s at step %d: %v\nevents:\n%s", st.Status, st.Step, err, strings.Join(events, "\n"))
			}
			last := lastHistory(t, s.r)
			if !strings.HasPrefix(last.Action, "rollback canary") || !strings.Contains(last.Reason, "unknown 3 times in a row") || !strings.Contains(last.Reason, c.says) {
				t.Fatalf("last change %q, reason %q", last.Action, last.Reason)
			}
			for _, h := range mustHistory(t, s.r) {
				if strings.HasPrefix(h.Action, "promote") || strings.HasPrefix(h.Action, "weight canary 20") {
					t.Fatalf("a gate without data let the rollout go on: %q", h.Action)
				}
			}
		})
	}
}

func mustHistory(t *testing.T, r *registrar.Registrar) []registrar.HistoryEntry {
	t.Helper()
	h, err := r.History(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestStartRefusesAQueryPrometheusRefuses: a plan whose PromQL does not parse, or returns a range
// instead of one number, is refused at start with the query named, rather than holding every step.
func TestStartRefusesAQueryPrometheusRefuses(t *testing.T) {
	s := startStack(t)
	x := rollout.New(s.r)
	for extra, says := range map[string]string{
		"queries:\n  errors: 'sum(increase(graylane_server_errors_total{lane=\"{{.Lane}}\"}[{{.Window}}]'": "queries.errors for lane canary",
		"queries:\n  p99: 'graylane_server_request_duration_seconds_count[{{.Window}}]'":                   "queries.p99 for lane canary",
	} {
		if _, err := x.Start(context.Background(), s.plan(t, extra)); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("start with %s: %v, want a refusal naming %q", extra, err, says)
		}
	}
	if _, err := x.Get(context.Background(), "shop"); !errors.Is(err, rollout.ErrNoRollout) {
		t.Fatalf("a refused plan was recorded: %v", err)
	}
	p := s.plan(t, "")
	p.Prometheus = "http://127.0.0.1:1"
	if _, err := x.Start(context.Background(), p); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("start with Prometheus unreachable: %v", err)
	}
}

// TestFailureLimitHoldsOnANoisyReading: with failure_limit 3 a failed reading holds the step; the
// rollout rolls back only when three readings in a row have failed.
func TestFailureLimitHoldsOnANoisyReading(t *testing.T) {
	s := startStack(t)
	s.canary.failRate.Store(500)
	defer s.traffic(t, true)()
	st, err, events := s.run(t, s.plan(t, "failure_limit: 3"))
	if !errors.Is(err, rollout.ErrRolledBack) || st.Status != rollout.StatusRolledBack {
		t.Fatalf("rollout ended %s: %v\nevents:\n%s", st.Status, err, strings.Join(events, "\n"))
	}
	all := strings.Join(events, "\n")
	if !strings.Contains(all, "(1 of 3 readings in a row; holding)") || !strings.Contains(all, "(2 of 3 readings in a row; holding)") {
		t.Fatalf("the first failures did not hold the step:\n%s", all)
	}
	if last := lastHistory(t, s.r); !strings.Contains(last.Reason, "gate error_ratio") || !strings.Contains(last.Reason, "(3 readings in a row)") {
		t.Fatalf("last change %q, reason %q", last.Action, last.Reason)
	}
}

// serviceWithoutTraffic registers service race (stable and a test-only canary, no processes behind
// them) and starts a Prometheus for the plans' query checks. weight reads the canary's weight.
func serviceWithoutTraffic(t *testing.T) (r *registrar.Registrar, promURL string, weight func() string) {
	t.Helper()
	a := consultest.Start(t)
	r, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator("release-bot"))
	if err != nil {
		t.Fatal(err)
	}
	specs, err := registrar.ParseSpecs("race.yaml", []byte(`
- {name: race, id: race-1, address: 127.0.0.1, port: 9001}
- {name: race, id: race-canary-1, address: 127.0.0.1, port: 9002, meta: {canary: true, match: [{header: [{key: x-test, value_match: "1"}]}]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	weight = func() string {
		inst, _, err := r.Instances(context.Background(), "race")
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range inst {
			if i.ID == "race-canary-1" {
				return i.Gray.Weight.String()
			}
		}
		return "?"
	}
	return r, promtest.Start(t).URL, weight
}

// TestApprovalStepWaitsForAnOperator: a pause step stops the rollout at the weight before it until
// an operator resumes it; then the next step is applied.
func TestApprovalStepWaitsForAnOperator(t *testing.T) {
	r, promURL, weight := serviceWithoutTraffic(t)
	plan, err := rollout.ParsePlan([]byte(`
service: race
prometheus: ` + promURL + `
interval: 100ms
steps: [{pause: {}}, {weight: 20, hold: 1h}]
gates: {min_requests: 1, error_ratio: {max: 0.05}}
`))
	if err != nil {
		t.Fatal(err)
	}
	x := rollout.New(r)
	if _, err := x.Start(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); x.Run(ctx, "race", rollout.RunOptions{}) }()
	defer func() { cancel(); <-done }()
	state := func() *rollout.State {
		st, err := x.Get(context.Background(), "race")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	eventually.Wait(t, 10*time.Second, "the approval step", func() bool { return state().Status == rollout.StatusPaused })
	if st := state(); !strings.Contains(st.Message, "waiting for an operator") || st.Step != 0 {
		t.Fatalf("at the approval: %+v", st)
	}
	time.Sleep(500 * time.Millisecond) // five intervals: the rollout stays where it is
	if st := state(); st.Status != rollout.StatusPaused || weight() != "0" {
		t.Fatalf("the rollout went on without an operator: %s, weight %s", st.Status, weight())
	}
	if _, err := x.Resume(context.Background(), "race"); err != nil {
		t.Fatal(err)
	}
	eventually.Wait(t, 10*time.Second, "the step after the approval", func() bool { return weight() == "20" })
	if st := state(); st.Step != 1 || st.Status != rollout.StatusRunning {
		t.Fatalf("after the approval: %+v", st)
	}
	for _, bad := range []string{"steps: [{weight: 5, hold: 1m}, {pause: {}}]", "steps: [{pause: {}, hold: 1m}, {weight: 5, hold: 1m}]"} {
		if _, err := rollout.ParsePlan([]byte("service: race\nprometheus: " + promURL + "\ngates: {error_ratio: {max: 0.05}}\n" + bad)); err == nil || !strings.Contains(err.Error(), "pause step") {
			t.Errorf("%s: %v, want a refusal of the pause step", bad, err)
		}
	}
}
