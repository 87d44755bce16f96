package portal

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

// ConsulRollouts is the RolloutSource and RateSource of the rollouts graylane keeps in Consul
// (package rollout, `graylane rollout`): a service's running rollout, or one that ended within
// RecentEnd (so that a rollback stays in view with its reason), and the per-lane rates of its last
// gate readings. Safe for concurrent use.
type ConsulRollouts struct {
	x   *rollout.Rollouts
	now func() time.Time
}

// RecentEnd is how long a finished rollout stays on the page.
const RecentEnd = 30 * time.Minute

// NewConsulRollouts reads rollouts through r.
func NewConsulRollouts(r *registrar.Registrar) *ConsulRollouts {
	return &ConsulRollouts{x: rollout.New(r), now: time.Now}
}

// state returns the rollout to show, nil when none.
func (c *ConsulRollouts) state(ctx context.Context, service string) (*rollout.State, error) {
	st, err := c.x.Get(ctx, service)
	if errors.Is(err, rollout.ErrNoRollout) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if st.Status.Done() && c.now().Sub(st.Updated) > RecentEnd {
		return nil, nil
	}
	return st, nil
}

// Rollout implements RolloutSource.
func (c *ConsulRollouts) Rollout(ctx context.Context, service string) (*Rollout, error) {
	st, err := c.state(ctx, service)
	if st == nil || err != nil {
		return nil, err
	}
	return rolloutView(st, c.now()), nil
}

// Rates implements RateSource: the requests, errors and p99 of the rollout's lane and its baseline
// over the gates' window, from the last readings, while they are fresh.
func (c *ConsulRollouts) Rates(ctx context.Context, service string) (map[string]LaneRates, error) {
	st, err := c.state(ctx, service)
	if st == nil || err != nil {
		return nil, err
	}
	return ratesOf(st, c.now()), nil
}

// ratesOf returns the per-lane rates of a running rollout's readings while they are fresh.
func ratesOf(st *rollout.State, now time.Time) map[string]LaneRates {
	window := time.Duration(st.Plan.Gates.Window)
	if st.Readings == nil || st.Status.Done() || window <= 0 || now.Sub(st.Readings.Time) > 2*window+time.Minute {
		return nil
	}
	rates := func(r rollout.LaneReading) LaneRates {
		lr := LaneRates{RequestsPerSecond: r.Requests / window.Seconds(), ErrorRatio: r.ErrorRatio()}
		if r.HasP99 {
			lr.P99 = time.Duration(r.P99 * float64(time.Second))
		}
		return lr
	}
	return map[string]LaneRates{st.Plan.Lane: rates(st.Readings.Lane), st.Plan.Baseline: rates(st.Readings.Baseline)}
}

// Control implements RolloutControl: pause, resume, abort (roll the lane back) or promote-now, through
// r, whose operator the history names.
func (c *ConsulRollouts) Control(ctx context.Context, r *registrar.Registrar, service, action string) error {
	x := rollout.New(r)
	var err error
	switch action {
	case "pause":
		_, err = x.Pause(ctx, service)
	case "resume":
		_, err = x.Resume(ctx, service)
	case "abort":
		_, err = x.Abort(ctx, service)
	case "promote-now":
		_, err = x.PromoteNow(ctx, service)
	default:
		err = fmt.Errorf("unknown rollout action %q", action)
	}
	return err
}

// rolloutView turns a rollout's state into the panel's terms. The gates are judged one by one with
// the rollout's own Judge, so the page says what the controller would.
func rolloutView(st *rollout.State, now time.Time) *Rollout {
	steps := st.Plan.Steps
	v := &Rollout{Lane: st.Plan.Lane, Step: min(st.Step+1, len(steps)), Steps: len(steps), State: string(st.Status), Message: st.Message,
		Done: st.Status.Done(), Paused: st.Status == rollout.StatusPaused}
	if st.Step < len(steps) {
		v.Weight = steps[st.Step].Weight.String()
	} else if len(steps) > 0 {
		v.Weight = steps[len(steps)-1].Weight.String()
	}
	switch {
	case st.Status == rollout.StatusRunning && !st.StepApplied:
		v.State = "starting the step"
	case st.Status == rollout.StatusRunning && st.Verdict == rollout.Hold.String():
		v.State = "holding: too little traffic"
	}
	if st.Status == rollout.StatusRunning && st.StepApplied {
		v.NextStep = now.Add(st.TimeLeft(now))
	}
	r := st.Readings
	if r == nil {
		return v
	}
	g := st.Plan.Gates
	judge := func(only rollout.Gates) bool {
		only.MinRequests, only.Window = g.MinRequests, g.Window
		verdict, _ := only.Judge(*r)
		return verdict != rollout.Fail
	}
	v.Gates = append(v.Gates, Gate{Name: "traffic", Value: fmt.Sprintf("%.0f requests", r.Lane.Requests),
		Threshold: fmt.Sprintf("≥ %.0f in %s", g.MinRequests, g.Window), OK: r.Lane.Requests >= g.MinRequests && r.Lane.Requests > 0})
	if g.ErrorRatio != (rollout.RatioGate{}) {
		var limits []string
		if g.ErrorRatio.Max > 0 {
			limits = append(limits, "≤ "+percent(g.ErrorRatio.Max))
		}
		if g.ErrorRatio.MaxVsBaseline > 0 {
			limits = append(limits, "≤ "+strconv.FormatFloat(g.ErrorRatio.MaxVsBaseline, 'f', -1, 64)+"× baseline")
		}
		v.Gates = append(v.Gates, Gate{Name: "error ratio", Value: percent(r.Lane.ErrorRatio()) + " (baseline " + percent(r.Baseline.ErrorRatio()) + ")",
			Threshold: strings.Join(limits, ", "), OK: judge(rollout.Gates{ErrorRatio: g.ErrorRatio})})
	}
	if g.LatencyP99 != (rollout.LatencyGate{}) {
		var limits []string
		if g.LatencyP99.Max > 0 {
			limits = append(limits, "≤ "+time.Duration(g.LatencyP99.Max).String())
		}
		if g.LatencyP99.MaxVsBaseline > 0 {
			limits = append(limits, "≤ "+strconv.FormatFloat(g.LatencyP99.MaxVsBaseline, 'f', -1, 64)+"× baseline")
		}
		value := "no traffic"
		if r.Lane.HasP99 {
			value = seconds(r.Lane.P99)
			if r.Baseline.HasP99 {
				value += " (baseline " + seconds(r.Baseline.P99) + ")"
			}
		}
		v.Gates = append(v.Gates, Gate{Name: "p99 latency", Value: value, Threshold: strings.Join(limits, ", "), OK: judge(rollout.Gates{LatencyP99: g.LatencyP99})})
	}
	return v
}

func percent(ratio float64) string { return strconv.FormatFloat(100*ratio, 'f', 2, 64) + " %" }

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond / 10).String()
}
