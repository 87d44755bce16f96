package registrar

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/record"
)

// An Op is a change to a service's gray meta: SetWeight, SetMatch, Promote, Rollback, Restore.
type Op interface {
	// String describes the change for the history ("weight canary 25").
	String() string
	apply(p *planner) error
}

// SetWeight gives every instance of a lane a weight.
type SetWeight struct {
	Lane   string
	Weight gray.Weight
}

// SetMatch gives every instance of a lane match rules (nil removes them).
type SetMatch struct {
	Lane  string
	Match []gray.Rule
}

// Promote makes a lane the base. A blue/green colour (in a service without stable instances) gets
// weight 100 and the other colours weight 0; any other lane's instances become stable (no canary
// flag, colour, lane name, weight or match rules).
type Promote struct{ Lane string }

// Rollback sends a lane back to matched test traffic only: weight 0, match rules kept. For a
// blue/green colour without match rules, the other colour gets weight 100, so that it alone is live.
type Rollback struct{ Lane string }

func (o SetWeight) String() string { return fmt.Sprintf("weight %s %s", o.Lane, o.Weight) }
func (o SetMatch) String() string {
	if len(o.Match) == 0 {
		return fmt.Sprintf("match %s (none)", o.Lane)
	}
	return fmt.Sprintf("match %s %s", o.Lane, gray.RulesJSON(o.Match))
}

// Restore sets instances' gray meta back to what a history entry says they had before it: the undo
// of that entry. Instances that are gone are left out, with a note.
type Restore struct {
	// Entry describes the entry undone, for the history ("promote canary at 10:02:03").
	Entry string
	Meta  map[string]gray.Meta
}

// UndoOf returns the Restore that undoes a history entry; an entry without instance changes (a
// change of options, an event) has nothing to undo.
func UndoOf(h HistoryEntry) (Restore, error) {
	if len(h.Before) == 0 {
		return Restore{}, fmt.Errorf("%w: the entry %q of %s changed no instance", ErrUnchanged, h.Action, h.Time.Format(time.DateTime))
	}
	o := Restore{Entry: fmt.Sprintf("%s at %s", h.Action, h.Time.UTC().Format(time.DateTime)), Meta: map[string]gray.Meta{}}
	for id, enc := range h.Before {
		m, err := gray.ParseInstanceMeta(id, enc)
		if err != nil {
			return Restore{}, fmt.Errorf("the entry %q records meta of %s that does not decode: %w", h.Action, id, err)
		}
		o.Meta[id] = m
	}
	return o, nil
}

func (o Restore) String() string { return "undo " + o.Entry }

func (o Restore) apply(p *planner) error {
	restored := 0
	for _, id := range slices.Sorted(maps.Keys(o.Meta)) {
		found := false
		for _, inst := range p.instances {
			found = found || inst.ID == id
		}
		if !found {
			p.notes = append(p.notes, id+" is gone: nothing to restore")
			continue
		}
		m := o.Meta[id]
		p.edit(id, func(g *gray.Meta) { *g = m })
		restored++
	}
	if restored == 0 {
		return fmt.Errorf("%w: none of the instances of %s is registered any more", ErrNotFound, o.Entry)
	}
	return nil
}

func (o Promote) String() string  { return "promote " + o.Lane }
func (o Rollback) String() string { return "rollback " + o.Lane }

// planner holds a service's instances while an Op edits their gray meta.
type planner struct {
	service   string
	instances []Instance
	after     map[string]gray.Meta
	notes     []string
	effect    string
}

// lane returns the IDs of the active, valid instances of a lane, in order.
func (p *planner) lane(name string) []string {
	var ids []string
	for _, inst := range p.instances {
		if inst.GrayErr == nil && !inst.Gray.Drain && inst.Gray.LaneName() == name {
			ids = append(ids, inst.ID)
		}
	}
	return ids
}

func (p *planner) requireLane(name string) ([]string, error) {
	ids := p.lane(name)
	if len(ids) == 0 {
		lanes := map[string]bool{}
		var broken []string
		for _, inst := range p.instances {
			if inst.GrayErr == nil && !inst.Gray.Drain {
				lanes[inst.Gray.LaneName()] = true
			}
			if inst.GrayErr != nil {
				broken = append(broken, inst.GrayErr.Error())
			}
		}
		err := fmt.Errorf("%w: service %s has no lane %q (lanes: %s)", ErrNotFound, p.service, name,
			strings.Join(slices.Sorted(maps.Keys(lanes)), ", "))
		if len(broken) > 0 {
			err = fmt.Errorf("%w; instances whose meta does not decode belong to no lane: %s; fix their meta with graylane apply --reset-gray, or drain them",
				err, strings.Join(broken, "; "))
		}
		return nil, err
	}
	return ids, nil
}

// meta returns the instance's gray meta as the plan has it so far.
func (p *planner) meta(id string) gray.Meta {
	if m, ok := p.after[id]; ok {
		return m
	}
	for _, inst := range p.instances {
		if inst.ID == id {
			return inst.Gray
		}
	}
	return gray.Meta{}
}

func (p *planner) edit(id string, f func(*gray.Meta)) {
	m := p.meta(id)
	m.Match = slices.Clone(m.Match)
	f(&m)
	p.after[id] = m
}

// pureBlueGreen reports whether the service has no stable instances and lane is a colour lane.
func (p *planner) pureBlueGreen(lane string) bool {
	if len(p.lane(gray.StableLane)) > 0 {
		return false
	}
	ids := p.lane(lane)
	return len(ids) > 0 && lane == string(p.meta(ids[0]).BlueGreen) && !p.meta(ids[0]).Canary
}

func (o SetWeight) apply(p *planner) error {
	if o.Lane == gray.StableLane {
		return errors.New("the stable lane takes what the other lanes leave; set the weight of a gray lane instead")
	}
	ids, err := p.requireLane(o.Lane)
	if err != nil {
		return err
	}
	for _, id := range ids {
		p.edit(id, func(m *gray.Meta) { m.Weight = o.Weight })
	}
	return nil
}

func (o SetMatch) apply(p *planner) error {
	if len(o.Match) > 0 {
		if err := (&gray.Meta{Match: o.Match}).Validate(); err != nil {
			return err
		}
	}
	ids, err := p.requireLane(o.Lane)
	if err != nil {
		return err
	}
	for _, id := range ids {
		p.edit(id, func(m *gray.Meta) { m.Match = slices.Clone(o.Match) })
	}
	return nil
}

func (o Promote) apply(p *planner) error {
	if o.Lane == gray.StableLane {
		return errors.New("the stable lane is the base already")
	}
	ids, err := p.requireLane(o.Lane)
	if err != nil {
		return err
	}
	if p.pureBlueGreen(o.Lane) {
		p.effect = fmt.Sprintf("%s has only blue and green instances: %s goes live (weight 100) and the other colour gets weight 0; "+
			"both stay registered, so `graylane rollback %s %s` switches back", p.service, o.Lane, p.service, o.Lane)
		for _, id := range ids {
			p.edit(id, func(m *gray.Meta) { m.Weight = gray.MaxWeight })
		}
		for _, other := range []gray.Color{gray.Blue, gray.Green} {
			if string(other) == o.Lane {
				continue
			}
			for _, id := range p.lane(string(other)) {
				if p.meta(id).Weight > 0 {
					p.edit(id, func(m *gray.Meta) { m.Weight = 0 })
					p.notes = append(p.notes, fmt.Sprintf("%s: weight 0 (%s is live now)", id, o.Lane))
				}
			}
		}
		return nil
	}
	p.effect = fmt.Sprintf("%s's instances of lane %s become stable (their gray keys are removed) and share production with "+
		"the stable instances it has now, until those are drained; there is no colour to switch back to", p.service, o.Lane)
	for _, id := range ids {
		p.edit(id, func(m *gray.Meta) {
			m.Canary, m.BlueGreen, m.Lane, m.Weight, m.Match, m.ExcludeSegments = false, "", "", 0, nil, nil
		})
	}
	p.notes = append(p.notes, fmt.Sprintf("%s stable now; drain the old stable instances when ready", strings.Join(ids, ", ")))
	return nil
}

func (o Rollback) apply(p *planner) error {
	if o.Lane == gray.StableLane {
		return errors.New("the stable lane is the base; roll back a gray lane instead")
	}
	ids, err := p.requireLane(o.Lane)
	if err != nil {
		return err
	}
	blueGreen := p.pureBlueGreen(o.Lane)
	hasMatch := len(p.meta(ids[0]).Match) > 0
	for _, id := range ids {
		p.edit(id, func(m *gray.Meta) { m.Weight = 0 })
	}
	if blueGreen && !hasMatch {
		// Both colours without weight or rules would share the base: make the other one live.
		for _, other := range []gray.Color{gray.Blue, gray.Green} {
			if string(other) == o.Lane {
				continue
			}
			for _, id := range p.lane(string(other)) {
				p.edit(id, func(m *gray.Meta) { m.Weight = gray.MaxWeight })
				p.notes = append(p.notes, fmt.Sprintf("%s: weight 100 (%s is live again)", id, other))
			}
		}
	}
	return nil
}

// Plan computes a change against the service's current instances and recorded state. Nothing is
// written: Commit applies the plan.
func (r *Registrar) Plan(ctx context.Context, service string, op Op) (*Plan, error) {
	st, index, instances, err := r.current(ctx, service)
	if err != nil {
		return nil, err
	}
	if len(instances) == 0 {
		return nil, fmt.Errorf("%w: service %s has no instances", ErrNotFound, service)
	}
	p := &planner{service: service, instances: instances, after: map[string]gray.Meta{}}
	if err := op.apply(p); err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, service, err)
	}
	if err := checkTotalWeight(p); err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, service, err)
	}
	plan, err := r.newPlan(service, op.String(), st, index, p)
	if err == nil && len(plan.Changes) == 0 {
		err = fmt.Errorf("%s on %s: %w", op, service, ErrUnchanged)
	}
	return plan, err
}

// newPlan turns a planner's edits into a Plan and the new desired state.
func (r *Registrar) newPlan(service, action string, st record.State, index uint64, p *planner) (*Plan, error) {
	plan := &Plan{Service: service, Action: action, Notes: p.notes, Effect: p.effect, stateIndex: index,
		state: st.Clone(), instances: map[string]Instance{}}
	for _, inst := range p.instances {
		plan.instances[inst.ID] = inst
		after, ok := p.after[inst.ID]
		if !ok {
			continue
		}
		enc, err := after.Encode()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", inst.ID, err)
		}
		if before, err := inst.Gray.Encode(); inst.GrayErr == nil && err == nil && maps.Equal(before, enc) {
			continue // no change for this instance
		}
		merged, err := after.Merge(inst.Meta)
		if err == nil {
			err = gray.CheckConsulLimits(merged)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", inst.ID, err)
		}
		plan.state.Instances[inst.ID] = enc
		plan.Changes = append(plan.Changes, InstanceChange{ID: inst.ID, Before: inst.Gray, After: after})
	}
	return plan, nil
}

// checkTotalWeight refuses changes that would make the gray lanes ask for more than 100 % in total.
func checkTotalWeight(p *planner) error {
	lanes := map[string]gray.Weight{}
	for _, inst := range p.instances {
		if inst.GrayErr != nil {
			continue
		}
		m := p.meta(inst.ID)
		lane := m.LaneName()
		if m.Drain || lane == gray.StableLane {
			continue
		}
		if w, seen := lanes[lane]; !seen || m.Weight < w {
			lanes[lane] = m.Weight
		}
	}
	total := 0
	var parts []string
	for _, lane := range slices.Sorted(maps.Keys(lanes)) {
		if w := lanes[lane]; w > 0 {
			total += int(w)
			parts = append(parts, fmt.Sprintf("%s %s%%", lane, w))
		}
	}
	if total > int(gray.MaxWeight) {
		return fmt.Errorf("the lanes would ask for more than 100%% in total (%s); lower another lane first", strings.Join(parts, ", "))
	}
	return nil
}

// Do plans and commits a change.
func (r *Registrar) Do(ctx context.Context, service string, op Op) (*Result, error) {
	p, err := r.Plan(ctx, service, op)
	if err != nil {
		return nil, err
	}
	return r.Commit(ctx, p)
}
