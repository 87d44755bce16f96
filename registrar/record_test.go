package registrar_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

const blueGreenSpec = `
- {name: pay, id: pay-blue-1, port: 7001, meta: {bluegreen: blue}}
- {name: pay, id: pay-blue-2, port: 7002, meta: {bluegreen: blue}}
- {name: pay, id: pay-green-1, port: 7003, meta: {bluegreen: green, match: [{header: [{key: x-test, value_match: green}]}]}}
- {name: pay, id: pay-green-2, port: 7004, meta: {bluegreen: green, match: [{header: [{key: x-test, value_match: green}]}]}}
`

func applySpec(t *testing.T, r *registrar.Registrar, text string) {
	t.Helper()
	specs, err := registrar.ParseSpecs("spec.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// record reads a service's recorded gray state straight from KV.
func record(t *testing.T, r *registrar.Registrar, service string) map[string]map[string]string {
	t.Helper()
	pair, _, err := r.Client().KV().Get("graylane/services/"+service+"/state", &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair == nil {
		t.Fatalf("reading the record of %s: %v", service, err)
	}
	var st struct {
		Instances map[string]map[string]string `json:"instances"`
	}
	if err := json.Unmarshal(pair.Value, &st); err != nil {
		t.Fatal(err)
	}
	return st.Instances
}

// agentGray returns the gray keys of each instance as its agent holds them.
func agentGray(t *testing.T, r *registrar.Registrar) map[string]map[string]string {
	t.Helper()
	services, err := r.Client().Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for id, svc := range services {
		g := map[string]string{}
		for k, v := range svc.Meta {
			if gray.IsMetaKey(k) {
				g[k] = v
			}
		}
		out[id] = g
	}
	return out
}

// TestConcurrentOperatorsNeverLoseAnUpdate: rounds of 24 commands of mixed kinds on one service, each
// from its own operator, all at once. Every command lands, changes nothing, or fails with a
// conflict; afterwards replaying the history gives the record, the last entry's after is in the
// record, and every instance holds the record, in its agent and in the catalog.
func TestConcurrentOperatorsNeverLoseAnUpdate(t *testing.T) {
	a := consultest.Start(t)
	admin := newRegistrar(t, a, "admin")
	applySpec(t, admin, blueGreenSpec)
	const rounds, commands = 10, 24
	operators := make([]*registrar.Registrar, commands)
	for i := range operators {
		operators[i] = newRegistrar(t, a, fmt.Sprintf("op-%d", i))
	}
	ops := func(i int) registrar.Op {
		switch i % 4 {
		case 0:
			return registrar.SetWeight{Lane: "green", Weight: gray.Weight(rand.IntN(100) * 100)}
		case 1:
			rule := gray.Rule{Header: []gray.HeaderMatch{{Key: "x-test", ValueMatch: gray.ValueMatch{Exact: fmt.Sprintf("green-%d", rand.IntN(1000))}}}}
			return registrar.SetMatch{Lane: "green", Match: []gray.Rule{rule}}
		case 2:
			return registrar.Promote{Lane: "green"}
		default:
			return registrar.Rollback{Lane: "green"}
		}
	}
	landed, conflicts := 0, 0
	for round := 0; round < rounds; round++ {
		var wg sync.WaitGroup
		errs := make([]error, commands)
		for i := 0; i < commands; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Spread the starts over a few milliseconds, so that some commands plan after
				// others committed and their applies overlap.
				time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
				_, errs[i] = operators[i].Do(context.Background(), "pay", ops(i+round))
			}()
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case err == nil:
				landed++
			case errors.Is(err, registrar.ErrConflict):
				conflicts++
			case errors.Is(err, registrar.ErrUnchanged):
			default:
				t.Fatalf("round %d, command %d (%s): neither landed nor a conflict: %v", round, i, ops(i+round), err)
			}
		}

		rec := record(t, admin, "pay")
		hist, err := admin.History(context.Background(), "pay")
		if err != nil {
			t.Fatal(err)
		}
		replayed := map[string]map[string]string{}
		for _, h := range hist {
			if h.Outcome != registrar.OutcomeApplied && h.Action != "apply" {
				t.Fatalf("round %d: %q by %s has outcome %q", round, h.Action, h.Who, h.Outcome)
			}
			maps.Copy(replayed, h.After)
		}
		last := hist[len(hist)-1]
		for id, after := range last.After {
			if !maps.Equal(rec[id], after) {
				t.Fatalf("round %d: the last change %q by %s says %s is %v, the record holds %v", round, last.Action, last.Who, id, after, rec[id])
			}
		}
		for id, want := range rec {
			if !maps.Equal(replayed[id], want) {
				t.Fatalf("round %d: replaying the history gives %s = %v, the record holds %v", round, id, replayed[id], want)
			}
		}
		held := agentGray(t, admin)
		for id, want := range rec {
			if !maps.Equal(held[id], want) {
				t.Fatalf("round %d: agent holds %s = %v, the record %v", round, id, held[id], want)
			}
		}
		waitFor(t, 5*time.Second, "the catalog to hold the record", func() bool {
			st, err := admin.Status(context.Background(), "pay", gray.Options{})
			return err == nil && len(st.Drift) == 0
		})
	}
	if landed < rounds {
		t.Fatalf("only %d commands landed over %d rounds", landed, rounds)
	}
	t.Logf("%d rounds of %d concurrent commands: %d landed, %d conflicts, the rest changed nothing", rounds, commands, landed, conflicts)
}

// TestPermissionDenied: with ACLs on, a read-only token and a token that may write KV but not the
// service are refused before anything is recorded, with an error that says so (not a conflict).
func TestPermissionDenied(t *testing.T) {
	a := consultest.StartACL(t)
	admin := aclAdmin(t, a)
	applyFile(t, admin, "testdata/bservice.yaml")
	readAll := `key_prefix "" { policy = "read" }
		service_prefix "" { policy = "read" }
		node_prefix "" { policy = "read" }`
	for _, tc := range []struct {
		name, rules string
		lacks       []string
	}{
		{"read-only token", readAll, []string{"key write on graylane/services/bservice/state", "service write on bservice"}},
		{"token that may write KV but not the service", readAll + "\n" + `key_prefix "graylane/" { policy = "write" }`, []string{"service write on bservice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := registrar.NewConfig(a.HTTPAddr)
			cfg.Token = aclToken(t, admin, tc.rules).SecretID
			r, err := registrar.New(cfg, registrar.WithOperator("mallory"))
			if err != nil {
				t.Fatal(err)
			}
			before, _ := admin.History(context.Background(), "bservice")
			_, err = r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
			var denied *registrar.PermissionError
			if !errors.As(err, &denied) || !errors.Is(err, registrar.ErrPermission) || errors.Is(err, registrar.ErrConflict) {
				t.Fatalf("got %v, want a PermissionError", err)
			}
			for _, lack := range tc.lacks {
				if !strings.Contains(err.Error(), lack) {
					t.Errorf("the error does not say the token lacks %q: %v", lack, err)
				}
			}
			if strings.Contains(err.Error(), "run the command again") || strings.Contains(err.Error(), cfg.Token) {
				t.Errorf("the error advises a retry or shows the token: %v", err)
			}
			after, _ := admin.History(context.Background(), "bservice")
			if len(after) != len(before) {
				t.Fatalf("a refused change wrote history: %d entries, then %d", len(before), len(after))
			}
			if rec := record(t, admin, "bservice"); rec["bservice-canary-1"] != nil {
				t.Fatalf("a refused change was recorded: %v", rec)
			}
		})
	}
	// The same change with the management token lands.
	do(t, admin, "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
	if w := grayOf(t, admin, "bservice")["bservice-canary-1"].Weight; w != 2500 {
		t.Fatalf("weight %s", w)
	}
}

// TestHiddenInstances: a token that may write the service and its record but not read the nodes it
// runs on gets an answer from Consul without the instances. Listing them and changing the service
// fail with an error that says so, instead of working on a service without instances, and nothing
// is recorded.
func TestHiddenInstances(t *testing.T) {
	a := consultest.StartACL(t)
	admin := aclAdmin(t, a)
	applyFile(t, admin, "testdata/bservice.yaml")
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = aclToken(t, admin, `service_prefix "" { policy = "write" }
		key_prefix "graylane/" { policy = "write" }`).SecretID
	r, err := registrar.New(cfg, registrar.WithOperator("mallory"))
	if err != nil {
		t.Fatal(err)
	}
	var hidden *watch.HiddenInstancesError
	if _, _, err := r.Instances(context.Background(), "bservice"); !errors.As(err, &hidden) || !errors.Is(err, registrar.ErrPermission) {
		t.Fatalf("listing instances: %v, want a HiddenInstancesError", err)
	}
	before, _ := admin.History(context.Background(), "bservice")
	_, err = r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
	if !errors.As(err, &hidden) || !strings.Contains(err.Error(), "node read") {
		t.Fatalf("a change: %v, want a HiddenInstancesError", err)
	}
	if after, _ := admin.History(context.Background(), "bservice"); len(after) != len(before) {
		t.Fatalf("a change that saw no instance wrote history: %d entries, then %d", len(before), len(after))
	}
}

// TestRecordedButNotApplied: an instance whose agent cannot be reached keeps its old meta; the change
// stays recorded, its history entry says it was not applied and why, status shows the drift, and
// reconcile repairs it once the agent is reachable.
func TestRecordedButNotApplied(t *testing.T) {
	a := consultest.Start(t)
	good := newRegistrar(t, a, "alice")
	applyFile(t, good, "testdata/bservice.yaml")
	cut, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator("bob"),
		registrar.WithAgentAddress(func(*api.Node) string { return "127.0.0.1:1" }))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cut.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
	var applyErr *registrar.ApplyError
	if !errors.As(err, &applyErr) || applyErr.Failed["bservice-canary-1"] == nil {
		t.Fatalf("got %v, want an ApplyError for bservice-canary-1", err)
	}
	hist, _ := good.History(context.Background(), "bservice")
	last := hist[len(hist)-1]
	if last.Action != "weight canary 25" || !strings.HasPrefix(last.Outcome, registrar.OutcomeNotApplied+": ") || !strings.Contains(last.Outcome, "bservice-canary-1") {
		t.Fatalf("last history entry %q: outcome %q", last.Action, last.Outcome)
	}
	st, err := good.Status(context.Background(), "bservice", gray.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) != 1 || st.Drift[0].Instance != "bservice-canary-1" || st.Drift[0].Recorded["weight"] != "25" || st.Drift[0].Actual["weight"] != "10" {
		t.Fatalf("drift: %+v", st.Drift)
	}
	res, err := good.Reconcile(context.Background(), "bservice")
	if err != nil || len(res.Rewritten) != 1 || res.Rewritten[0] != "bservice-canary-1" {
		t.Fatalf("reconcile: %+v, %v", res, err)
	}
	if w := grayOf(t, good, "bservice")["bservice-canary-1"].Weight; w != 2500 {
		t.Fatalf("weight %s after reconcile", w)
	}
	if res, err := good.Reconcile(context.Background(), "bservice"); err != nil || len(res.Rewritten) != 0 {
		t.Fatalf("a second reconcile rewrote %v (%v)", res.Rewritten, err)
	}
}

// TestNoOpChangeRecordsNothing: a change that asks for the current state writes no history and
// re-registers nothing.
func TestNoOpChangeRecordsNothing(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 500})
	before, _ := r.History(context.Background(), "bservice")
	_, err := r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 500})
	if !errors.Is(err, registrar.ErrUnchanged) {
		t.Fatalf("got %v, want ErrUnchanged", err)
	}
	after, _ := r.History(context.Background(), "bservice")
	if len(after) != len(before) {
		t.Fatalf("a no-op change wrote history")
	}
}

// TestServiceOptionsReachTheWatcher: options set with SetServiceOptions are recorded with history and
// rebuild the watcher's snapshots; a view's override wins field by field.
func TestServiceOptionsReachTheWatcher(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	w, err := watch.New(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	v := w.Service("bservice")
	over := w.ServiceWith("bservice", gray.Options{StickyHeader: "x-override"})
	<-v.Ready()
	<-over.Ready()
	// The article's canary takes 10 %: find a user the sticky header sends there.
	user := ""
	for i := 0; user == ""; i++ {
		if gray.Bucket("bservice", fmt.Sprint("u", i)) < 1000 {
			user = fmt.Sprint("u", i)
		}
	}
	req := &gray.StaticRequest{Headers: map[string]string{"userid": user, "x-override": user}}
	decideN := func(view *watch.ServiceView) map[string]int {
		lanes := map[string]int{}
		for range 200 {
			lanes[view.Snapshot().Decide(req).Lane]++
		}
		return lanes
	}
	if lanes := decideN(v); lanes["canary"] == 200 {
		t.Fatalf("without a sticky key the user always went to the canary: %v", lanes)
	}
	changed := v.Changed()
	if _, err := r.SetServiceOptions(context.Background(), "bservice", gray.Options{StickyHeader: "userid"}); err != nil {
		t.Fatal(err)
	}
	<-changed
	if got := w.Options("bservice").Load(); got.StickyHeader != "userid" {
		t.Fatalf("options view: %+v", got)
	}
	if lanes := decideN(v); lanes["canary"] != 200 {
		t.Fatalf("with the service's sticky header the user must always go to the canary: %v", lanes)
	}
	if lanes := decideN(over); lanes["canary"] != 200 {
		t.Fatalf("the override's sticky header: %v", lanes)
	}
	req.Headers["x-override"] = "someone-else-entirely"
	if lanes := decideN(over); lanes["canary"] == 200 && gray.Bucket("bservice", "someone-else-entirely") >= 1000 {
		t.Fatalf("the override did not win: %v", lanes)
	}
	if _, err := r.SetServiceOptions(context.Background(), "bservice", gray.Options{StickyHeader: "userid"}); !errors.Is(err, registrar.ErrUnchanged) {
		t.Fatalf("setting the same options again: %v", err)
	}
	if _, err := r.SetServiceOptions(context.Background(), "bservice", gray.Options{StickyHeader: "user id"}); err == nil || !strings.Contains(err.Error(), "sticky_header") {
		t.Fatalf("a bad header name: %v", err)
	}
	hist, _ := r.History(context.Background(), "bservice")
	last := hist[len(hist)-1]
	if last.Action != "options sticky_header=userid" || last.OptionsAfter == nil || last.OptionsAfter.StickyHeader != "userid" {
		t.Fatalf("history: %+v", last)
	}
}

// TestMatchThenWeightKeepsBoth: the reproduction. A match change and, 2 ms later, a weight
// change on the same lane from another operator: both land, and Consul keeps the match.
func TestMatchThenWeightKeepsBoth(t *testing.T) {
	a := consultest.Start(t)
	alice, bob := newRegistrar(t, a, "alice"), newRegistrar(t, a, "bob")
	applyFile(t, alice, "testdata/bservice.yaml")
	for round := range 30 {
		value := fmt.Sprintf("new-%d", round)
		rule := gray.Rule{Header: []gray.HeaderMatch{{Key: "userid", ValueMatch: gray.ValueMatch{Exact: value}}}}
		weight := gray.Weight(100 + round%2*100)
		var wg sync.WaitGroup
		var errMatch, errWeight error
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, errMatch = alice.Do(context.Background(), "bservice", registrar.SetMatch{Lane: "canary", Match: []gray.Rule{rule}})
		}()
		go func() {
			defer wg.Done()
			time.Sleep(2 * time.Millisecond)
			for { // an operator whose change conflicted runs it again, as the error says
				_, errWeight = bob.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: weight})
				if !errors.Is(errWeight, registrar.ErrConflict) {
					return
				}
			}
		}()
		wg.Wait()
		if errMatch != nil && !errors.Is(errMatch, registrar.ErrConflict) {
			t.Fatal(errMatch)
		}
		if errWeight != nil && !errors.Is(errWeight, registrar.ErrUnchanged) {
			t.Fatal(errWeight)
		}
		held := agentGray(t, alice)["bservice-canary-1"]
		if errMatch == nil && !strings.Contains(held["match"], value) {
			t.Fatalf("round %d: the match change landed but the instance holds %v", round, held)
		}
		if held["weight"] != weight.String() {
			t.Fatalf("round %d: the weight change landed but the instance holds %v", round, held)
		}
		if rec := record(t, alice, "bservice")["bservice-canary-1"]; !maps.Equal(rec, held) {
			t.Fatalf("round %d: record %v, instance %v", round, rec, held)
		}
	}
}

// TestBrokenLaneNamesItsInstances: a change to a lane whose instances all have broken meta says which
// instances and what is wrong, not only that there is no such lane.
func TestBrokenLaneNamesItsInstances(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	registerRaw(t, a, &api.AgentServiceRegistration{ID: "bservice-canary-1", Name: "bservice", Port: 9003,
		Meta: map[string]string{"canary": "maybe", "weight": "10"}})
	_, err := r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 500})
	if !errors.Is(err, registrar.ErrNotFound) || !strings.Contains(err.Error(), `instance "bservice-canary-1"`) || !strings.Contains(err.Error(), `meta key "canary"`) {
		t.Fatalf("got %v", err)
	}
	// Status lists the broken instance's problem even when it is not passing.
	registerRaw(t, a, &api.AgentServiceRegistration{ID: "bservice-canary-1", Name: "bservice", Port: 9003,
		Meta: map[string]string{"canary": "maybe"}, Check: &api.AgentServiceCheck{TTL: "30s", Status: api.HealthCritical}})
	st, err := r.Status(context.Background(), "bservice", gray.Options{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range st.Problems {
		found = found || strings.Contains(p.Error(), "bservice-canary-1") && strings.Contains(p.Error(), "critical")
	}
	if !found {
		t.Fatalf("status problems do not name the critical broken instance: %v", st.Problems)
	}
}

// TestCorruptHistoryEntryHidesNothingElse: an entry that does not decode is named, and the others are
// still returned.
func TestCorruptHistoryEntryHidesNothingElse(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 500})
	if _, err := r.Client().KV().Put(&api.KVPair{Key: "graylane/services/bservice/history/00000000000000000001-bad", Value: []byte("{half")}, nil); err != nil {
		t.Fatal(err)
	}
	hist, err := r.History(context.Background(), "bservice")
	var bad *registrar.HistoryError
	if !errors.As(err, &bad) || !strings.Contains(err.Error(), "history/00000000000000000001-bad") {
		t.Fatalf("got %v", err)
	}
	if len(hist) != 2 || hist[1].Action != "weight canary 5" {
		t.Fatalf("the readable entries: %+v", hist)
	}
}

// TestStoppedMidApply: the operator's process stops while the change is being applied (here: its
// context ends while an agent hangs). The change is recorded, its history entry still says
// "recorded" (not "applied"), status shows the drift, and reconcile finishes the job.
func TestStoppedMidApply(t *testing.T) {
	a := consultest.Start(t)
	good := newRegistrar(t, a, "alice")
	applyFile(t, good, "testdata/bservice.yaml")
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	go func() { // accept and never answer
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	stuck, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator("bob"),
		registrar.WithAgentAddress(func(*api.Node) string { return hang.Addr().String() }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := stuck.Do(ctx, "bservice", registrar.SetWeight{Lane: "canary", Weight: 3000}); err == nil {
		t.Fatal("a change whose apply never finished reported success")
	}
	hist, _ := good.History(context.Background(), "bservice")
	if last := hist[len(hist)-1]; last.Action != "weight canary 30" || last.Outcome != registrar.OutcomeRecorded {
		t.Fatalf("last entry %q has outcome %q, want %q", last.Action, last.Outcome, registrar.OutcomeRecorded)
	}
	st, _ := good.Status(context.Background(), "bservice", gray.Options{})
	if len(st.Drift) != 1 || st.Drift[0].Instance != "bservice-canary-1" {
		t.Fatalf("drift: %+v", st.Drift)
	}
	if _, err := good.Reconcile(context.Background(), "bservice"); err != nil {
		t.Fatal(err)
	}
	if w := grayOf(t, good, "bservice")["bservice-canary-1"].Weight; w != 3000 {
		t.Fatalf("weight %s after reconcile", w)
	}
}
