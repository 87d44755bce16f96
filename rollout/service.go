package rollout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// ControllerOptions tune a Controller.
type ControllerOptions struct {
	// Logf reports what the controller does: leadership, rollouts picked up, steps, failures.
	// Default: nothing is reported.
	Logf func(format string, args ...any)
	// Prometheus overrides every plan's Prometheus client (tests, TLS).
	Prometheus *Prometheus
	// HTTPClient posts the plans' notifications. Default: a client of its own.
	HTTPClient *http.Client
	// BeforeChange, when set, is called right before a change to a lane is committed
	// (RunOptions.BeforeChange), from the goroutine that drives the service's rollout.
	BeforeChange func(service string, st *State, op registrar.Op)
}

// Controller drives every rollout of a datacenter as a long-lived service. Run it in one process,
// or in several for high availability: one of them leads (it holds a Consul session lock,
// graylane/rollout-controller.leader) and drives every rollout that has not ended, picking up new
// ones as `rollout start` records them; the others wait, and one takes over within the session's
// TTL to twice that when the leader stops or dies. A rollout resumes where its state says, and a
// step's change is recorded with the state in one transaction, so a takeover neither repeats nor
// skips a step.
//
// A Controller is a prometheus.Collector of the rollouts it drives (graylane_rollout_*).
type Controller struct {
	x    *Rollouts
	opts ControllerOptions

	mu     sync.Mutex
	leader bool
	states map[string]*State // the last look at each rollout driven while leading

	notifications *prometheus.CounterVec
}

// NewController returns a Controller of the rollouts x records.
func NewController(x *Rollouts, opts ControllerOptions) *Controller {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	return &Controller{x: x, opts: opts, states: map[string]*State{},
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "graylane_rollout_notifications_total",
			Help: "Notifications of rollouts posted by this controller, by kind (before_step, after_step, paused, outcome) and result (ok, failed).",
		}, []string{"service", "kind", "result"})}
}

// Leading reports whether this controller leads.
func (c *Controller) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// Run campaigns for leadership and, while it leads, drives every rollout; it returns when ctx
// ends, after every rollout's driver has stopped and the lock is released.
func (c *Controller) Run(ctx context.Context) error {
	me := controllerName(c.x.r.Operator())
	backoff := time.Second
	for ctx.Err() == nil {
		err := c.campaign(ctx, me)
		if ctx.Err() != nil {
			break
		}
		c.opts.Logf("rollout controller %s: %v; campaigning again in %s", me, err, backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	return nil
}

// campaign waits for the leader lock, leads until the session is lost or ctx ends, and returns why
// it stopped.
func (c *Controller) campaign(ctx context.Context, me string) error {
	s, destroy, err := c.x.newSession(ctx, "graylane rollout controller "+me)
	if err != nil {
		return err
	}
	defer destroy()
	release, err := c.x.acquire(ctx, s, c.x.leaderKey(), me, "the rollout controllers", false,
		func(msg string) { c.opts.Logf("rollout controller %s: %s", me, msg) })
	if err != nil {
		return err
	}
	defer release()
	c.opts.Logf("rollout controller %s leads: it drives every rollout of this datacenter", me)
	c.setLeader(true)
	defer c.setLeader(false)
	return c.lead(ctx, s)
}

func (c *Controller) setLeader(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leader = on
	if !on {
		c.states = map[string]*State{} // a standby reports no rollout: the leader does
	}
}

// lead drives every rollout listed under the active prefix until the session is lost or ctx ends.
func (c *Controller) lead(ctx context.Context, s *session) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: every driver stops before the lock is released
	driving := map[string]bool{}
	var mu sync.Mutex
	kv := c.x.r.Client().KV()
	var index uint64
	for {
		select {
		case <-s.lost:
			return errors.New("the leader's Consul session ended")
		default:
		}
		pairs, meta, err := kv.List(c.x.activePrefix(), (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if ctx.Err() != nil {
			select {
			case <-s.lost:
				return errors.New("the leader's Consul session ended")
			default:
				return ctx.Err()
			}
		}
		if err != nil {
			c.opts.Logf("rollout controller: listing the rollouts: %v", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if meta.LastIndex < index {
			index = 0 // the index went back (a restored snapshot): read afresh
		} else {
			index = meta.LastIndex
		}
		for _, p := range pairs {
			service := strings.TrimPrefix(p.Key, c.x.activePrefix())
			mu.Lock()
			busy := driving[service]
			driving[service] = true
			mu.Unlock()
			if busy || service == "" {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.drive(ctx, service, s)
				mu.Lock()
				delete(driving, service)
				mu.Unlock()
			}()
		}
	}
}

// drive runs a service's rollouts until its entry under the active prefix is gone or ctx ends: when
// a rollout ends, the entry is removed with check-and-set, so that a rollout started meanwhile (which
// sets the entry again) is driven in turn.
func (c *Controller) drive(ctx context.Context, service string, s *session) {
	kv := c.x.r.Client().KV()
	backoff := time.Second
	for ctx.Err() == nil {
		entry, _, err := kv.Get(c.x.activeKey(service), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err == nil && entry == nil {
			return
		}
		var final *State
		if err == nil {
			c.opts.Logf("rollout of %s: driving it", service)
			final, err = c.x.Run(ctx, service, RunOptions{
				Prometheus: c.opts.Prometheus,
				HTTPClient: c.opts.HTTPClient,
				Events: func(st *State, event string) {
					c.opts.Logf("rollout of %s: %s", service, event)
				},
				Observe: func(st *State) { c.observe(service, st) },
				BeforeChange: func(st *State, op registrar.Op) {
					if c.opts.BeforeChange != nil {
						c.opts.BeforeChange(service, st, op)
					}
				},
				Notified: func(kind string, n *Notification, err error) {
					result := "ok"
					if err != nil {
						result = "failed"
						c.opts.Logf("rollout of %s: %v", service, err)
					}
					c.notifications.WithLabelValues(service, kind, result).Inc()
				},
				session: s,
			})
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil || errors.Is(err, ErrRolledBack) || errors.Is(err, ErrNoRollout) {
			if final != nil {
				c.observe(service, final)
			}
			ok, _, derr := kv.DeleteCAS(entry, (&api.WriteOptions{}).WithContext(ctx))
			if derr == nil && ok {
				c.opts.Logf("rollout of %s: ended; no longer driven", service)
				return
			}
			continue // a new rollout of the service was started meanwhile, or Consul is away
		}
		c.opts.Logf("rollout of %s: %v; trying again in %s", service, err, backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (c *Controller) observe(service string, st *State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader {
		copied := *st
		c.states[service] = &copied
	}
}

// Metric descriptions of the rollouts a controller drives.
var (
	descLeader = prometheus.NewDesc("graylane_rollout_controller_leader",
		"1 when this rollout controller leads (it drives the rollouts), 0 when it stands by.", nil, nil)
	descStep = prometheus.NewDesc("graylane_rollout_step",
		"The current step of a rollout, from 1.", []string{"service", "lane"}, nil)
	descSteps = prometheus.NewDesc("graylane_rollout_steps",
		"The number of steps of a rollout's plan.", []string{"service", "lane"}, nil)
	descWeight = prometheus.NewDesc("graylane_rollout_weight",
		"The weight in percent the current step of a rollout gives its lane.", []string{"service", "lane"}, nil)
	descPhase = prometheus.NewDesc("graylane_rollout_phase",
		"1 for the phase a rollout is in: running, paused, promoted, rolled_back or aborted.", []string{"service", "lane", "phase"}, nil)
	descGate = prometheus.NewDesc("graylane_rollout_gate",
		"The last reading of a rollout's gates: requests, error_ratio, p99_seconds, baseline_error_ratio, baseline_p99_seconds.",
		[]string{"service", "lane", "gate"}, nil)
	descUnknown = prometheus.NewDesc("graylane_rollout_gate_unknown",
		"Readings in a row whose gates were unknown (no data, a failed query).", []string{"service", "lane"}, nil)
)

// phases are the values of graylane_rollout_phase's phase label, by status.
var phases = map[Status]string{StatusRunning: "running", StatusPaused: "paused", StatusPromoted: "promoted",
	StatusRolledBack: "rolled_back", StatusAborted: "aborted"}

// Describe implements prometheus.Collector.
func (c *Controller) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descStep, descSteps, descWeight, descPhase, descGate, descUnknown} {
		ch <- d
	}
	c.notifications.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Controller) Collect(ch chan<- prometheus.Metric) {
	c.notifications.Collect(ch)
	c.mu.Lock()
	defer c.mu.Unlock()
	leader := 0.0
	if c.leader {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	for service, st := range c.states {
		lane := st.Plan.Lane
		gauge := func(d *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{service, lane}, extra...)...)
		}
		step := min(st.Step, len(st.Plan.Steps)-1)
		gauge(descStep, float64(step+1))
		gauge(descSteps, float64(len(st.Plan.Steps)))
		weight := 0.0
		switch {
		case st.Status == StatusPromoted:
			weight = 100
		case st.Status == StatusRolledBack || st.Status == StatusAborted:
			weight = 0
		case step >= 0 && (st.StepApplied || step > 0):
			if !st.StepApplied {
				step-- // the step's weight is not set yet: the lane holds the step before's
			}
			weight = gray.Weight(st.Plan.Steps[step].Weight).Percent()
		}
		gauge(descWeight, weight)
		for status, phase := range phases {
			v := 0.0
			if st.Status == status {
				v = 1
			}
			gauge(descPhase, v, phase)
		}
		if r := st.Readings; r != nil {
			gauge(descGate, r.Lane.Requests, "requests")
			gauge(descGate, r.Lane.ErrorRatio(), "error_ratio")
			gauge(descGate, r.Baseline.ErrorRatio(), "baseline_error_ratio")
			if r.Lane.HasP99 {
				gauge(descGate, r.Lane.P99, "p99_seconds")
			}
			if r.Baseline.HasP99 {
				gauge(descGate, r.Baseline.P99, "baseline_p99_seconds")
			}
		}
		gauge(descUnknown, float64(st.Unknowns))
	}
}

// ControllerRunning names the controller that leads, and whether one does: `rollout start` warns
// when nothing will drive the rollout it records.
func (x *Rollouts) ControllerRunning(ctx context.Context) (string, bool, error) {
	pair, _, err := x.kv.Get(x.leaderKey(), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", false, fmt.Errorf("reading the rollout controllers' lock: %w", err)
	}
	if pair == nil || pair.Session == "" {
		return "", false, nil
	}
	return string(pair.Value), true, nil
}
