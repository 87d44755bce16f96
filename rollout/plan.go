package rollout

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/template"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

// Plan is a rollout: the lane to take from test traffic to promotion, its steps, and the gates each
// step must pass. It is written in YAML beside the service spec:
//
//	service: bservice
//	lane: canary
//	baseline: stable
//	prometheus: http://127.0.0.1:9090
//	interval: 10s
//	steps:
//	  - {weight: 0, hold: 10m}    # test traffic only
//	  - {weight: 5, hold: 10m}
//	  - {weight: 25, hold: 10m}
//	  - {weight: 50, hold: 10m}
//	  - {weight: 100, hold: 10m}
//	gates:
//	  window: 2m
//	  min_requests: 100
//	  error_ratio: {max: 0.01, max_vs_baseline: 2}
//	  latency_p99: {max: 500ms, max_vs_baseline: 1.5}
//
// After the last step has held with its gates passing, the lane is promoted.
type Plan struct {
	Service string `yaml:"service" json:"service"`
	// Lane is the lane rolled out. Default "canary".
	Lane string `yaml:"lane" json:"lane"`
	// Baseline is the lane the gates compare with. Default "stable".
	Baseline string `yaml:"baseline" json:"baseline"`
	// Prometheus is the base URL of the Prometheus server the gates query.
	Prometheus string `yaml:"prometheus" json:"prometheus"`
	// Interval is how often the gates are read. Default 10s.
	Interval Duration `yaml:"interval" json:"interval"`
	Steps    []Step   `yaml:"steps" json:"steps"`
	Gates    Gates    `yaml:"gates" json:"gates"`
	// Queries override the PromQL templates the gates use.
	Queries Queries `yaml:"queries" json:"queries"`
	// UnknownLimit is how many readings in a row may be unknown (Prometheus away, a query that
	// fails or finds no series where the gates need one) before OnUnknown applies. While the gates
	// are unknown the step holds and its hold time does not run. Default 5.
	UnknownLimit int `yaml:"unknown_limit" json:"unknown_limit,omitempty"`
	// OnUnknown is what happens past UnknownLimit: "rollback" (the default) or "pause".
	OnUnknown string `yaml:"on_unknown" json:"on_unknown,omitempty"`
	// FailureLimit is how many readings in a row must fail a gate before the rollout rolls back;
	// fewer hold the step (a single noisy reading). Default 1: the first failure rolls back.
	FailureLimit int `yaml:"failure_limit" json:"failure_limit,omitempty"`
	// Notify lists the webhooks told of the rollout's steps, pauses and outcome.
	Notify []Notification `yaml:"notify" json:"notify,omitempty"`
}

// DefaultUnknownLimit is a plan's UnknownLimit when it gives none.
const DefaultUnknownLimit = 5

// Actions past UnknownLimit (Plan.OnUnknown).
const (
	OnUnknownRollback = "rollback"
	OnUnknownPause    = "pause"
)

// Step is one stage of a rollout: the lane's weight and how long it holds with its gates passing.
// Weight 0 is test traffic only: the lane takes what its match rules send it. A step with Pause set
// (`- pause: {}`) is a manual approval: the rollout pauses there, at the weight of the step before,
// until an operator resumes it (or promotes or aborts it).
type Step struct {
	Weight Percent   `yaml:"weight" json:"weight"`
	Hold   Duration  `yaml:"hold" json:"hold"`
	Pause  *Approval `yaml:"pause" json:"pause,omitempty"`
}

// Approval marks a step that waits for an operator.
type Approval struct{}

// Percent is a gray.Weight written in percent ("5", "0.5") in YAML and JSON.
type Percent gray.Weight

func (w Percent) String() string { return gray.Weight(w).String() }

// UnmarshalYAML reads "5" or "0.5".
func (w *Percent) UnmarshalYAML(n *yaml.Node) error {
	v, err := gray.ParseWeight(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*w = Percent(v)
	return nil
}

// MarshalJSON writes "5".
func (w Percent) MarshalJSON() ([]byte, error) { return []byte(`"` + w.String() + `"`), nil }

// UnmarshalJSON reads "5".
func (w *Percent) UnmarshalJSON(b []byte) error {
	v, err := gray.ParseWeight(strings.Trim(string(b), `"`))
	*w = Percent(v)
	return err
}

// Gates are the conditions under which a step may go on. A gate whose limit is zero is not checked.
type Gates struct {
	// Window is the PromQL range the readings cover. Default 1m.
	Window Duration `yaml:"window" json:"window"`
	// MinRequests is how many requests the lane must have served within the window before the
	// gates count; with fewer the step holds (it neither passes nor fails).
	MinRequests float64     `yaml:"min_requests" json:"min_requests"`
	ErrorRatio  RatioGate   `yaml:"error_ratio" json:"error_ratio"`
	LatencyP99  LatencyGate `yaml:"latency_p99" json:"latency_p99"`
}

// RatioGate bounds the lane's error ratio (5xx / all), absolutely and relative to the baseline's.
type RatioGate struct {
	Max           float64 `yaml:"max" json:"max"`
	MaxVsBaseline float64 `yaml:"max_vs_baseline" json:"max_vs_baseline"`
}

// LatencyGate bounds the lane's p99 latency, absolutely and relative to the baseline's.
type LatencyGate struct {
	Max           Duration `yaml:"max" json:"max"`
	MaxVsBaseline float64  `yaml:"max_vs_baseline" json:"max_vs_baseline"`
}

// Queries are PromQL templates with {{.Service}}, {{.Lane}} and {{.Window}}. Each returns one number.
type Queries struct {
	Requests string `yaml:"requests" json:"requests,omitempty"`
	Errors   string `yaml:"errors" json:"errors,omitempty"`
	P99      string `yaml:"p99" json:"p99,omitempty"`
}

// Default queries read the per-lane server metrics of graylane's metrics.Server middleware. Requests
// and errors are read from the two series that a lane's first request creates, errors at zero (see
// package metrics): a per-code series born at the first error would read as no errors for a window.
const (
	DefaultRequestsQuery = `sum(increase(graylane_server_request_duration_seconds_count{service="{{.Service}}",lane="{{.Lane}}"}[{{.Window}}]))`
	DefaultErrorsQuery   = `sum(increase(graylane_server_errors_total{service="{{.Service}}",lane="{{.Lane}}"}[{{.Window}}]))`
	DefaultP99Query      = `histogram_quantile(0.99, sum by (le) (rate(graylane_server_request_duration_seconds_bucket{service="{{.Service}}",lane="{{.Lane}}"}[{{.Window}}])))`
)

// Duration is a time.Duration written as "10m" or "500ms" in YAML and JSON.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML reads "10m".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration (10s, 5m, 500ms)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes "10m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// UnmarshalJSON reads "10m0s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	v, err := time.ParseDuration(strings.Trim(string(b), `"`))
	*d = Duration(v)
	return err
}

// ParsePlan reads and checks a plan. Unknown fields are errors, so that a misspelt gate is not
// silently ignored.
func ParsePlan(data []byte) (*Plan, error) {
	p, err := DecodePlan(data)
	if err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// DecodePlan reads a plan and fills in the defaults without checking it, for a caller that sets
// fields afterwards (from flags) and then calls Validate. Empty data is an empty plan.
func DecodePlan(data []byte) (*Plan, error) {
	var p Plan
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("rollout plan: %w", err)
	}
	p.SetDefaults()
	return &p, nil
}

// SetDefaults fills in the fields left empty: lane canary, baseline stable, interval 10s, window
// 1m, the default queries.
func (p *Plan) SetDefaults() {
	if p.Lane == "" {
		p.Lane = "canary"
	}
	if p.Baseline == "" {
		p.Baseline = gray.StableLane
	}
	if p.Interval == 0 {
		p.Interval = Duration(10 * time.Second)
	}
	if p.Gates.Window == 0 {
		p.Gates.Window = Duration(time.Minute)
	}
	if p.Queries.Requests == "" {
		p.Queries.Requests = DefaultRequestsQuery
	}
	if p.Queries.Errors == "" {
		p.Queries.Errors = DefaultErrorsQuery
	}
	if p.Queries.P99 == "" {
		p.Queries.P99 = DefaultP99Query
	}
}

// Validate reports what makes a plan unusable, naming the field.
func (p *Plan) Validate() error {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("rollout plan: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if p.Service == "" {
		fail("service", "missing")
	}
	if p.Lane == p.Baseline {
		fail("lane", "%q is also the baseline", p.Lane)
	}
	if p.Lane == gray.StableLane {
		fail("lane", "the stable lane is the base already; roll out a gray lane")
	}
	if p.Prometheus == "" {
		fail("prometheus", "missing: the URL of the Prometheus server the gates query")
	}
	if len(p.Steps) == 0 {
		fail("steps", "missing: at least one step")
	}
	prev := Percent(0)
	for i := range p.Steps {
		if s := &p.Steps[i]; s.Pause != nil {
			// An approval keeps the weight of the step before it.
			switch {
			case (s.Weight != 0 && s.Weight != prev) || s.Hold != 0:
				fail(fmt.Sprintf("steps[%d]", i), "a pause step takes no weight or hold of its own")
			case i == len(p.Steps)-1:
				fail(fmt.Sprintf("steps[%d]", i), "a pause step needs a step after it (promote-now promotes at once)")
			}
			s.Weight = prev
		}
		prev = p.Steps[i].Weight
	}
	prev = 0
	for i, s := range p.Steps {
		if gray.Weight(s.Weight) > gray.MaxWeight {
			fail(fmt.Sprintf("steps[%d].weight", i), "%s%% is more than 100", s.Weight)
		}
		if s.Weight < prev {
			fail(fmt.Sprintf("steps[%d].weight", i), "%s%% is below the step before (%s%%); a rollout only widens", s.Weight, prev)
		}
		prev = s.Weight
	}
	for i := range p.Notify {
		errs = append(errs, p.Notify[i].validate(fmt.Sprintf("notify[%d]", i))...)
	}
	g := p.Gates
	if g.ErrorRatio.Max < 0 || g.ErrorRatio.Max > 1 {
		fail("gates.error_ratio.max", "%v is not a ratio between 0 and 1 (1%% is 0.01)", g.ErrorRatio.Max)
	}
	if g.ErrorRatio.MaxVsBaseline < 0 || g.LatencyP99.MaxVsBaseline < 0 || g.MinRequests < 0 {
		fail("gates", "limits must not be negative")
	}
	if g.ErrorRatio == (RatioGate{}) && g.LatencyP99 == (LatencyGate{}) {
		fail("gates", "no gate is set: give error_ratio or latency_p99 limits")
	}
	if p.FailureLimit < 0 {
		fail("failure_limit", "%d must not be negative", p.FailureLimit)
	}
	if p.UnknownLimit < 0 {
		fail("unknown_limit", "%d must not be negative", p.UnknownLimit)
	}
	if p.OnUnknown != "" && p.OnUnknown != OnUnknownRollback && p.OnUnknown != OnUnknownPause {
		fail("on_unknown", "%q: give %s or %s", p.OnUnknown, OnUnknownRollback, OnUnknownPause)
	}
	if p.Interval < Duration(100*time.Millisecond) {
		fail("interval", "%s is too short", p.Interval)
	}
	for name, q := range map[string]string{"requests": p.Queries.Requests, "errors": p.Queries.Errors, "p99": p.Queries.P99} {
		if _, err := template.New(name).Option("missingkey=error").Parse(q); err != nil {
			fail("queries."+name, "%v", err)
		}
	}
	return errors.Join(errs...)
}

// query fills a query template for a lane.
func (p *Plan) query(tmpl, lane string) (string, error) {
	t, err := template.New("q").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = t.Execute(&b, struct{ Service, Lane, Window string }{p.Service, lane, promDuration(time.Duration(p.Gates.Window))})
	return b.String(), err
}

// promDuration writes a duration as PromQL accepts it ("90s", "2m", "500ms").
func promDuration(d time.Duration) string {
	switch {
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}
