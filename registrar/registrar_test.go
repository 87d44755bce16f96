package registrar_test

import (
	"context"
	"errors"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

// TestApplyArticleSpec registers the source article's example and reads it back from the catalog.
func TestApplyArticleSpec(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")

	text, err := os.ReadFile("../gray/testdata/article.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var article struct{ Meta gray.Meta }
	if err := yaml.Unmarshal(text, &article); err != nil {
		t.Fatal(err)
	}
	instances, _, err := r.Instances(context.Background(), "bservice")
	if err != nil {
		t.Fatal(err)
	}
	if len(instances) != 3 {
		t.Fatalf("%d instances registered", len(instances))
	}
	for _, inst := range instances {
		if inst.ID != "bservice-canary-1" {
			continue
		}
		if !reflect.DeepEqual(inst.Gray, article.Meta) {
			t.Fatalf("catalog meta decodes to\n %+v\nwant\n %+v", inst.Gray, article.Meta)
		}
		if inst.Meta["version"] != "v2" || inst.Port != 9003 || inst.Tags[0] != "v2" {
			t.Fatalf("registration lost fields: %+v", inst)
		}
		return
	}
	t.Fatal("canary not registered")
}

// TestCanaryLifecycle: match-only canary, 5 %, 25 %, promote; history and shares at each step.
func TestCanaryLifecycle(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	applyFile(t, r, "testdata/bservice.yaml")
	do(t, r, "bservice", registrar.Rollback{Lane: "canary"}) // the article's first stage: test traffic only

	share := func() gray.Weight {
		st, err := r.Status(ctx, "bservice", gray.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range st.Lanes {
			if l.Name == "canary" {
				return l.Share
			}
		}
		return 0
	}
	if got := share(); got != 0 {
		t.Fatalf("after rollback the canary shares %s%%", got)
	}
	for _, w := range []gray.Weight{500, 2500} {
		do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: w})
		if got := grayOf(t, r, "bservice")["bservice-canary-1"].Weight; got != w {
			t.Fatalf("weight %s not applied: %s", w, got)
		}
		if got := share(); got != w {
			t.Fatalf("status share %s, want %s", got, w)
		}
	}
	res := do(t, r, "bservice", registrar.Promote{Lane: "canary"})
	if len(res.Applied) != 1 || len(res.Plan.Notes) != 1 {
		t.Fatalf("promote: %+v", res)
	}
	for id, m := range grayOf(t, r, "bservice") {
		if m.LaneName() != gray.StableLane {
			t.Fatalf("%s is in lane %s after promote", id, m.LaneName())
		}
	}
	hist, err := r.History(ctx, "bservice")
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, h := range hist {
		actions = append(actions, h.Action)
		if h.Who != "alice" || h.Time.IsZero() {
			t.Fatalf("history entry without who or when: %+v", h)
		}
	}
	want := []string{"apply", "rollback canary", "weight canary 5", "weight canary 25", "promote canary"}
	if !reflect.DeepEqual(actions, want) {
		t.Fatalf("history %v, want %v", actions, want)
	}
	last := hist[len(hist)-1]
	if last.Before["bservice-canary-1"]["weight"] != "25" || last.After["bservice-canary-1"]["canary"] != "" {
		t.Fatalf("promote entry before/after: %+v", last)
	}
}

// TestBlueGreenSwitchAndRollback: promote green, roll it back, and keep blue/green unambiguous.
func TestBlueGreenSwitchAndRollback(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "bob")
	specs, err := registrar.ParseSpecs("inline", []byte(`
- {name: pay, id: pay-blue-1, port: 1, meta: {bluegreen: blue}}
- {name: pay, id: pay-green-1, port: 2, meta: {bluegreen: green}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	decide := func() string {
		st, err := r.Status(context.Background(), "pay", gray.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return st.Snapshot.Decide(&gray.StaticRequest{}).Lane
	}
	do(t, r, "pay", registrar.Promote{Lane: "green"})
	if got := decide(); got != "green" {
		t.Fatalf("after promote green, traffic goes to %s", got)
	}
	res := do(t, r, "pay", registrar.Rollback{Lane: "green"})
	if got := decide(); got != "blue" {
		t.Fatalf("after rollback green, traffic goes to %s (notes %v)", got, res.Plan.Notes)
	}
	do(t, r, "pay", registrar.Promote{Lane: "green"})
	g := grayOf(t, r, "pay")
	if g["pay-green-1"].Weight != gray.MaxWeight || g["pay-blue-1"].Weight != 0 {
		t.Fatalf("promote green again: %+v", g)
	}
}

// TestConcurrentChangesConflict: two operators plan against the same state; the second commit is
// refused with a ConflictError naming the first, and nothing of it is applied.
func TestConcurrentChangesConflict(t *testing.T) {
	a := consultest.Start(t)
	alice, bob := newRegistrar(t, a, "alice"), newRegistrar(t, a, "bob")
	ctx := context.Background()
	applyFile(t, alice, "testdata/bservice.yaml")

	pa, err := alice.Plan(ctx, "bservice", registrar.SetWeight{Lane: "canary", Weight: 2000})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := bob.Plan(ctx, "bservice", registrar.SetWeight{Lane: "canary", Weight: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Commit(ctx, pa); err != nil {
		t.Fatal(err)
	}
	_, err = bob.Commit(ctx, pb)
	var conflict *registrar.ConflictError
	if !errors.As(err, &conflict) || !errors.Is(err, registrar.ErrConflict) {
		t.Fatalf("second commit: %v", err)
	}
	if conflict.Last == nil || conflict.Last.Who != "alice" || !strings.Contains(err.Error(), `"weight canary 20" by alice`) {
		t.Fatalf("conflict does not name the winning change: %v", err)
	}
	if w := grayOf(t, alice, "bservice")["bservice-canary-1"].Weight; w != 2000 {
		t.Fatalf("weight %s after the refused commit", w)
	}
	hist, _ := alice.History(ctx, "bservice")
	if len(hist) != 2 {
		t.Fatalf("history has %d entries, want apply and alice's change", len(hist))
	}
}

func TestChangesAreValidated(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	ctx := context.Background()
	for _, c := range []struct {
		op   registrar.Op
		says string
	}{
		{registrar.SetWeight{Lane: "nope", Weight: 1}, `has no lane "nope" (lanes: canary, stable)`},
		{registrar.SetWeight{Lane: "stable", Weight: 1}, "the stable lane takes what the other lanes leave"},
		{registrar.Promote{Lane: "stable"}, "the stable lane is the base already"},
		{registrar.SetMatch{Lane: "canary", Match: []gray.Rule{{}}}, "has no condition"},
	} {
		_, err := r.Do(ctx, "bservice", c.op)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an error saying %q", c.op, err, c.says)
		}
	}
	registerRaw(t, a, &api.AgentServiceRegistration{ID: "bservice-green-1", Name: "bservice", Meta: map[string]string{"bluegreen": "green", "weight": "90"}})
	_, err := r.Do(ctx, "bservice", registrar.SetWeight{Lane: "canary", Weight: 2000})
	if err == nil || !strings.Contains(err.Error(), "more than 100% in total (canary 20%, green 90%)") {
		t.Fatalf("overbooking: %v", err)
	}
}

// TestRecordedStateSurvivesReapply: a deploy pipeline that applies the spec again does not undo a
// weight set with graylane, unless asked to.
func TestRecordedStateSurvivesReapply(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 3000})
	applied := applyFile(t, r, "testdata/bservice.yaml")
	kept := false
	for _, ap := range applied {
		if ap.ID == "bservice-canary-1" {
			kept = ap.Kept
		}
	}
	if w := grayOf(t, r, "bservice")["bservice-canary-1"].Weight; w != 3000 || !kept {
		t.Fatalf("re-apply: weight %s, kept %v", w, kept)
	}
	specs, _ := registrar.LoadSpecs("testdata/bservice.yaml")
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{ResetGray: true}); err != nil {
		t.Fatal(err)
	}
	if w := grayOf(t, r, "bservice")["bservice-canary-1"].Weight; w != 1000 {
		t.Fatalf("apply --reset-gray: weight %s, want the spec's 10", w)
	}
}

// TestMetaChangeKeepsChecks: re-registering with new meta keeps the instance's checks and status.
func TestMetaChangeKeepsChecks(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	specs, err := registrar.ParseSpecs("inline", []byte(`
- {name: cs, id: cs-1, port: 1}
- {name: cs, id: cs-canary-1, port: 2, check: {ttl: 30s}, meta: {canary: true}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	agent := r.Client().Agent()
	if err := agent.UpdateTTL("graylane:cs-canary-1", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	do(t, r, "cs", registrar.SetWeight{Lane: "canary", Weight: 500})
	do(t, r, "cs", registrar.SetMatch{Lane: "canary", Match: []gray.Rule{{Method: []string{"GET"}}}})
	checks, err := agent.Checks()
	if err != nil {
		t.Fatal(err)
	}
	c := checks["graylane:cs-canary-1"]
	if c == nil || c.Status != api.HealthPassing {
		t.Fatalf("TTL check after meta changes: %+v", c)
	}
	if g := grayOf(t, r, "cs")["cs-canary-1"]; g.Weight != 500 || len(g.Match) != 1 {
		t.Fatalf("meta not changed: %+v", g)
	}
}

// TestTokenNeverInErrors: errors from an unreachable or refusing Consul never carry the token.
func TestTokenNeverInErrors(t *testing.T) {
	const secret = "8f2c1b7e-secret-token"
	t.Setenv("CONSUL_HTTP_TOKEN", secret)
	cfg := registrar.NewConfig("127.0.0.1:1")
	if cfg.Token != secret {
		t.Fatalf("CONSUL_HTTP_TOKEN not read: %q", cfg.Token)
	}
	r, err := registrar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, err := range []error{
		func() error { _, _, err := r.Instances(ctx, "x"); return err }(),
		func() error { _, err := r.Do(ctx, "x", registrar.SetWeight{Lane: "canary", Weight: 1}); return err }(),
		func() error { _, err := r.History(ctx, "x"); return err }(),
	} {
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Fatalf("error %v", err)
		}
	}
}

// TestApplyRefusesOverbookedWeights: lanes asking for more than 100 % in total are refused at
// registration, and nothing is registered.
func TestApplyRefusesOverbookedWeights(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	specs, err := registrar.ParseSpecs("s.yaml", []byte(`
- {name: ow, id: ow-1}
- {name: ow, id: ow-canary-1, meta: {canary: true, weight: 80}}
- {name: ow, id: ow-green-1, meta: {bluegreen: green, weight: 60}}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Apply(context.Background(), specs, registrar.ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "more than 100% in total (canary 80%, green 60%)") {
		t.Fatalf("apply: %v", err)
	}
	if instances, _, _ := r.Instances(context.Background(), "ow"); len(instances) != 0 {
		t.Fatalf("%d instances registered", len(instances))
	}
}

// TestConsulThatNeverAnswers: an address that accepts connections and never answers fails a
// command's request with a NoAnswerError naming the address, instead of hanging it; a blocking
// query is not cut short by the same timeout.
func TestConsulThatNeverAnswers(t *testing.T) {
	defer consulclient.SetAnswerTimeout(300 * time.Millisecond)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	r, err := registrar.New(registrar.NewConfig(ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err = r.Instances(ctx, "bservice")
	var na *registrar.NoAnswerError
	if !errors.As(err, &na) || na.Address != ln.Addr().String() || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Instances against a Consul that never answers: %v (%T), want a NoAnswerError naming %s", err, err, ln.Addr())
	}

	// A blocking query through the same client waits past the timeout.
	a := consultest.Start(t)
	w, err := watch.New(watch.NewConfig(a.HTTPAddr), watch.WithWaitTime(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	v := w.Service("bservice")
	<-v.Ready()
	time.Sleep(1500 * time.Millisecond) // a blocking query of 1 s, longer than the 300 ms timeout
	if st := v.State(); st.Stale || st.LastError != nil {
		t.Fatalf("a blocking query was cut short by the answer timeout: %+v", st)
	}
}
