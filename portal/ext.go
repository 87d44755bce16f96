package portal

import (
	"context"
	"time"

	"github.com/graylane/graylane/registrar"
)

// Rollouts and per-lane rates come from sources: by default ConsulRollouts, which reads the rollouts
// `graylane rollout` keeps in Consul and their gate readings; another driver of rollouts or another
// metrics reader can take its place. The portal shows the panels only when a source has data for
// the service; otherwise they are not rendered at all.

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
	// Message is the rollout's last event ("step 2 of 5: weight 25%", "gate ... failed").
	Message string
	// Done is set once the rollout has ended (promoted, rolled back, aborted); Paused while paused.
	Done, Paused bool
}

// RolloutControl is implemented by a RolloutSource whose rollouts the page may steer: "pause",
// "resume", "abort" (the lane goes back to test traffic) and "promote-now". r records the change
// under the signed-in operator's name. While a rollout that the page can steer drives a lane, the
// lane's own weight, promote and rollback buttons give way to these, so that an operator does not
// fight the controller.
type RolloutControl interface {
	Control(ctx context.Context, r *registrar.Registrar, service, action string) error
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
