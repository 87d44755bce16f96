package portal

import (
	"context"
	"time"
)

// Rollouts and per-lane rates come from outside the portal: from whatever drives rollouts and reads
// the data planes' metrics. The portal shows their panels only when a source is configured and has
// data for the service; otherwise the panels are not rendered at all.

// RolloutSource reports the rollout running on a service. Implementations must be safe for
// concurrent use and should answer quickly (the portal asks on every update of the service); when
// their data changes they call Server.Notify so that open pages update.
type RolloutSource interface {
	// Rollout returns the running rollout of the service, or nil when none is running.
	Rollout(ctx context.Context, service string) (*Rollout, error)
}

// RateSource reports request rates per lane. Same contract as RolloutSource.
type RateSource interface {
	// Rates returns the current rates of the service's lanes by lane name; nil or empty when there
	// are no readings.
	Rates(ctx context.Context, service string) (map[string]LaneRates, error)
}

// Rollout is a running, stepwise release of one lane.
type Rollout struct {
	Lane string
	// Step is the current step, 1-based, of Steps.
	Step, Steps int
	// Weight is the lane's weight at this step, as a percentage ("5", "12.5").
	Weight string
	// NextStep is when the next step is due; zero when the rollout waits (paused, or for a gate).
	NextStep time.Time
	// State is a word for what it does now: "progressing", "paused", "waiting for gates", "aborted".
	State string
	// Gates are the readings that decide whether the next step may go.
	Gates []Gate
}

// Gate is one reading that a rollout step depends on.
type Gate struct {
	Name      string // "error rate", "p99 latency"
	Value     string // the reading, formatted ("0.4 %")
	Threshold string // the limit, formatted ("< 1 %")
	OK        bool
}

// LaneRates are one lane's recent traffic figures.
type LaneRates struct {
	// RequestsPerSecond over the source's window.
	RequestsPerSecond float64
	// ErrorRatio is the fraction of requests that failed, in [0, 1].
	ErrorRatio float64
	// P99 is the 99th percentile latency; zero when unknown.
	P99 time.Duration
}
