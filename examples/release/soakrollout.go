package main

// The soak's rollout: graylane's rollout controller runs through the whole soak (so it lives
// through every Consul restart), gated on a real Prometheus that scrapes pay's instances, and the
// last cycle walks pay's green lane through a rollout that an operator aborts while it runs. The
// data planes are judged by the same rules as for the schedule's own steps; the soak also requires
// that the rollout reached its second step and that the abort left green at weight 0.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

// soakRollout is the rollout controller of a soak and what it did.
type soakRollout struct {
	prom   *promtest.Server
	x      *rollout.Rollouts
	stop   context.CancelFunc
	done   sync.WaitGroup
	errors []string // what the controller reported as failing, for the report
	mu     sync.Mutex
}

// startRollouts starts a Prometheus that scrapes pay's instances and the rollout controller.
func (k *soak) startRollouts(ctx context.Context, dir string) error {
	entries, _, err := k.s.client.Health().Service("pay", "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	var targets []string
	for _, e := range entries {
		targets = append(targets, net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port)))
	}
	prom, err := promtest.Run(dir, targets...)
	if err != nil {
		return fmt.Errorf("soak: Prometheus: %w", err)
	}
	ro := &soakRollout{prom: prom, x: rollout.New(k.s.r)}
	c := rollout.NewController(ro.x, rollout.ControllerOptions{
		Logf: func(format string, args ...any) {
			ro.mu.Lock()
			ro.errors = append(ro.errors, fmt.Sprintf(format, args...))
			ro.mu.Unlock()
		},
		BeforeChange: func(service string, st *rollout.State, op registrar.Op) {
			// Known to the judge before any data plane can see it, as the schedule's own steps.
			k.markStep()
			switch op := op.(type) {
			case registrar.SetWeight:
				k.setLaneWeight(service, op.Weight)
			case registrar.Rollback:
				k.setLaneWeight(service, 0)
			}
			k.event("rollout of %s: %v (%s)", service, op, st.StepName())
		},
	})
	cctx, cancel := context.WithCancel(ctx)
	ro.stop = cancel
	ro.done.Add(1)
	go func() { defer ro.done.Done(); _ = c.Run(cctx) }()
	k.rollouts = ro
	return nil
}

func (k *soak) stopRollouts() {
	if ro := k.rollouts; ro != nil {
		ro.stop()
		ro.done.Wait()
		ro.prom.Stop()
	}
}

// setLaneWeight records the gray lane's weight of a service from now on.
func (k *soak) setLaneWeight(service string, w gray.Weight) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.weights = append(k.weights, weightsAt{at: time.Now(), service: service, weight: w})
}

// rolloutPay records a rollout of pay's green lane: 10 %, then 40 %, then 40 % held for an hour
// (the operator aborts it before), gated on green's error ratio against blue's.
func (k *soak) rolloutPay(ctx context.Context) error {
	plan, err := rollout.ParsePlan(fmt.Appendf(nil, `service: pay
lane: green
baseline: blue
prometheus: %s
interval: 500ms
steps:
  - {weight: 10, hold: 3s}
  - {weight: 40, hold: 3s}
  - {weight: 40, hold: 1h}
gates:
  window: 5s
  min_requests: 5
  error_ratio: {max: 0.2}
`, k.rollouts.prom.URL))
	if err != nil {
		return err
	}
	if _, err := k.rollouts.x.Start(ctx, plan); err != nil {
		return fmt.Errorf("soak: starting the rollout of pay: %w", err)
	}
	k.event("rollout of pay green started (10%% 3s, 40%% 3s, 40%% 1h)")
	return nil
}

// abortPay aborts pay's rollout, requires that it had reached 40 %, and records the rollback.
func (k *soak) abortPay(ctx context.Context) error {
	st, err := k.rollouts.x.Get(ctx, "pay")
	if err != nil {
		return err
	}
	reached := st.Step >= 1 && st.StepApplied
	k.markStep()
	st, err = k.rollouts.x.Abort(ctx, "pay")
	if err != nil {
		return fmt.Errorf("soak: aborting the rollout of pay: %w", err)
	}
	k.setLaneWeight("pay", 0)
	k.event("rollout of pay aborted at %s", st.StepName())
	// The catalog follows the agents' registrations within moments; green must be at 0 within the
	// propagation bound.
	for deadline := time.Now().Add(soakBound); ; {
		inst, _, err := k.s.r.Instances(ctx, "pay")
		if err != nil {
			return err
		}
		held := ""
		for _, i := range inst {
			if i.Lane() == string(gray.Green) && i.Gray.Weight != 0 {
				held = fmt.Sprintf("%s has weight %s", i.ID, i.Gray.Weight)
			}
		}
		if held == "" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("soak: %v after the abort, after %v", held, soakBound)
		}
		time.Sleep(50 * time.Millisecond)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.report.Rollout = fmt.Sprintf("pay green walked by the rollout controller to %s, then aborted to weight 0", st.StepName())
	if !reached {
		k.report.RolloutMissed = fmt.Sprintf("the rollout had not reached 40%% when it was aborted (%s; %s); controller: %v",
			st.StepName(), st.Message, k.rollouts.errors)
	}
	return nil
}
