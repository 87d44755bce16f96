package rollout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// RunOptions tune Run.
type RunOptions struct {
	// NoWait makes Run return ErrLocked at once when another controller holds the rollout, instead
	// of waiting for it to stop.
	NoWait bool
	// Events, when set, is called with each event of the rollout (a step, a hold, a failed gate),
	// from Run's goroutine.
	Events func(st *State, event string)
	// Prometheus overrides the plan's Prometheus client (tests, TLS).
	Prometheus *Prometheus
}

// sessionTTL bounds how long a crashed controller's lock outlives it (Consul may take up to twice
// the TTL to expire a session).
const sessionTTL = "10s"

// Run controls a service's rollout until it ends (promoted, rolled back, aborted) or ctx ends. It
// takes the service's lock first, waiting for another controller unless opts.NoWait. It resumes the
// step the state is in. It returns the final state, with ErrRolledBack when a gate failed.
func (x *Rollouts) Run(ctx context.Context, service string, opts RunOptions) (*State, error) {
	say := func(st *State, event string) {
		if opts.Events != nil {
			opts.Events(st, event)
		}
	}
	unlock, lost, err := x.lock(ctx, service, opts.NoWait, func(msg string) { say(nil, msg) })
	if err != nil {
		return nil, err
	}
	defer unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lost:
			cancel()
		case <-ctx.Done():
		}
	}()

	me := controllerName(x.r.Operator())
	// A controller that stopped after recording a step and before every instance held it leaves
	// the step recorded but not applied: put the instances in line with the record first.
	_, err = x.r.Reconcile(ctx, service)
	behind := err != nil
	if behind {
		say(nil, "the instances of "+service+" do not all hold the recorded gray state; retrying at each look: "+err.Error())
	}
	for {
		if behind {
			_, err := x.r.Reconcile(ctx, service)
			behind = err != nil
		}
		st, index, err := x.load(ctx, service)
		if err != nil {
			return nil, err
		}
		if st.Status.Done() {
			say(st, "the rollout has ended: "+string(st.Status))
			if st.Status == StatusRolledBack {
				return st, fmt.Errorf("%w: %s", ErrRolledBack, st.Message)
			}
			return st, nil
		}
		prom := opts.Prometheus
		if prom == nil {
			prom = &Prometheus{URL: st.Plan.Prometheus}
		}
		event, saved, err := x.tick(ctx, st, index, prom, me)
		var applyErr *registrar.ApplyError
		switch {
		case errors.Is(err, registrar.ErrPrecondition):
			continue // an operator ended, paused or changed the rollout while this step was decided
		case errors.As(err, &applyErr):
			// Recorded with the rollout's state, not yet held by every instance: go on, and put
			// the instances in line at the next look.
			event += "; " + applyErr.Error()
			behind = true
		case err != nil:
			if ctx.Err() != nil {
				return st, x.stopped(ctx, lost)
			}
			return st, err
		}
		if !saved {
			ok, err := x.save(ctx, st, index)
			if err != nil {
				if ctx.Err() != nil {
					return st, x.stopped(ctx, lost)
				}
				return st, err
			}
			if !ok {
				continue // an operator paused, resumed or ended it meanwhile: read it again
			}
		}
		if event != "" {
			say(st, event)
		}
		if st.Status.Done() {
			continue // report and return through the top of the loop
		}
		wait := time.Duration(st.Plan.Interval)
		if left := st.TimeLeft(time.Now()); st.Status == StatusRunning && left > 0 && left < wait {
			wait = left
		}
		select {
		case <-ctx.Done():
			return st, x.stopped(ctx, lost)
		case <-time.After(wait):
		}
	}
}

func (x *Rollouts) stopped(ctx context.Context, lost <-chan struct{}) error {
	select {
	case <-lost:
		return fmt.Errorf("%w: the controller's Consul session ended; another controller may take over", ErrLocked)
	default:
	}
	return ctx.Err()
}

// tick advances the rollout by one look at it: set the step's weight if it is not set, read the
// gates, roll back on a failure, go to the next step (or promote) when the step has held. It edits
// st and returns the event to report, if any, and whether it saved st itself.
//
// index is the index of the state st was loaded at. Every change tick commits is recorded together
// with st, in one transaction, only if the state is still at index: an operator's abort, pause or
// promotion written meanwhile wins, and a controller that stops right after a change cannot make it
// again, nor lose the step it made.
func (x *Rollouts) tick(ctx context.Context, st *State, index uint64, prom *Prometheus, me string) (event string, saved bool, err error) {
	st.Controller = me
	if st.Status == StatusPaused {
		return "", false, nil
	}
	plan := &st.Plan
	change := func(op registrar.Op, reason string) (string, bool, error) {
		return st.Message, true, x.commit(ctx, plan.Service, op, reason, st, index)
	}
	if plan.Steps[st.Step].Pause != nil {
		if !st.StepApplied { // reached: wait for an operator
			st.StepApplied, st.StepStarted, st.Elapsed = true, time.Now().UTC(), 0
			st.Status = StatusPaused
			st.Message = fmt.Sprintf("%s: waiting for an operator: graylane rollout resume %s goes on, promote-now promotes, abort rolls back",
				st.StepName(), plan.Service)
			return st.Message, false, nil
		}
		st.Step++ // resumed: approved (Validate keeps a pause from being the last step)
		st.StepApplied = false
		return fmt.Sprintf("approved by resume; next: %s", st.StepName()), false, nil
	}
	if !st.StepApplied {
		reason := "rollout " + st.StepName()
		if st.Readings != nil && st.Step > 0 {
			reason += "; " + st.Verdict
		}
		w := gray.Weight(plan.Steps[st.Step].Weight)
		st.StepApplied, st.StepStarted, st.Elapsed = true, time.Now().UTC(), 0
		st.Message = st.StepName()
		return change(registrar.SetWeight{Lane: plan.Lane, Weight: w}, reason)
	}
	var verdict Verdict
	var text string
	if readings, err := plan.read(ctx, prom); err != nil {
		// Prometheus away, or a query it refuses: the gates are unknown, never passed.
		verdict, text = Unknown, "unknown: cannot read the gates: "+err.Error()
	} else {
		st.Readings = &readings
		verdict, text = plan.Gates.Judge(readings)
	}
	previous := st.Verdict
	st.Verdict = text
	if verdict == Unknown {
		return x.unknown(ctx, st, index, text, previous)
	}
	if !st.UnknownSince.IsZero() {
		// Known again: the hold time did not run while the gates were unknown.
		st.StepStarted = st.StepStarted.Add(time.Since(st.UnknownSince))
		st.UnknownSince, st.Unknowns = time.Time{}, 0
	}
	if verdict == Pass {
		st.Failures = 0
	}
	switch verdict {
	case Fail:
		st.Failures++
		if limit := max(plan.FailureLimit, 1); st.Failures < limit {
			// A noisy reading: the step holds until the failures reach the plan's limit.
			return fmt.Sprintf("%s (%d of %d readings in a row; holding)", text, st.Failures, limit), false, nil
		}
		reason := fmt.Sprintf("rollout rolled back at %s: %s", st.StepName(), text)
		if st.Failures > 1 {
			reason += fmt.Sprintf(" (%d readings in a row)", st.Failures)
		}
		st.Status, st.Message = StatusRolledBack, reason
		return change(registrar.Rollback{Lane: plan.Lane}, reason)
	case Hold:
		if previous != text {
			return text, false, nil
		}
		return "", false, nil
	}
	if st.TimeLeft(time.Now()) > 0 {
		return "", false, nil
	}
	if st.Step == len(plan.Steps)-1 {
		reason := fmt.Sprintf("rollout promoted %s after %s; %s", plan.Lane, st.StepName(), text)
		st.Status, st.Message = StatusPromoted, reason
		return change(registrar.Promote{Lane: plan.Lane}, reason)
	}
	st.Step++
	st.StepApplied = false
	return fmt.Sprintf("%s held: %s", plan.Steps[st.Step-1].Weight.String()+"%", text), false, nil
}

// unknown handles a reading whose gates are unknown: the step holds with its hold time stopped,
// and after the plan's unknown_limit readings in a row the rollout rolls back or pauses, saying why.
func (x *Rollouts) unknown(ctx context.Context, st *State, index uint64, text, previous string) (string, bool, error) {
	plan := &st.Plan
	if st.UnknownSince.IsZero() {
		st.UnknownSince = time.Now().UTC()
	}
	st.Unknowns++
	limit := plan.UnknownLimit
	if limit == 0 {
		limit = DefaultUnknownLimit
	}
	if st.Unknowns < limit {
		if previous != text {
			return text, false, nil
		}
		return "", false, nil
	}
	if plan.OnUnknown == OnUnknownPause {
		reason := fmt.Sprintf("rollout paused at %s: the gates were unknown %d times in a row: %s", st.StepName(), st.Unknowns, text)
		st.Elapsed = Duration(st.UnknownSince.Sub(st.StepStarted))
		st.Status, st.Message = StatusPaused, reason
		st.UnknownSince, st.Unknowns = time.Time{}, 0
		return reason, false, nil
	}
	reason := fmt.Sprintf("rollout rolled back at %s: the gates were unknown %d times in a row: %s", st.StepName(), st.Unknowns, text)
	st.Status, st.Message = StatusRolledBack, reason
	return reason, true, x.commit(ctx, plan.Service, registrar.Rollback{Lane: plan.Lane}, reason, st, index)
}

// lock takes the service's rollout lock with a Consul session, waiting for another holder unless
// noWait. It returns a function that releases the lock (and destroys the session) and a channel that
// is closed if the session is lost.
func (x *Rollouts) lock(ctx context.Context, service string, noWait bool, say func(string)) (func(), <-chan struct{}, error) {
	client := x.r.Client()
	key := x.key(service) + ".lock"
	me := controllerName(x.r.Operator())
	id, _, err := client.Session().CreateNoChecks(&api.SessionEntry{
		Name: "graylane rollout " + service + " by " + me, TTL: sessionTTL, LockDelay: time.Second,
		Behavior: api.SessionBehaviorRelease,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("creating the controller's Consul session: %w", err)
	}
	done := make(chan struct{})
	lost := make(chan struct{})
	go func() {
		err := client.Session().RenewPeriodic(sessionTTL, id, nil, done)
		if err != nil {
			close(lost)
		}
	}()
	release := func() {
		_, _, _ = client.KV().Release(&api.KVPair{Key: key, Session: id}, nil)
		close(done) // RenewPeriodic destroys the session
	}
	told := false
	for {
		ok, _, err := client.KV().Acquire(&api.KVPair{Key: key, Value: []byte(me), Session: id}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("taking the rollout lock of %s: %w", service, err)
		}
		if ok {
			return release, lost, nil
		}
		pair, meta, err := client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			release()
			return nil, nil, err
		}
		holder := "another controller"
		if pair != nil && len(pair.Value) > 0 {
			holder = string(pair.Value)
		}
		if noWait {
			release()
			return nil, nil, fmt.Errorf("%w of %s: %s runs it; this one exits (stop that one first, or run without --no-wait to wait for it)", ErrLocked, service, holder)
		}
		if !told {
			say(fmt.Sprintf("waiting: %s runs the rollout of %s; this controller takes over when it stops (a crashed controller's lock expires within %s to twice that)", holder, service, sessionTTL))
			told = true
		}
		if pair != nil && pair.Session != "" {
			// Wait for the holder's session to release the lock.
			_, _, err = client.KV().Get(key, (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second}).WithContext(ctx))
		} else {
			select { // the lock delay after a release
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			release()
			return nil, nil, ctx.Err()
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			release()
			return nil, nil, err
		}
	}
}

func controllerName(operator string) string {
	return fmt.Sprintf("%s (pid %d)", operator, os.Getpid())
}
