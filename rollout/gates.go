package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Prometheus queries a Prometheus server's HTTP API.
type Prometheus struct {
	URL    string
	Client *http.Client // nil: a client with a 10 s timeout
}

// Query runs an instant query at the server's current time and returns the first sample's value, and
// whether there was one (an empty result, or NaN, is no value).
func (p *Prometheus) Query(ctx context.Context, promql string) (float64, bool, error) {
	return p.QueryAt(ctx, promql, time.Time{})
}

// QueryAt is Query evaluated at the instant at; the zero time is the server's current time. Queries
// that are read together must be evaluated at one instant: a scrape between two of them would mix
// two states of the targets.
func (p *Prometheus) QueryAt(ctx context.Context, promql string, at time.Time) (float64, bool, error) {
	client := p.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	params := url.Values{"query": {promql}}
	if !at.IsZero() {
		params.Set("time", strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		strings.TrimRight(p.URL, "/")+"/api/v1/query?"+params.Encode(), nil)
	if err != nil {
		return 0, false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, false, fmt.Errorf("prometheus at %s: %w", p.URL, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, false, fmt.Errorf("prometheus at %s: answer is not JSON (HTTP %d): %w", p.URL, resp.StatusCode, err)
	}
	if body.Status != "success" {
		return 0, false, fmt.Errorf("prometheus at %s: query %s: %s", p.URL, promql, body.Error)
	}
	var raw [2]any
	switch body.Data.ResultType {
	case "scalar":
		if err := json.Unmarshal(body.Data.Result, &raw); err != nil {
			return 0, false, err
		}
	case "vector":
		var vec []struct {
			Value [2]any `json:"value"`
		}
		if err := json.Unmarshal(body.Data.Result, &vec); err != nil {
			return 0, false, err
		}
		if len(vec) == 0 {
			return 0, false, nil
		}
		raw = vec[0].Value
	default:
		return 0, false, fmt.Errorf("prometheus at %s: query %s returns a %s, want one number", p.URL, promql, body.Data.ResultType)
	}
	s, _ := raw[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, false, fmt.Errorf("prometheus at %s: value %q: %w", p.URL, s, err)
	}
	if math.IsNaN(v) {
		return 0, false, nil
	}
	return v, true, nil
}

// LaneReading is what the gates read of one lane over the window.
type LaneReading struct {
	Requests float64 `json:"requests"`
	Errors   float64 `json:"errors"`
	// P99 is the 99th percentile latency in seconds; HasP99 is false when there was no traffic.
	P99    float64 `json:"p99_seconds"`
	HasP99 bool    `json:"has_p99"`
	// Missing names the queries ("errors", "p99") that found no series. A gate that needs one of
	// them is unknown, never passed. (No requests series is a lane without traffic yet.)
	Missing []string `json:"missing,omitempty"`
}

func (r LaneReading) missing(query string) bool { return slices.Contains(r.Missing, query) }

// ErrorRatio is errors / requests, 0 without requests.
func (r LaneReading) ErrorRatio() float64 {
	if r.Requests <= 0 {
		return 0
	}
	return r.Errors / r.Requests
}

// Readings are one reading of the gates: the rolled-out lane against its baseline.
type Readings struct {
	Time     time.Time   `json:"time"`
	Lane     LaneReading `json:"lane"`
	Baseline LaneReading `json:"baseline"`
}

func (r Readings) String() string {
	s := fmt.Sprintf("%.0f requests, errors %s (baseline %s)", r.Lane.Requests, pct(r.Lane.ErrorRatio()), pct(r.Baseline.ErrorRatio()))
	if r.Lane.HasP99 {
		s += ", p99 " + ms(r.Lane.P99)
		if r.Baseline.HasP99 {
			s += " (baseline " + ms(r.Baseline.P99) + ")"
		}
	}
	return s
}

func pct(v float64) string   { return strconv.FormatFloat(v*100, 'f', 2, 64) + "%" }
func ms(sec float64) string  { return strconv.FormatFloat(sec*1000, 'f', 0, 64) + "ms" }
func times(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) + "x" }

// Verdict is what a reading of the gates says.
type Verdict int

const (
	// Pass: every gate holds with enough traffic.
	Pass Verdict = iota
	// Hold: too little traffic for the gates to count; the step neither passes nor fails.
	Hold
	// Fail: a gate failed; the rollout rolls back.
	Fail
	// Unknown: a gate cannot be read (a query found no series where it needs one): the step holds,
	// its hold time stops, and past the plan's unknown_limit the rollout rolls back or pauses.
	Unknown
)

func (v Verdict) String() string { return [...]string{"pass", "hold", "fail", "unknown"}[v] }

// errorRatioFloor keeps a baseline without errors from making any single canary error a failure of
// the relative gate: the baseline's ratio counts as at least this much.
const errorRatioFloor = 0.001

// Judge reads the gates: Fail with the gate and its numbers, Hold while the lane has served fewer
// than MinRequests, else Pass. Failures are judged before traffic is counted, so that a lane
// failing badly is rolled back without waiting for the minimum.
func (g Gates) Judge(r Readings) (Verdict, string) {
	lane, base := r.Lane, r.Baseline
	if lane.Requests > 0 {
		ratio := lane.ErrorRatio()
		if g.ErrorRatio.Max > 0 && ratio > g.ErrorRatio.Max && lane.Requests >= g.MinRequests {
			return Fail, fmt.Sprintf("gate error_ratio.max failed: %s > %s over %.0f requests", pct(ratio), pct(g.ErrorRatio.Max), lane.Requests)
		}
		if g.ErrorRatio.MaxVsBaseline > 0 && base.Requests > 0 && lane.Requests >= g.MinRequests {
			limit := g.ErrorRatio.MaxVsBaseline * math.Max(base.ErrorRatio(), errorRatioFloor)
			if ratio > limit {
				return Fail, fmt.Sprintf("gate error_ratio.max_vs_baseline failed: %s > %s baseline %s", pct(ratio), times(g.ErrorRatio.MaxVsBaseline), pct(base.ErrorRatio()))
			}
		}
		if lane.HasP99 && lane.Requests >= g.MinRequests {
			if max := time.Duration(g.LatencyP99.Max).Seconds(); max > 0 && lane.P99 > max {
				return Fail, fmt.Sprintf("gate latency_p99.max failed: p99 %s > %s", ms(lane.P99), ms(max))
			}
			if g.LatencyP99.MaxVsBaseline > 0 && base.HasP99 && lane.P99 > g.LatencyP99.MaxVsBaseline*base.P99 {
				return Fail, fmt.Sprintf("gate latency_p99.max_vs_baseline failed: p99 %s > %s baseline %s", ms(lane.P99), times(g.LatencyP99.MaxVsBaseline), ms(base.P99))
			}
		}
	}
	if lane.Requests < g.MinRequests || lane.Requests == 0 {
		return Hold, fmt.Sprintf("holding: %.0f requests of the %.0f the gates need within %s", lane.Requests, g.MinRequests, g.Window)
	}
	if missing := g.needed(r); len(missing) > 0 {
		return Unknown, "unknown: no series for " + strings.Join(missing, ", ") + " (a query that finds nothing is never a pass)"
	}
	return Pass, "gates passed: " + r.String()
}

// needed returns the values the set gates need that are missing: the lane's errors for an error
// gate and its p99 for a latency gate, and the baseline's for a relative gate while the baseline
// has traffic.
func (g Gates) needed(r Readings) []string {
	var out []string
	errorGate, errorVs := g.ErrorRatio.Max > 0 || g.ErrorRatio.MaxVsBaseline > 0, g.ErrorRatio.MaxVsBaseline > 0
	latencyGate, latencyVs := g.LatencyP99.Max > 0 || g.LatencyP99.MaxVsBaseline > 0, g.LatencyP99.MaxVsBaseline > 0
	if errorGate && r.Lane.missing("errors") {
		out = append(out, "the lane's errors")
	}
	if latencyGate && r.Lane.missing("p99") {
		out = append(out, "the lane's p99")
	}
	if errorVs && r.Baseline.Requests > 0 && r.Baseline.missing("errors") {
		out = append(out, "the baseline's errors")
	}
	if latencyVs && r.Baseline.Requests > 0 && r.Baseline.missing("p99") {
		out = append(out, "the baseline's p99")
	}
	return out
}

// read queries the gates' numbers for the lane and its baseline, all at one instant of the
// Prometheus server's clock.
func (p *Plan) read(ctx context.Context, prom *Prometheus) (Readings, error) {
	var r Readings
	now, ok, err := prom.Query(ctx, "time()")
	if err == nil && !ok {
		err = fmt.Errorf("prometheus at %s: time() has no value", prom.URL)
	}
	if err != nil {
		return r, err
	}
	r.Time = time.UnixMilli(int64(math.Round(now * 1000))).UTC()
	for _, target := range []struct {
		lane string
		out  *LaneReading
	}{{p.Lane, &r.Lane}, {p.Baseline, &r.Baseline}} {
		for _, q := range []struct {
			name string
			tmpl string
			out  *float64
			has  *bool
		}{{"requests", p.Queries.Requests, &target.out.Requests, nil}, {"errors", p.Queries.Errors, &target.out.Errors, nil},
			{"p99", p.Queries.P99, &target.out.P99, &target.out.HasP99}} {
			promql, err := p.query(q.tmpl, target.lane)
			if err != nil {
				return r, err
			}
			v, ok, err := prom.QueryAt(ctx, promql, r.Time)
			if err != nil {
				return r, err
			}
			*q.out = v
			if q.has != nil {
				*q.has = ok
			}
			// No requests series is a lane without traffic yet, which holds the step anyway;
			// no errors or p99 series beside requests is a gate that cannot be read.
			if !ok && q.name != "requests" {
				target.out.Missing = append(target.out.Missing, q.name)
			}
		}
	}
	return r, nil
}

// CheckQueries runs each of the plan's queries once against prom, for the lane and for the
// baseline, and returns an error naming the first that Prometheus refuses (it does not parse, or
// it returns more than one number) or that cannot be asked (Prometheus unreachable). A query that
// finds nothing passes here: the lane may have no traffic yet; the gates treat that when they read.
func (p *Plan) CheckQueries(ctx context.Context, prom *Prometheus) error {
	for _, lane := range []string{p.Lane, p.Baseline} {
		for _, q := range []struct{ name, tmpl string }{{"requests", p.Queries.Requests}, {"errors", p.Queries.Errors}, {"p99", p.Queries.P99}} {
			promql, err := p.query(q.tmpl, lane)
			if err != nil {
				return fmt.Errorf("rollout plan: queries.%s: %w", q.name, err)
			}
			if _, _, err := prom.Query(ctx, promql); err != nil {
				return fmt.Errorf("rollout plan: queries.%s for lane %s: %w", q.name, lane, err)
			}
		}
	}
	return nil
}
