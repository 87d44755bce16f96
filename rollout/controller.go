package rollout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
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
	// Observe, when set, is called with the state after every look at the rollout, from Run's
	// goroutine: a controller's metrics.
	Observe func(st *State)
	// Notified, when set, is called after each notification of the plan was posted, with the
	// error if it failed, from the goroutine that posts them (never Run's: a webhook that hangs
	// holds nothing up).
	Notified func(kind string, n *Notification, err error)
	// HTTPClient posts the plan's notifications. Default: a client of its own.
	HTTPClient *http.Client
	// BeforeChange, when set, is called from Run's goroutine right before Run commits a change to
	// the lane (a step's weight, a rollback, the promotion), which may still fail: an audit hook, or
	// a harness that must know of a change before any data plane can see it.
	BeforeChange func(st *State, op registrar.Op)

	// session, when set, is the controller's session Run takes the service's lock with.
	session *session
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
	unlock, lost, err := x.lock(ctx, service, opts.session, opts.NoWait, func(msg string) { say(nil, msg) })
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

	notices := newNotifier(opts.HTTPClient, opts.Notified)
	defer notices.close()
	announced := -1 // the step whose before_step was posted

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
		if opts.Observe != nil {
			opts.Observe(st)
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
		before := *st
		if st.Status == StatusRunning && !st.StepApplied && st.Plan.Steps[st.Step].Pause == nil && announced != st.Step {
			notices.send(NotifyBeforeStep, st)
			announced = st.Step
		}
		event, saved, err := x.tick(ctx, st, index, prom, me, opts.BeforeChange)
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
		if opts.Observe != nil {
			opts.Observe(st)
		}
		switch {
		case st.Status.Done():
			notices.send(NotifyOutcome, st)
			continue // report and return through the top of the loop
		case st.Status == StatusPaused && before.Status != StatusPaused:
			notices.send(NotifyPaused, st)
		case st.StepApplied && !before.StepApplied && st.Plan.Steps[st.Step].Pause == nil:
			notices.send(NotifyAfterStep, st)
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
func (x *Rollouts) tick(ctx context.Context, st *State, index uint64, prom *Prometheus, me string, before func(*State, registrar.Op)) (event string, saved bool, err error) {
	st.Controller = me
	if st.Status == StatusPaused {
		return "", false, nil
	}
	plan := &st.Plan
	change := func(op registrar.Op, reason string) (string, bool, error) {
		if before != nil {
			before(st, op)
		}
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
		return x.unknown(ctx, st, index, text, previous, before)
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
func (x *Rollouts) unknown(ctx context.Context, st *State, index uint64, text, previous string, before func(*State, registrar.Op)) (string, bool, error) {
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
	op := registrar.Rollback{Lane: plan.Lane}
	if before != nil {
		before(st, op)
	}
	return reason, true, x.commit(ctx, plan.Service, op, reason, st, index)
}

// session is a Consul session a controller holds locks with: lost is closed when Consul ends it.
type session struct {
	id   string
	lost <-chan struct{}
}

// newSession creates a session and keeps it alive until destroy, which also destroys it in Consul
// and releases every lock it holds.
func (x *Rollouts) newSession(ctx context.Context, name string) (*session, func(), error) {
	client := x.r.Client()
	id, _, err := client.Session().CreateNoChecks(&api.SessionEntry{
		Name: name, TTL: sessionTTL, LockDelay: time.Second, Behavior: api.SessionBehaviorRelease,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("creating the controller's Consul session: %w", err)
	}
	done := make(chan struct{})
	lost := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		if err := client.Session().RenewPeriodic(sessionTTL, id, nil, done); err != nil {
			close(lost)
		}
	}()
	var once sync.Once
	destroy := func() {
		once.Do(func() {
			close(done) // RenewPeriodic destroys the session
			<-renewed
		})
	}
	return &session{id: id, lost: lost}, destroy, nil
}

// acquire takes the lock key with the session, waiting for its holder unless noWait. holderName is
// written as the key's value; what names the lock in messages. It returns a function that releases
// the lock.
func (x *Rollouts) acquire(ctx context.Context, s *session, key, holderName, what string, noWait bool, say func(string)) (func(), error) {
	kv := x.r.Client().KV()
	release := func() {
		_, _, _ = kv.Release(&api.KVPair{Key: key, Session: s.id}, nil)
	}
	told := false
	for {
		ok, _, err := kv.Acquire(&api.KVPair{Key: key, Value: []byte(holderName), Session: s.id}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("taking the lock of %s: %w", what, err)
		}
		if ok {
			return release, nil
		}
		pair, meta, err := kv.Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, err
		}
		holder := "another controller"
		if pair != nil && len(pair.Value) > 0 {
			holder = string(pair.Value)
		}
		if noWait && pair != nil && pair.Session != "" {
			return nil, fmt.Errorf("%w of %s: %s runs it; this one exits (stop that one first, or run without --no-wait to wait for it)", ErrLocked, what, holder)
		}
		if !told && pair != nil && pair.Session != "" {
			say(fmt.Sprintf("waiting: %s runs %s; this controller takes over when it stops (a crashed controller's lock expires within %s to twice that)", holder, what, sessionTTL))
			told = true
		}
		if pair != nil && pair.Session != "" {
			// Wait for the holder's session to release the lock.
			_, _, err = kv.Get(key, (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second}).WithContext(ctx))
		} else {
			select { // the lock delay after a release
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
			case <-s.lost:
			}
		}
		select {
		case <-s.lost:
			return nil, fmt.Errorf("%w: the controller's Consul session ended while it waited for %s", ErrLocked, what)
		default:
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
	}
}

// lock takes the service's rollout lock: with s when it is given (a controller's session), else
// with a session of its own. It returns a function that releases the lock (and destroys a session
// of its own) and a channel that is closed if the session is lost.
func (x *Rollouts) lock(ctx context.Context, service string, s *session, noWait bool, say func(string)) (func(), <-chan struct{}, error) {
	me := controllerName(x.r.Operator())
	destroy := func() {}
	if s == nil {
		var err error
		if s, destroy, err = x.newSession(ctx, "graylane rollout "+service+" by "+me); err != nil {
			return nil, nil, err
		}
	}
	release, err := x.acquire(ctx, s, x.key(service)+".lock", me, "the rollout of "+service, noWait, say)
	if err != nil {
		destroy()
		return nil, nil, err
	}
	return func() { release(); destroy() }, s.lost, nil
}

func controllerName(operator string) string {
	return fmt.Sprintf("%s (pid %d)", operator, os.Getpid())
}
