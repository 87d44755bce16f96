package registrar

// The record and how it reaches the instances.
//
// A service's desired gray state (the gray meta of each instance a graylane change touched, and the
// service's decision options) lives in one KV key, graylane/services/<service>/state; a change of the
// options also writes them to graylane/options/<service> in the same transaction, for the watchers,
// which follow every service's options there with one query. The state is the only thing a change
// is planned from: catalog meta lags it and two applies that race can land out of order, so
// planning from the catalog loses updates. A change is committed as one KV transaction:
// check-and-set on the record against the index it was planned from, plus a history entry that
// names that index (Base), so history read in Base order is the order of the commits.
//
// After the commit the record is applied: every instance that has a recorded state is
// re-registered through its own agent when its meta differs. Each pass reads the record, writes it,
// then reads the record's index again; when another change was committed meanwhile, the pass runs
// again with the newer record. Whoever applied an old record therefore notices and writes the newer
// one after it, so the instances converge to the latest record however the applies interleave.
//
// Before anything is recorded the token's permissions are checked (Consul's ACL authorize
// endpoint), so a token that may write the record but not the service is refused with nothing
// written. If applying fails anyway (an agent away, a process stopped mid-apply) the history entry
// says so: its Outcome is "recorded" until the apply finished, then "applied" or "not applied: ...".
// `graylane status` shows the drift and `graylane reconcile` (Reconcile) repairs it.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
)

func (r *Registrar) stateKey(service string) string {
	return record.StateKey(r.prefix, service)
}

func (r *Registrar) historyPrefix(service string) string {
	return r.prefix + "/services/" + service + "/history/"
}

// readState returns the service's desired state and the KV index to check-and-set against (0 when
// the key does not exist yet).
func (r *Registrar) readState(ctx context.Context, service string) (record.State, uint64, error) {
	st := record.State{Instances: map[string]map[string]string{}}
	pair, _, err := r.client.KV().Get(r.stateKey(service), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return st, 0, r.wrap(err, "reading the gray state of %s", service)
	}
	if pair == nil {
		return st, 0, nil
	}
	if err := json.Unmarshal(pair.Value, &st); err != nil {
		return st, 0, fmt.Errorf("the gray state of %s in KV key %s is not valid JSON (%v); repair or delete the key", service, pair.Key, err)
	}
	if st.Instances == nil {
		st.Instances = map[string]map[string]string{}
	}
	return st, pair.ModifyIndex, nil
}

// current reads a service's recorded state (with its check-and-set index) and its instances, each
// with the gray meta the record gives it: changes are planned from the record, never from catalog
// meta, which may still show an older change.
func (r *Registrar) current(ctx context.Context, service string) (record.State, uint64, []Instance, error) {
	st, index, err := r.readState(ctx, service)
	if err != nil {
		return st, 0, nil, err
	}
	instances, _, err := r.Instances(ctx, service)
	for i := range instances {
		if rec, ok := st.Instances[instances[i].ID]; ok {
			instances[i].Gray, instances[i].GrayErr = gray.ParseInstanceMeta(instances[i].ID, rec)
		}
	}
	return st, index, instances, err
}

// DesiredMeta returns the gray meta an instance should register with: the state recorded by graylane
// changes when there is one, else spec. A Kratos app calls it before registering, so that changes
// made with graylane survive its restarts.
func (r *Registrar) DesiredMeta(ctx context.Context, service, id string, spec gray.Meta) (gray.Meta, error) {
	st, _, err := r.readState(ctx, service)
	if err != nil {
		return spec, err
	}
	rec, ok := st.Instances[id]
	if !ok {
		return spec, nil
	}
	m, err := gray.ParseMeta(rec)
	if err != nil {
		return spec, fmt.Errorf("the recorded gray state of %s/%s does not decode: %w", service, id, err)
	}
	return m, nil
}

// ServiceOptions returns the decision options the service keeps in Consul (tag key, sticky key);
// the zero Options when none were set.
func (r *Registrar) ServiceOptions(ctx context.Context, service string) (gray.Options, error) {
	st, _, err := r.readState(ctx, service)
	if err != nil || st.Options == nil {
		return gray.Options{}, err
	}
	return *st.Options, nil
}

// SetServiceOptions records the service's decision options, which every enforcer reads so that the
// gateway and the services put one user in one lane. It is a recorded change like the others
// (check-and-set, history). ErrUnchanged when the options are already so.
func (r *Registrar) SetServiceOptions(ctx context.Context, service string, o gray.Options) (*Result, error) {
	action := "options " + describeOptions(o)
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("%s on %s: %w", action, service, err)
	}
	st, index, instances, err := r.current(ctx, service)
	if err != nil {
		return nil, err
	}
	if len(instances) == 0 {
		return nil, fmt.Errorf("%w: service %s has no instances", ErrNotFound, service)
	}
	var before gray.Options
	if st.Options != nil {
		before = *st.Options
	}
	if before == o {
		return nil, fmt.Errorf("%s on %s: %w", action, service, ErrUnchanged)
	}
	plan := &Plan{Service: service, Action: action, stateIndex: index, state: st.Clone(), instances: map[string]Instance{},
		optionsBefore: &before, optionsAfter: &o}
	plan.state.Options = &o
	if o == (gray.Options{}) {
		plan.state.Options = nil
	}
	return r.Commit(ctx, plan)
}

func describeOptions(o gray.Options) string {
	var parts []string
	for _, f := range [][2]string{{"tag_key", o.TagKey}, {"sticky_header", o.StickyHeader}, {"sticky_cookie", o.StickyCookie}, {"fallback", string(o.Fallback)}} {
		if f[1] != "" {
			parts = append(parts, f[0]+"="+f[1])
		}
	}
	if len(parts) == 0 {
		return "(defaults)"
	}
	return strings.Join(parts, " ")
}

// RecordEvent writes a history entry that changes nothing: something that happened to the service
// and belongs in its history (a rollout that was rolled back while its lane took test traffic only,
// so that the rollback had nothing to change). It is ordered with the changes by check-and-set like
// them, and retried on conflicts.
//
// Each write is made with check-and-set in the same transaction (Plan.RequireAndWrite); the event is
// then recorded only if every write's key is unchanged, else RecordEvent fails with ErrPrecondition.
func (r *Registrar) RecordEvent(ctx context.Context, service, action, reason string, writes ...KVWrite) error {
	for attempt := 0; ; attempt++ {
		st, index, err := r.readState(ctx, service)
		if err != nil {
			return err
		}
		p := &Plan{Service: service, Action: action, Reason: reason, stateIndex: index, state: st.Clone(), instances: map[string]Instance{}}
		for _, w := range writes {
			p.RequireAndWrite(w)
		}
		if err := r.authorize(ctx, p); err != nil {
			return err
		}
		entry, err := r.record(ctx, p)
		if errors.Is(err, ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return err
		}
		r.setOutcome(ctx, entry, OutcomeApplied)
		return nil
	}
}

// History outcomes.
const (
	// OutcomeRecorded: the change is committed and applying it had not finished (still running, or
	// the process stopped mid-apply). `graylane status` shows whether the instances hold it.
	OutcomeRecorded = "recorded"
	// OutcomeApplied: every instance holds the latest record once the change was applied.
	OutcomeApplied = "applied"
	// OutcomeNotApplied starts the outcome of a change that was recorded but could not be applied to
	// every instance; the reason follows after ": ".
	OutcomeNotApplied = "not applied"
)

// HistoryEntry is one recorded change.
type HistoryEntry struct {
	Time    time.Time `json:"time"`
	Who     string    `json:"who"`
	Service string    `json:"service"`
	Action  string    `json:"action"`
	// Before and After map instance IDs to their gray meta keys, for the instances the change touched.
	Before map[string]map[string]string `json:"before"`
	After  map[string]map[string]string `json:"after"`
	// OptionsBefore and OptionsAfter are set on a change of the service's decision options.
	OptionsBefore *gray.Options `json:"options_before,omitempty"`
	OptionsAfter  *gray.Options `json:"options_after,omitempty"`
	// Base is the KV index of the record this change replaced (0 for the first): history in Base
	// order is the order in which the changes were committed, whatever the operators' clocks say.
	Base uint64 `json:"base"`
	// Outcome is OutcomeRecorded, OutcomeApplied or "not applied: <reason>"; empty in entries written
	// before graylane recorded outcomes.
	Outcome string `json:"outcome,omitempty"`
	// Reason says why the change was made, when its maker said (a rollout's gate readings).
	Reason string `json:"reason,omitempty"`
}

// HistoryError reports history entries that could not be read. History returns the readable ones
// with it.
type HistoryError struct {
	Service string
	// Unreadable maps KV keys to what is wrong with them.
	Unreadable map[string]error
}

func (e *HistoryError) Error() string {
	keys := slices.Sorted(maps.Keys(e.Unreadable))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %v", k, e.Unreadable[k])
	}
	return fmt.Sprintf("registrar: %d history entries of %s are not valid and were left out (%s)", len(keys), e.Service, strings.Join(parts, "; "))
}

// History returns a service's recorded changes in the order they were committed. Entries that do not
// decode are left out and reported in a *HistoryError returned with the others.
func (r *Registrar) History(ctx context.Context, service string) ([]HistoryEntry, error) {
	pairs, _, err := r.client.KV().List(r.historyPrefix(service), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, r.wrap(err, "reading the history of %s", service)
	}
	out := make([]HistoryEntry, 0, len(pairs))
	var bad *HistoryError
	for _, p := range pairs {
		var h HistoryEntry
		if err := json.Unmarshal(p.Value, &h); err != nil {
			if bad == nil {
				bad = &HistoryError{Service: service, Unreadable: map[string]error{}}
			}
			bad.Unreadable[p.Key] = err
			continue
		}
		out = append(out, h)
	}
	slices.SortStableFunc(out, func(a, b HistoryEntry) int {
		return cmp.Or(cmp.Compare(a.Base, b.Base), a.Time.Compare(b.Time))
	})
	if bad != nil {
		return out, bad
	}
	return out, nil
}

// ConflictError reports a change that lost a check-and-set race: someone changed the service after
// the change was planned. Nothing of the change was recorded or applied.
type ConflictError struct {
	Service string
	Action  string
	// Last is the most recent recorded change, when it can be read.
	Last *HistoryEntry
}

func (e *ConflictError) Error() string {
	msg := fmt.Sprintf("registrar: %s on %s not applied: the service's gray state changed since it was read", e.Action, e.Service)
	if e.Last != nil {
		msg += fmt.Sprintf(" (%q by %s at %s)", e.Last.Action, e.Last.Who, e.Last.Time.Format(time.RFC3339))
	}
	return msg + "; check `graylane status` and run the command again"
}

func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// PermissionError reports a change the token may not make. Nothing was recorded; running the
// command again with the same token will not help.
type PermissionError struct {
	Service string
	Action  string
	// Missing lists the permissions the token lacks ("key write on graylane/services/x/state",
	// "service write on x"), when Consul said which.
	Missing []string
	// Err is Consul's answer.
	Err error
}

func (e *PermissionError) Error() string {
	msg := fmt.Sprintf("registrar: %s on %s refused: permission denied", e.Action, e.Service)
	if len(e.Missing) > 0 {
		msg += ": the token lacks " + strings.Join(e.Missing, " and ")
	} else if e.Err != nil {
		msg += " (" + e.Err.Error() + ")"
	}
	return msg + "; nothing was changed; use a token with these permissions"
}

func (e *PermissionError) Is(target error) bool { return target == ErrPermission }

func (e *PermissionError) Unwrap() error { return e.Err }

// InstanceChange is the change a plan makes to one instance.
type InstanceChange struct {
	ID     string
	Before gray.Meta
	After  gray.Meta
}

// Plan is a change computed against the recorded state of a service, not yet applied. Commit applies
// it, unless the service changed in between.
type Plan struct {
	Service string
	Action  string
	Changes []InstanceChange
	// Notes explain side effects (another lane's weight changed to keep blue/green unambiguous).
	Notes []string
	// Effect, when set, says in a sentence what the change does for this service, where that
	// depends on the service (a promotion makes a colour live, or makes a lane stable).
	Effect string
	// Reason, when set before Commit, is recorded in the history entry: why the change was made
	// (a rollout's gate readings, say).
	Reason string

	stateIndex                  uint64
	state                       record.State
	instances                   map[string]Instance
	deregister                  bool
	optionsBefore, optionsAfter *gray.Options
	requires                    []api.KVTxnOp
}

// KVWrite is a KV value written with check-and-set in the same transaction as a change: Index is
// the key's ModifyIndex when it was read (0: the key must not exist).
type KVWrite struct {
	Key   string
	Index uint64
	Value []byte
}

// RequireAndWrite makes Commit record the plan only if w.Key is still at w.Index, and write w.Value
// there in the same transaction: a controller records its own state with the change it decided, so
// that a controller that stops between the two can neither lose the change nor make it twice.
// Commit fails with ErrPrecondition when the key changed meanwhile.
func (p *Plan) RequireAndWrite(w KVWrite) {
	p.requires = append(p.requires, api.KVTxnOp{Verb: api.KVCAS, Key: w.Key, Index: w.Index, Value: w.Value})
}

// Result is what Commit did.
type Result struct {
	Plan *Plan
	// Applied lists the instances re-registered with their new meta, or deregistered.
	Applied []string
	// Outcome is the outcome recorded in the change's history entry.
	Outcome string
}

// ApplyError reports instances whose recorded meta could not be written through their agent. The
// change stays recorded, its history entry says "not applied", and `graylane reconcile` (Reconcile)
// or the instance's restart (it reads the recorded state) repairs it.
type ApplyError struct {
	Failed map[string]error
}

func (e *ApplyError) Error() string {
	ids := slices.Sorted(maps.Keys(e.Failed))
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s: %v", id, e.Failed[id])
	}
	return "registrar: change recorded but not applied to " + strings.Join(parts, "; ") +
		"; `graylane reconcile` applies it once the cause is fixed"
}

// Commit checks the token's permissions, records the plan in KV with check-and-set (with a history
// entry, in one transaction) and applies the latest record to the service's instances. It returns a
// *ConflictError when the service's state changed since the plan was made, a *PermissionError when
// the token may not make the change (nothing is written then), and an *ApplyError when the change
// was recorded but some instance could not be written.
func (r *Registrar) Commit(ctx context.Context, p *Plan) (*Result, error) {
	if err := r.authorize(ctx, p); err != nil {
		return nil, err
	}
	entry, err := r.record(ctx, p)
	if err != nil {
		return nil, err
	}
	res := &Result{Plan: p}
	var applyErr error
	if p.deregister {
		for _, c := range p.Changes {
			inst := p.instances[c.ID]
			if err := r.deregister(ctx, &inst); err != nil && consulclient.HTTPStatus(err) != http.StatusNotFound {
				applyErr = &ApplyError{Failed: map[string]error{c.ID: err}}
				break
			}
			res.Applied = append(res.Applied, c.ID)
		}
	}
	if applyErr == nil && (len(p.Changes) > 0 || p.deregister) {
		rec, err := r.Reconcile(ctx, p.Service)
		applyErr = err
		if rec != nil && !p.deregister {
			for _, c := range p.Changes {
				if _, failed := rec.Failed[c.ID]; !failed {
					res.Applied = append(res.Applied, c.ID)
				}
			}
		}
	}
	res.Outcome = OutcomeApplied
	if applyErr != nil {
		res.Outcome = OutcomeNotApplied + ": " + applyErr.Error()
	}
	r.setOutcome(ctx, entry, res.Outcome)
	return res, applyErr
}

// recordedEntry is a history entry as written, to set its outcome afterwards.
type recordedEntry struct {
	key   string
	index uint64
	entry HistoryEntry
}

// record writes the plan's desired state with check-and-set and its history entry (outcome
// "recorded"), in one transaction.
func (r *Registrar) record(ctx context.Context, p *Plan) (*recordedEntry, error) {
	entry := HistoryEntry{Time: r.now().UTC(), Who: r.operator, Service: p.Service, Action: p.Action,
		Before: map[string]map[string]string{}, After: map[string]map[string]string{},
		OptionsBefore: p.optionsBefore, OptionsAfter: p.optionsAfter, Base: p.stateIndex, Outcome: OutcomeRecorded,
		Reason: p.Reason}
	for _, c := range p.Changes {
		entry.Before[c.ID], _ = c.Before.Encode()
		if !p.deregister {
			entry.After[c.ID], _ = c.After.Encode()
		}
	}
	// The options key goes with the service's first state, and with the first change to a state
	// recorded before the options folder existed, so that the watchers find every recorded service's
	// options in the folder and need not read its state.
	writeOptions := p.optionsAfter != nil || !p.state.OptionsKeyed
	p.state.OptionsKeyed = true
	stateJSON, err := json.Marshal(p.state)
	if err != nil {
		return nil, err
	}
	historyJSON, err := json.Marshal(entry)
	if err != nil {
		return nil, err
	}
	// Two operators may commit in the same nanosecond on different machines: a random suffix keeps
	// their entries apart (only one of them passes the check-and-set anyway).
	key := fmt.Sprintf("%s%020d-%08x", r.historyPrefix(p.Service), entry.Time.UnixNano(), rand.Uint32())
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: r.stateKey(p.Service), Value: stateJSON, Index: p.stateIndex}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: historyJSON}},
	}
	for i := range p.requires {
		ops = append(ops, &api.TxnOp{KV: &p.requires[i]})
	}
	if writeOptions {
		// The watchers follow every service's options in one folder (record.OptionsKey): its key
		// changes with the state, in the same transaction. It comes last, so that the indexes of
		// the operations above stay what the errors below read.
		op, err := r.optionsOp(p)
		if err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}
	ok, resp, _, err := r.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if consulclient.IsPermissionDenied(err) {
			return nil, &PermissionError{Service: p.Service, Action: p.Action, Err: consulclient.Redact(err, r.cfg.Token)}
		}
		return nil, r.wrap(err, "recording %s on %s", p.Action, p.Service)
	}
	if !ok {
		var msgs []string
		for _, e := range resp.Errors {
			if strings.Contains(e.What, "Permission denied") || strings.Contains(e.What, "ACL not found") {
				return nil, &PermissionError{Service: p.Service, Action: p.Action, Err: errors.New(e.What)}
			}
			msgs = append(msgs, e.What)
		}
		if len(resp.Errors) > 0 && resp.Errors[0].OpIndex >= 2 {
			return nil, fmt.Errorf("%w: %s on %s: %s", ErrPrecondition, p.Action, p.Service, resp.Errors[0].What)
		}
		if len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0 {
			conflict := &ConflictError{Service: p.Service, Action: p.Action}
			if hist, _ := r.History(ctx, p.Service); len(hist) > 0 {
				conflict.Last = &hist[len(hist)-1]
			}
			return nil, conflict
		}
		return nil, fmt.Errorf("registrar: recording %s on %s: transaction refused: %s", p.Action, p.Service, strings.Join(msgs, "; "))
	}
	rec := &recordedEntry{key: key, entry: entry}
	if resp != nil && len(resp.Results) > 1 && resp.Results[1].KV != nil {
		rec.index = resp.Results[1].KV.ModifyIndex
	}
	return rec, nil
}

// optionsOp is the write of the service's options key that copies the plan's new options. The
// defaults are written too ("{}"): a recorded service with no key is one whose options a watcher
// must look for in its state.
func (r *Registrar) optionsOp(p *Plan) (*api.TxnOp, error) {
	key := record.OptionsKey(r.prefix, p.Service)
	var opts gray.Options
	if p.state.Options != nil {
		opts = *p.state.Options
	}
	body, err := json.Marshal(opts)
	if err != nil {
		return nil, err
	}
	return &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: body}}, nil
}

// setOutcome writes the outcome into a change's history entry. If that fails the entry keeps
// OutcomeRecorded, which is still true.
func (r *Registrar) setOutcome(ctx context.Context, rec *recordedEntry, outcome string) {
	rec.entry.Outcome = outcome
	body, err := json.Marshal(rec.entry)
	if err != nil {
		return
	}
	_, _, _ = r.client.KV().CAS(&api.KVPair{Key: rec.key, Value: body, ModifyIndex: rec.index}, (&api.WriteOptions{}).WithContext(ctx))
}

// ReconcileResult is what Reconcile did.
type ReconcileResult struct {
	// Rewritten lists the instances whose meta was written; InSync those that held the record already.
	Rewritten []string
	InSync    []string
	// Failed maps instances that could not be written to the reason.
	Failed map[string]error
	// Passes counts the passes: more than one when other changes were committed meanwhile.
	Passes int
}

// maxReconcilePasses bounds how often Reconcile starts over because the record moved under it; each
// pass writes the newest record, so the last writer always follows the last commit.
const maxReconcilePasses = 20

// Reconcile writes the recorded gray state into every instance of the service that has one, through
// the agent that owns it, skipping instances that hold it already. When the record changes while it
// runs, it starts over with the newer record, so the instances end at the latest record. It returns
// an *ApplyError when some instance could not be written.
func (r *Registrar) Reconcile(ctx context.Context, service string) (*ReconcileResult, error) {
	res := &ReconcileResult{}
	for {
		res.Passes++
		st, index, err := r.readState(ctx, service)
		if err != nil {
			return res, err
		}
		instances, _, err := r.Instances(ctx, service)
		if err != nil {
			return res, err
		}
		res.Rewritten, res.InSync, res.Failed = nil, nil, map[string]error{}
		for i := range instances {
			inst := &instances[i]
			rec, ok := st.Instances[inst.ID]
			if !ok {
				continue
			}
			want, err := gray.ParseInstanceMeta(inst.ID, rec)
			if err != nil {
				res.Failed[inst.ID] = fmt.Errorf("the recorded state does not decode: %w", err)
				continue
			}
			wrote, err := r.reregister(ctx, inst, want)
			switch {
			case err != nil:
				res.Failed[inst.ID] = err
			case wrote:
				res.Rewritten = append(res.Rewritten, inst.ID)
			default:
				res.InSync = append(res.InSync, inst.ID)
			}
		}
		_, now, err := r.readState(ctx, service)
		if err != nil {
			return res, err
		}
		if now == index || res.Passes >= maxReconcilePasses {
			break
		}
	}
	if len(res.Failed) > 0 {
		return res, &ApplyError{Failed: res.Failed}
	}
	return res, nil
}

// Drift is an instance whose gray meta in the catalog differs from the recorded state.
type Drift struct {
	Instance string
	// Recorded and Actual hold the gray meta keys of the record and of the catalog.
	Recorded map[string]string
	Actual   map[string]string
}

// drift compares the record with the instances' catalog meta.
func drift(st record.State, instances []Instance) []Drift {
	var out []Drift
	for _, inst := range instances {
		rec, ok := st.Instances[inst.ID]
		if !ok {
			continue
		}
		actual := map[string]string{}
		for k, v := range inst.Meta {
			if gray.IsMetaKey(k) {
				actual[k] = v
			}
		}
		if !maps.Equal(rec, actual) {
			out = append(out, Drift{Instance: inst.ID, Recorded: rec, Actual: actual})
		}
	}
	return out
}

// authorize asks Consul whether the token may make the change: write the record and the history,
// and (when instances change) write the service through its agents. Without ACLs everything is
// allowed. A check that cannot be made is not an error: the change then fails where Consul refuses
// it, and its history entry says so.
func (r *Registrar) authorize(ctx context.Context, p *Plan) error {
	reqs := []aclRequest{
		{Resource: "key", Segment: r.stateKey(p.Service), Access: "write"},
		{Resource: "key", Segment: r.historyPrefix(p.Service), Access: "write"},
	}
	if p.optionsAfter != nil || !p.state.OptionsKeyed {
		reqs = append(reqs, aclRequest{Resource: "key", Segment: record.OptionsKey(r.prefix, p.Service), Access: "write"})
	}
	if len(p.Changes) > 0 {
		reqs = append(reqs, aclRequest{Resource: "service", Segment: p.Service, Access: "write"})
	}
	refused, missing := r.askACL(ctx, reqs)
	if refused != nil || len(missing) > 0 {
		return &PermissionError{Service: p.Service, Action: p.Action, Missing: missing, Err: refused}
	}
	return nil
}

// aclRequest is one question to Consul's ACL authorize endpoint.
type aclRequest struct {
	Resource, Segment, Access string
	Allow                     bool `json:",omitempty"`
}

// askACL asks Consul's ACL authorize endpoint the questions. refused is Consul's refusal of the
// token itself; missing lists the permissions it denies. A check that cannot be made (ACLs
// disabled, an agent too old to say, a unix socket, no answer) yields neither.
func (r *Registrar) askACL(ctx context.Context, reqs []aclRequest) (refused error, missing []string) {
	body, _ := json.Marshal(reqs)
	scheme, addr := r.cfg.Scheme, r.cfg.Address
	if s, rest, ok := strings.Cut(addr, "://"); ok {
		scheme, addr = s, rest
	}
	if scheme == "unix" || addr == "" {
		return nil, nil
	}
	if scheme == "" {
		scheme = "http"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+addr+"/v1/internal/acl/authorize", bytes.NewReader(body))
	if err != nil {
		return nil, nil
	}
	token := r.cfg.Token
	if token == "" && r.cfg.TokenFile != "" {
		if b, err := os.ReadFile(r.cfg.TokenFile); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := r.httpClient.Do(req)
	if err != nil {
		return nil, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusForbidden || bytes.Contains(data, []byte("ACL not found")):
		return fmt.Errorf("Consul: %s", strings.TrimSpace(string(data))), nil
	default:
		return nil, nil // ACLs disabled ("ACL support disabled"), or an agent too old to say
	}
	var answers []aclRequest
	if json.Unmarshal(data, &answers) != nil {
		return nil, nil
	}
	for _, a := range answers {
		if !a.Allow {
			missing = append(missing, fmt.Sprintf("%s %s on %s", a.Resource, a.Access, a.Segment))
		}
	}
	return nil, missing
}
