package registrar_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

// TestDrain: the drained instance gets weight 0 and the drain mark, the watcher sees it, then it is
// deregistered; the history shows both steps.
func TestDrain(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	w, err := watch.New(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	v := w.Service("bservice")
	<-v.Ready()

	sawDrain := make(chan struct{})
	go func() {
		for {
			changed := v.Changed()
			for _, l := range v.Snapshot().Lanes() {
				if l.Name == "canary" {
					goto next
				}
			}
			if len(v.Snapshot().Lanes()) > 0 {
				close(sawDrain)
				return
			}
		next:
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				return
			}
		}
	}()
	start := time.Now()
	if _, err := r.Drain(context.Background(), "bservice-canary-1", registrar.DrainOptions{Grace: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sawDrain:
	case <-time.After(time.Second):
		t.Fatal("the watcher never showed the canary drained")
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("deregistered before the grace period")
	}
	instances, _, _ := r.Instances(context.Background(), "bservice")
	for _, inst := range instances {
		if inst.ID == "bservice-canary-1" {
			t.Fatal("drained instance still registered")
		}
	}
	hist, _ := r.History(context.Background(), "bservice")
	var actions []string
	for _, h := range hist {
		actions = append(actions, h.Action)
	}
	if strings.Join(actions, ",") != "apply,drain bservice-canary-1,deregister bservice-canary-1" {
		t.Fatalf("history %v", actions)
	}
}
