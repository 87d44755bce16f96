package registrar

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// ResetGray drops the gray state recorded by earlier graylane changes for the applied instances,
	// so that their spec's gray meta counts again. Without it, recorded state wins over the spec.
	ResetGray bool
}

// Applied reports one registered instance.
type Applied struct {
	Service string
	ID      string
	Gray    gray.Meta
	// Kept is set when recorded state from an earlier graylane change won over the spec's gray meta.
	Kept bool
}

// Apply registers (or updates) instances from specs through the configured agent. State recorded by
// earlier graylane changes wins over a spec's gray meta unless opts.ResetGray is set. Each service's
// apply is recorded in its history with check-and-set.
func (r *Registrar) Apply(ctx context.Context, specs []Spec, opts ApplyOptions) ([]Applied, error) {
	byService := map[string][]Spec{}
	for _, s := range specs {
		byService[s.Name] = append(byService[s.Name], s)
	}
	var out []Applied
	for _, service := range slices.Sorted(maps.Keys(byService)) {
		applied, err := r.applyService(ctx, service, byService[service], opts)
		out = append(out, applied...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func (r *Registrar) applyService(ctx context.Context, service string, specs []Spec, opts ApplyOptions) ([]Applied, error) {
	st, index, current, err := r.current(ctx, service)
	if err != nil {
		return nil, err
	}
	plan := &Plan{Service: service, Action: "apply", stateIndex: index, state: st.Clone(), instances: map[string]Instance{}}
	var applied []Applied
	var regs []*api.AgentServiceRegistration
	for _, s := range specs {
		if err := r.checkOwnID(ctx, s); err != nil {
			return nil, err
		}
		a := Applied{Service: service, ID: s.ID, Gray: s.Gray}
		if rec, ok := st.Instances[s.ID]; ok {
			if opts.ResetGray {
				delete(plan.state.Instances, s.ID)
			} else if m, err := gray.ParseMeta(rec); err == nil {
				a.Gray, a.Kept = m, true
			}
		}
		spec := s
		spec.Gray = a.Gray
		reg, err := spec.Registration()
		if err != nil {
			return nil, &SpecError{File: s.File, Line: s.Line, Instance: s.ID, Field: "meta", Err: err}
		}
		before := gray.Meta{}
		for _, inst := range current {
			if inst.ID == s.ID {
				before = inst.Gray
			}
		}
		plan.Changes = append(plan.Changes, InstanceChange{ID: s.ID, Before: before, After: a.Gray})
		regs = append(regs, reg)
		applied = append(applied, a)
	}
	if err := checkTotalWeight(applyPlanner(service, current, applied)); err != nil {
		return nil, fmt.Errorf("apply on %s: %w", service, err)
	}
	if opts.ResetGray {
		plan.Action = "apply --reset-gray"
	}
	// Check permissions, record (check-and-set), then register through the configured agent, which
	// owns what it registers, and apply the latest record: a change committed meanwhile wins over
	// the state this apply read.
	if err := r.authorize(ctx, plan); err != nil {
		return nil, err
	}
	entry, err := r.record(ctx, plan)
	if err != nil {
		return nil, err
	}
	var applyErr error
	for _, reg := range regs {
		if err := r.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
			applyErr = &ApplyError{Failed: map[string]error{reg.ID: r.wrap(err, "registering %s", reg.ID)}}
			break
		}
	}
	if applyErr == nil {
		_, applyErr = r.Reconcile(ctx, service)
	}
	outcome := OutcomeApplied
	if applyErr != nil {
		outcome = OutcomeNotApplied + ": " + applyErr.Error()
	}
	r.setOutcome(ctx, entry, outcome)
	return applied, applyErr
}

// checkOwnID refuses a spec whose instance ID the agent has registered for another service:
// registering it would silently move the instance from one service to the other.
func (r *Registrar) checkOwnID(ctx context.Context, s Spec) error {
	svc, _, err := r.client.Agent().Service(s.ID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || svc == nil || svc.Service == s.Name {
		return nil
	}
	return &SpecError{File: s.File, Line: s.Line, Instance: s.ID, Field: "id",
		Err: fmt.Errorf("instance %s is registered as service %s; deregister it first (graylane drain %s) or choose another id", s.ID, svc.Service, s.ID)}
}

// applyPlanner is the service as it will be after an apply: its current instances with the applied
// ones replaced or added.
func applyPlanner(service string, current []Instance, applied []Applied) *planner {
	p := &planner{service: service, after: map[string]gray.Meta{}}
	for _, a := range applied {
		p.after[a.ID] = a.Gray
	}
	p.instances = slices.Clone(current)
	for _, a := range applied {
		if !slices.ContainsFunc(current, func(i Instance) bool { return i.ID == a.ID }) {
			p.instances = append(p.instances, Instance{ID: a.ID, Service: service, Gray: a.Gray})
		}
	}
	return p
}

// DefaultDrainGrace is the grace period the graylane command and Register's drain use: graylane's
// watcher sees a change within milliseconds, Kratos' own consul watcher within about a second.
const DefaultDrainGrace = 3 * time.Second

// DrainOptions tune Drain.
type DrainOptions struct {
	// Service names the instance's service; found from the catalog when empty.
	Service string
	// Grace is how long clients get to see the change before the instance is deregistered; zero
	// deregisters as soon as the catalog serves the change. DefaultDrainGrace suits most clients.
	Grace time.Duration
	// Timeout bounds the wait for the catalog to show the drained meta. Default 30s.
	Timeout time.Duration
	// Keep leaves the drained instance registered.
	Keep bool
	// Committed, when set, is called once the drain is recorded and applied, before the wait.
	Committed func(*Result)
	// Idle, when set, is called once the catalog serves the drain, before the grace period: it
	// returns when the instance has stopped serving (its own request rate stayed at zero), or an
	// error, and then the instance is not deregistered.
	Idle func(ctx context.Context, inst *Instance) error
}

// Drain sets an instance's weight to 0 and marks it draining, so that no new traffic is chosen for
// it, waits until the catalog serves the change and clients have had the grace period to see it, then
// deregisters it.
func (r *Registrar) Drain(ctx context.Context, id string, o DrainOptions) (*Result, error) {
	if o.Grace < 0 || o.Timeout < 0 {
		return nil, fmt.Errorf("drain %s: grace %v and timeout %v must not be negative", id, o.Grace, o.Timeout)
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	service := o.Service
	if service == "" {
		var err error
		if service, err = r.serviceOf(ctx, id); err != nil {
			return nil, err
		}
	}
	st, index, instances, err := r.current(ctx, service)
	if err != nil {
		return nil, err
	}
	p := &planner{service: service, instances: instances, after: map[string]gray.Meta{}}
	found := false
	for _, inst := range instances {
		if inst.ID == id {
			found = true
			if inst.GrayErr != nil {
				// Draining must work on an instance whose gray meta is broken: start from no gray meta.
				p.after[id] = gray.Meta{}
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: service %s has no instance %s", ErrNotFound, service, id)
	}
	p.edit(id, func(m *gray.Meta) { m.Drain, m.Weight = true, 0 })
	plan, err := r.newPlan(service, "drain "+id, st, index, p)
	if err != nil {
		return nil, err
	}
	res := &Result{Plan: plan, Outcome: OutcomeApplied}
	if len(plan.Changes) > 0 { // else it is draining already: go on waiting and deregistering
		if res, err = r.Commit(ctx, plan); err != nil {
			return res, err
		}
	}
	if o.Committed != nil {
		o.Committed(res)
	}
	var drained *Instance
	if err := r.waitForMeta(ctx, service, id, o.Timeout, func(inst *Instance) bool {
		drained = inst
		return inst == nil || inst.Gray.Drain
	}); err != nil {
		return res, err
	}
	if o.Idle != nil && drained != nil {
		if err := o.Idle(ctx, drained); err != nil {
			return res, fmt.Errorf("drain %s: %w; it stays registered with weight 0 and the drain mark", id, err)
		}
	}
	if o.Keep {
		return res, nil
	}
	if o.Grace > 0 {
		t := time.NewTimer(o.Grace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	return r.forget(ctx, service, id)
}

// forget deregisters an instance and removes its recorded state, with a history entry.
func (r *Registrar) forget(ctx context.Context, service, id string) (*Result, error) {
	st, index, instances, err := r.current(ctx, service)
	if err != nil {
		return nil, err
	}
	plan := &Plan{Service: service, Action: "deregister " + id, stateIndex: index, deregister: true,
		state: st.Clone(), instances: map[string]Instance{}}
	delete(plan.state.Instances, id)
	for _, inst := range instances {
		if inst.ID == id {
			plan.instances[id] = inst
			plan.Changes = append(plan.Changes, InstanceChange{ID: id, Before: inst.Gray})
		}
	}
	return r.Commit(ctx, plan)
}

// waitForMeta waits, with blocking queries, until done holds for the instance as the health endpoint
// (what watchers read) serves it; inst is nil once the instance is gone.
func (r *Registrar) waitForMeta(ctx context.Context, service, id string, timeout time.Duration, done func(inst *Instance) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var index uint64
	for {
		entries, meta, err := r.client.Health().Service(service, "", false,
			(&api.QueryOptions{WaitIndex: index, WaitTime: timeout}).WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("the catalog did not show the change to %s within %v", id, timeout)
			}
			return r.wrap(err, "waiting for %s", id)
		}
		var found *Instance
		for _, e := range entries {
			if e.Service.ID == id {
				inst := instanceOf(e)
				found = &inst
			}
		}
		if done(found) {
			return nil
		}
		index = meta.LastIndex
	}
}

// serviceOf finds the service of an instance ID in the catalog.
func (r *Registrar) serviceOf(ctx context.Context, id string) (string, error) {
	services, _, err := r.client.Catalog().Services((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", r.wrap(err, "listing services")
	}
	for _, name := range slices.Sorted(maps.Keys(services)) {
		entries, _, err := r.client.Catalog().Service(name, "", (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return "", r.wrap(err, "listing instances of %s", name)
		}
		for _, e := range entries {
			if e.ServiceID == id {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("%w: no service has an instance %s", ErrNotFound, id)
}

// Status is a service's gray state as the data planes see it, beside the recorded state.
type Status struct {
	Service string
	// Instances are all registered instances, healthy or not, with their catalog meta.
	Instances []Instance
	// Options are the decision options the service keeps in Consul, with the caller's overrides.
	Options gray.Options
	// Lanes describe the decision over the passing instances, with traffic shares.
	Lanes []gray.LaneInfo
	// Problems are the snapshot's problems (meta that does not decode, lane conflicts), and the
	// meta problems of instances that are not passing, which the data planes do not see yet.
	Problems []error
	// Drift lists instances whose catalog meta differs from the recorded state; Reconcile repairs it.
	Drift []Drift
	// Snapshot is the decision snapshot over the passing instances, as a data plane builds it.
	Snapshot *gray.Snapshot[string]
}

// Status reads a service's instances and recorded state and builds the snapshot a data plane would
// build: with the service's options from Consul, overridden by the non-empty fields of override, and
// the segments its instances name.
func (r *Registrar) Status(ctx context.Context, service string, override gray.Options) (*Status, error) {
	st, _, err := r.readState(ctx, service)
	if err != nil {
		return nil, err
	}
	instances, _, err := r.Instances(ctx, service)
	if err != nil {
		return nil, err
	}
	if len(instances) == 0 {
		return nil, fmt.Errorf("%w: service %s has no instances", ErrNotFound, service)
	}
	var opts gray.Options
	if st.Options != nil {
		opts = *st.Options
	}
	opts = opts.Override(override)
	var passing []gray.Instance[string]
	var problems []error
	for _, inst := range instances {
		if inst.Health == api.HealthPassing {
			passing = append(passing, gray.Instance[string]{ID: inst.ID, Meta: inst.Meta, Value: inst.ID})
		} else if inst.GrayErr != nil {
			problems = append(problems, fmt.Errorf("%w (instance is %s)", inst.GrayErr, inst.Health))
		}
	}
	segments, segErrs := r.segmentsNamed(ctx, gray.ReferencedSegments(passing))
	problems = append(problems, segErrs...)
	snap := gray.NewSnapshot(service, passing, opts, gray.WithSegments(segments))
	return &Status{Service: service, Instances: instances, Options: opts, Lanes: snap.Lanes(),
		Problems: append(slices.Clone(snap.Problems()), problems...), Drift: drift(st, instances), Snapshot: snap}, nil
}

// segmentsNamed reads the named segments, as a data plane's watcher holds them. A segment that does
// not exist is left out (the snapshot reports the rules that name it); one that cannot be read is
// left out too, and reported.
func (r *Registrar) segmentsNamed(ctx context.Context, names []string) (*gray.Segments, []error) {
	if len(names) == 0 {
		return nil, nil
	}
	var segs []*gray.Segment
	var problems []error
	for _, name := range names {
		_, values, err := r.Segment(ctx, name)
		if errors.Is(err, ErrSegmentNotFound) {
			continue
		}
		if err == nil {
			var seg *gray.Segment
			if seg, err = gray.NewSegment(name, values); err == nil {
				segs = append(segs, seg)
				continue
			}
		}
		problems = append(problems, fmt.Errorf("reading segment %s: %w", name, err))
	}
	return gray.NewSegments(segs...), problems
}
