// Package rollout walks a lane through a rollout plan, step by step, gated on measured errors and
// latency: progressive delivery for services on Consul, without Kubernetes.
//
// A rollout's state lives in Consul KV beside the service's gray state
// (graylane/services/<service>/rollout), so that it survives the controller: every step is a
// registrar change (check-and-set, in the history with the gate readings that justified it), and a
// restarted controller resumes the step it was in, counting the time the step has already held.
// One controller runs a service's rollout at a time: it holds a Consul session lock
// (graylane/services/<service>/rollout.lock) whose session expires 10 to 20 seconds after the
// controller stops renewing it. A second controller waits for the lock, or exits with a message
// naming the holder.
//
// The controller reads the gates every Interval through Prometheus' HTTP API. A failed gate rolls
// the lane back at once (weight 0, test traffic only) and ends the rollout; too little traffic holds
// the step; a step whose hold time has passed with its gates passing goes on to the next. After the
// last step the lane is promoted. Operators pause, resume, abort or promote at once through the same
// state (the graylane rollout command); abort and promote-now act themselves, so they work with no
// controller running.
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// Status is where a rollout stands.
type Status string

const (
	StatusRunning    Status = "running"
	StatusPaused     Status = "paused"
	StatusPromoted   Status = "promoted"
	StatusRolledBack Status = "rolled back"
	StatusAborted    Status = "aborted"
)

// Done reports whether the rollout has ended.
func (s Status) Done() bool {
	return s == StatusPromoted || s == StatusRolledBack || s == StatusAborted
}

// Sentinel errors, for errors.Is.
var (
	// ErrNoRollout: the service has no rollout.
	ErrNoRollout = errors.New("rollout: the service has no rollout")
	// ErrRunning: a rollout of the service has not ended yet.
	ErrRunning = errors.New("rollout: a rollout of the service is under way")
	// ErrLocked: another controller holds the service's rollout.
	ErrLocked = errors.New("rollout: another controller holds the rollout")
	// ErrRolledBack: a gate failed and the lane was rolled back.
	ErrRolledBack = errors.New("rollout: rolled back")
)

// State is a rollout as it is kept in KV.
type State struct {
	Plan   Plan   `json:"plan"`
	Status Status `json:"status"`
	// Step is the index of the current step; StepApplied says its weight has been set, at
	// StepStarted. Elapsed is the hold time a paused step had already spent.
	Step        int       `json:"step"`
	StepApplied bool      `json:"step_applied"`
	StepStarted time.Time `json:"step_started"`
	Elapsed     Duration  `json:"elapsed,omitempty"`
	// Readings are the last gate readings and Verdict what they said.
	Readings *Readings `json:"readings,omitempty"`
	Verdict  string    `json:"verdict,omitempty"`
	// Unknowns counts the readings in a row that were unknown, since UnknownSince; the step's hold
	// time does not run meanwhile.
	Unknowns     int       `json:"unknowns,omitempty"`
	UnknownSince time.Time `json:"unknown_since,omitzero"`
	// Failures counts the readings in a row that failed a gate (Plan.FailureLimit).
	Failures int `json:"failures,omitempty"`
	// Message is the last event ("step 2 of 5: weight 25%", "gate ... failed").
	Message    string    `json:"message"`
	Controller string    `json:"controller,omitempty"`
	Started    time.Time `json:"started"`
	Updated    time.Time `json:"updated"`
}

// TimeLeft is how long the current step still holds before it may go on.
func (s *State) TimeLeft(now time.Time) time.Duration {
	if s.Step >= len(s.Plan.Steps) {
		return 0
	}
	hold := time.Duration(s.Plan.Steps[s.Step].Hold)
	spent := time.Duration(s.Elapsed)
	if s.Status == StatusRunning && s.StepApplied {
		if !s.UnknownSince.IsZero() {
			now = s.UnknownSince // the hold time stopped when the gates became unknown
		}
		spent = now.Sub(s.StepStarted)
	}
	return max(hold-spent, 0)
}

// StepName describes the current step: "step 2 of 5: weight 25%".
func (s *State) StepName() string {
	if s.Step >= len(s.Plan.Steps) {
		return "done"
	}
	w := s.Plan.Steps[s.Step].Weight
	what := "weight " + w.String() + "%"
	switch {
	case s.Plan.Steps[s.Step].Pause != nil:
		what = "approval, at weight " + w.String() + "%"
	case w == 0:
		what = "test traffic only"
	}
	return fmt.Sprintf("step %d of %d: %s", s.Step+1, len(s.Plan.Steps), what)
}

// Rollouts starts, controls and reports the rollouts of services, through a Registrar. Safe for
// concurrent use.
type Rollouts struct {
	r        *registrar.Registrar
	kv       *api.KV
	notified func(kind string, n *Notification, err error)
}

// New returns Rollouts working through r (its Consul client, KV prefix and operator name).
func New(r *registrar.Registrar) *Rollouts {
	return &Rollouts{r: r, kv: r.Client().KV()}
}

// WithNotified returns Rollouts that call f after posting each notification of an outcome an
// operator made (Abort, PromoteNow), with the error if it failed.
func (x *Rollouts) WithNotified(f func(kind string, n *Notification, err error)) *Rollouts {
	c := *x
	c.notified = f
	return &c
}

func (x *Rollouts) key(service string) string {
	return x.r.KVPrefix() + "/services/" + service + "/rollout"
}

// activePrefix is the KV folder that lists the rollouts a controller drives: one key per service,
// set when a rollout starts, removed by the controller once it has ended.
func (x *Rollouts) activePrefix() string { return x.r.KVPrefix() + "/rollouts/" }

func (x *Rollouts) activeKey(service string) string { return x.activePrefix() + service }

// leaderKey is the lock the rollout controllers' leader holds.
func (x *Rollouts) leaderKey() string { return x.r.KVPrefix() + "/rollout-controller.leader" }

// Get returns a service's rollout, ErrNoRollout when there is none.
func (x *Rollouts) Get(ctx context.Context, service string) (*State, error) {
	st, _, err := x.load(ctx, service)
	return st, err
}

func (x *Rollouts) load(ctx context.Context, service string) (*State, uint64, error) {
	pair, _, err := x.kv.Get(x.key(service), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("reading the rollout of %s: %w", service, err)
	}
	if pair == nil {
		return nil, 0, fmt.Errorf("%w %s", ErrNoRollout, service)
	}
	var st State
	if err := json.Unmarshal(pair.Value, &st); err != nil {
		return nil, 0, fmt.Errorf("the rollout of %s in KV key %s is not valid: %w", service, pair.Key, err)
	}
	return &st, pair.ModifyIndex, nil
}

// Following is a look at a rollout from outside: its state and the controller that holds it.
type Following struct {
	State *State
	// Controller names the controller that holds the rollout's lock; Held is false when none does.
	Controller string
	Held       bool
	// Index is the index to wait from next.
	Index uint64
}

// Follow waits until the rollout's state or its lock changes after index (at most 5 minutes) and
// returns both; index 0 returns at once.
func (x *Rollouts) Follow(ctx context.Context, service string, index uint64) (*Following, error) {
	// The state's key is a prefix of its lock's: one blocking query sees both.
	pairs, meta, err := x.kv.List(x.key(service), (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("reading the rollout of %s: %w", service, err)
	}
	f := &Following{Index: meta.LastIndex}
	if f.Index < index {
		f.Index = 0
	}
	for _, p := range pairs {
		switch p.Key {
		case x.key(service):
			var st State
			if err := json.Unmarshal(p.Value, &st); err != nil {
				return nil, fmt.Errorf("the rollout of %s in KV key %s is not valid: %w", service, p.Key, err)
			}
			f.State = &st
		case x.key(service) + ".lock":
			f.Controller, f.Held = string(p.Value), p.Session != ""
		}
	}
	if f.State == nil {
		return nil, fmt.Errorf("%w %s", ErrNoRollout, service)
	}
	return f, nil
}

// save writes the state with check-and-set; false when someone wrote it since index.
func (x *Rollouts) save(ctx context.Context, st *State, index uint64) (bool, error) {
	st.Updated = time.Now().UTC()
	body, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	ok, _, err := x.kv.CAS(&api.KVPair{Key: x.key(st.Plan.Service), Value: body, ModifyIndex: index}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("writing the rollout of %s: %w", st.Plan.Service, err)
	}
	return ok, nil
}

// update applies f to the current state and saves it, retrying on concurrent writes.
func (x *Rollouts) update(ctx context.Context, service string, f func(*State) error) (*State, error) {
	for {
		st, index, err := x.load(ctx, service)
		if err != nil {
			return nil, err
		}
		if err := f(st); err != nil {
			return st, err
		}
		ok, err := x.save(ctx, st, index)
		if err != nil || ok {
			return st, err
		}
	}
}

// Start records a new rollout of plan's lane. It refuses while another rollout of the service is
// under way, and a plan whose queries Prometheus refuses (Plan.CheckQueries). The lane must exist.
// Run then walks it.
func (x *Rollouts) Start(ctx context.Context, plan *Plan) (*State, error) {
	if err := plan.Validate(); err != nil {
		return nil, err
	}
	// A query Prometheus refuses would hold every step until unknown_limit: refuse the plan now.
	if err := plan.CheckQueries(ctx, &Prometheus{URL: plan.Prometheus}); err != nil {
		return nil, err
	}
	status, err := x.r.Status(ctx, plan.Service, gray.Options{})
	if err != nil {
		return nil, err
	}
	found := false
	for _, l := range status.Lanes {
		found = found || l.Name == plan.Lane
	}
	if !found {
		return nil, fmt.Errorf("%w: service %s has no lane %q", registrar.ErrNotFound, plan.Service, plan.Lane)
	}
	old, index, err := x.load(ctx, plan.Service)
	switch {
	case errors.Is(err, ErrNoRollout):
		index = 0
	case err != nil:
		return nil, err
	case !old.Status.Done():
		return old, fmt.Errorf("%w: %s of lane %s is %s (%s); abort it first", ErrRunning, plan.Service, old.Plan.Lane, old.Status, old.StepName())
	}
	now := time.Now().UTC()
	st := &State{Plan: *plan, Status: StatusRunning, Started: now, Updated: now, Message: "started by " + x.r.Operator()}
	body, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	// The state, and the entry that tells the rollout controllers there is a rollout to drive, in
	// one transaction.
	ok, _, _, err := x.r.Client().Txn().Txn(api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: x.key(plan.Service), Value: body, Index: index}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: x.activeKey(plan.Service), Value: []byte(plan.Lane)}},
	}, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("recording the rollout of %s: %w", plan.Service, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: another rollout of %s was started at the same time", ErrRunning, plan.Service)
	}
	return st, nil
}

// Pause stops a running rollout where it is: no gate readings, no step change; the step's hold time
// is kept for Resume.
func (x *Rollouts) Pause(ctx context.Context, service string) (*State, error) {
	return x.update(ctx, service, func(st *State) error {
		if st.Status != StatusRunning {
			return fmt.Errorf("the rollout of %s is %s, not running", service, st.Status)
		}
		if st.StepApplied {
			st.Elapsed = Duration(time.Since(st.StepStarted))
		}
		st.Status, st.Message = StatusPaused, "paused by "+x.r.Operator()
		return nil
	})
}

// Resume continues a paused rollout, counting the hold time the step had already spent.
func (x *Rollouts) Resume(ctx context.Context, service string) (*State, error) {
	return x.update(ctx, service, func(st *State) error {
		if st.Status != StatusPaused {
			return fmt.Errorf("the rollout of %s is %s, not paused", service, st.Status)
		}
		if st.StepApplied {
			st.StepStarted = time.Now().UTC().Add(-time.Duration(st.Elapsed))
		}
		st.Status, st.Elapsed, st.Message = StatusRunning, 0, "resumed by "+x.r.Operator()
		return nil
	})
}

// Abort ends a rollout and rolls the lane back to test traffic only (weight 0).
func (x *Rollouts) Abort(ctx context.Context, service string) (*State, error) {
	return x.end(ctx, service, StatusAborted, func(st *State) (registrar.Op, string) {
		return registrar.Rollback{Lane: st.Plan.Lane}, "rollout aborted by " + x.r.Operator() + " at " + st.StepName()
	})
}

// PromoteNow ends a rollout by promoting the lane at once.
func (x *Rollouts) PromoteNow(ctx context.Context, service string) (*State, error) {
	return x.end(ctx, service, StatusPromoted, func(st *State) (registrar.Op, string) {
		return registrar.Promote{Lane: st.Plan.Lane}, "rollout promoted at once by " + x.r.Operator() + " at " + st.StepName()
	})
}

func (x *Rollouts) end(ctx context.Context, service string, status Status, change func(*State) (registrar.Op, string)) (*State, error) {
	st, index, err := x.load(ctx, service)
	if err != nil {
		return nil, err
	}
	if st.Status.Done() {
		return st, fmt.Errorf("the rollout of %s has ended already (%s)", service, st.Status)
	}
	// The rollout ends first, then the lane changes: a controller's step, decided from the state
	// before, is then refused (its commit requires that state), so the operator's word wins.
	op, reason := change(st)
	st.Status, st.Message = status, reason
	for {
		ok, err := x.save(ctx, st, index)
		if err != nil {
			return st, err
		}
		if ok {
			break
		}
		// A controller wrote meanwhile: end the rollout over its write.
		fresh, freshIndex, err := x.load(ctx, service)
		if err != nil {
			return st, err
		}
		if fresh.Status.Done() {
			return fresh, fmt.Errorf("the rollout of %s has ended already (%s)", service, fresh.Status)
		}
		op, reason = change(fresh)
		fresh.Status, fresh.Message = status, reason
		st, index = fresh, freshIndex
	}
	if err := x.commit(ctx, service, op, reason, nil, 0); err != nil {
		return st, fmt.Errorf("the rollout of %s is %s, but %s was not committed (run it by hand): %w", service, status, op, err)
	}
	// Told after the change is made, each post within its timeout: a webhook never delays it.
	notices := newNotifier(nil, x.notified)
	notices.send(NotifyOutcome, st)
	notices.close()
	return st, nil
}

// commit makes a registrar change with a reason for the history, planning again after a conflict.
//
// A controller passes next, the rollout state it decided, and index, the index of the state it
// decided from: the change is recorded and next written in one transaction, only if the state is
// still at index, so that an abort, a pause or a promotion written meanwhile wins (the change fails
// with registrar.ErrPrecondition), and a controller that stops right after the change can neither
// make it again nor forget it. An operator's command passes nil: no such condition.
func (x *Rollouts) commit(ctx context.Context, service string, op registrar.Op, reason string, next *State, index uint64) error {
	var writes []registrar.KVWrite
	if next != nil {
		next.Updated = time.Now().UTC()
		body, err := json.Marshal(next)
		if err != nil {
			return err
		}
		writes = append(writes, registrar.KVWrite{Key: x.key(service), Index: index, Value: body})
	}
	for attempt := 0; ; attempt++ {
		plan, err := x.r.Plan(ctx, service, op)
		if errors.Is(err, registrar.ErrUnchanged) {
			// Nothing to change (a rollback while the lane takes test traffic only): the history
			// still says what the rollout did and why.
			return x.r.RecordEvent(ctx, service, op.String()+" (no change)", reason, writes...)
		}
		if err != nil {
			return err
		}
		plan.Reason = reason
		for _, w := range writes {
			plan.RequireAndWrite(w)
		}
		_, err = x.r.Commit(ctx, plan)
		if !errors.Is(err, registrar.ErrConflict) || attempt == 4 {
			return err
		}
	}
}

// Controller names the controller that holds a service's rollout lock, and whether one does.
func (x *Rollouts) Controller(ctx context.Context, service string) (string, bool, error) {
	pair, _, err := x.kv.Get(x.key(service)+".lock", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil || pair.Session == "" {
		return "", false, err
	}
	return string(pair.Value), true, nil
}
