package watch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

// applyServices registers one instance of each named service through the registrar.
func applyServices(t *testing.T, r *registrar.Registrar, names ...string) {
	t.Helper()
	var spec strings.Builder
	for i, name := range names {
		fmt.Fprintf(&spec, "- {name: %s, id: %s-1, address: 127.0.0.1, port: %d}\n", name, name, 9100+i)
	}
	specs, err := registrar.ParseSpecs("services.yaml", []byte(spec.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func tagKey(v *watch.ServiceView) string { return v.Snapshot().TagKey().Lower() }

// closed reports whether a change channel was closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestOptionsChangeWakesOnlyItsService: every service's options come from one folder; a change of one
// service's options (written by the registrar with its state) reaches that service's views, and wakes
// neither the views nor the options of another service. Options set back to the defaults are
// written as "{}".
func TestOptionsChangeWakesOnlyItsService(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyServices(t, r, "opt-a", "opt-b")
	w := newWatcher(t, a)
	defer func() {
		w.Close()
		checkNoLeak(t)
	}()
	va, vb := w.Service("opt-a"), w.Service("opt-b")
	oa, ob := w.Options("opt-a"), w.Options("opt-b")
	for _, ch := range []<-chan struct{}{va.Ready(), vb.Ready(), oa.Ready(), ob.Ready()} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("the views are not ready")
		}
	}
	changesB, viewB, optionsB := vb.State().Changes, vb.Changed(), ob.Changed()

	ctx := context.Background()
	if _, err := r.SetServiceOptions(ctx, "opt-a", gray.Options{TagKey: "x-lane-a"}); err != nil {
		t.Fatal(err)
	}
	pair, _, err := r.Client().KV().Get(record.OptionsKey(watch.DefaultKVPrefix, "opt-a"), nil)
	if err != nil || pair == nil {
		t.Fatalf("the options key of opt-a after SetServiceOptions: %v, %v", pair, err)
	}
	var recorded gray.Options
	if err := json.Unmarshal(pair.Value, &recorded); err != nil || recorded.TagKey != "x-lane-a" {
		t.Fatalf("the options key of opt-a holds %s (%v)", pair.Value, err)
	}
	waitFor(t, 10*time.Second, "opt-a's new tag key", func() bool {
		return oa.Load().TagKey == "x-lane-a" && tagKey(va) == "x-lane-a"
	})
	time.Sleep(300 * time.Millisecond) // a wrong wake-up of opt-b would come now
	if closed(viewB) || closed(optionsB) || vb.State().Changes != changesB {
		t.Fatalf("a change of opt-a's options woke opt-b (view %v, options %v, changes %d -> %d)",
			closed(viewB), closed(optionsB), changesB, vb.State().Changes)
	}

	if _, err := r.SetServiceOptions(ctx, "opt-a", gray.Options{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "opt-a's default tag key", func() bool {
		return oa.Load() == (gray.Options{}) && tagKey(va) == strings.ToLower(gray.DefaultTagKey)
	})
	if pair, _, err := r.Client().KV().Get(record.OptionsKey(watch.DefaultKVPrefix, "opt-a"), nil); err != nil || pair == nil || string(pair.Value) != "{}" {
		t.Fatalf("the options key of opt-a after options set back to the defaults: %v, %v", pair, err)
	}
	if closed(viewB) || closed(optionsB) {
		t.Fatal("options set back to the defaults on opt-a woke opt-b")
	}
}

// TestOptionsRecordedBeforeTheFolder: a service whose options a graylane of before recorded in its
// state only, with no options key, decides with them; a change made since moves them to the folder,
// which the watcher follows from then on. A service with no record decides with the defaults at once.
func TestOptionsRecordedBeforeTheFolder(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyServices(t, r, "legacy", "plain")
	state, _ := json.Marshal(record.State{Instances: map[string]map[string]string{}, Options: &gray.Options{StickyHeader: "x-old"}})
	if _, err := r.Client().KV().Put(&api.KVPair{Key: record.StateKey(watch.DefaultKVPrefix, "legacy"), Value: state}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Client().KV().Delete(record.OptionsKey(watch.DefaultKVPrefix, "legacy"), nil); err != nil {
		t.Fatal(err)
	}
	w := newWatcher(t, a)
	defer w.Close()
	legacy, plain := w.Options("legacy"), w.Options("plain")
	vl := w.Service("legacy")
	for _, ch := range []<-chan struct{}{legacy.Ready(), plain.Ready(), vl.Ready()} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("the views are not ready")
		}
	}
	if got := legacy.Load(); got.StickyHeader != "x-old" {
		t.Fatalf("options recorded in the state only: the watcher has %+v", got)
	}
	if got := plain.Load(); got != (gray.Options{}) {
		t.Fatalf("a service with no record has options %+v", got)
	}

	if _, err := r.SetServiceOptions(context.Background(), "legacy", gray.Options{StickyHeader: "x-new"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the options set since", func() bool { return legacy.Load().StickyHeader == "x-new" })
	if _, err := r.SetServiceOptions(context.Background(), "legacy", gray.Options{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the options set back to the defaults", func() bool { return legacy.Load() == (gray.Options{}) })
	if err := legacy.Err(); err != nil {
		t.Fatalf("the options view reports %v", err)
	}
}

// TestOptionsWatchHoldsAConnectionPastTheLimit: over plain HTTP each query in flight holds a
// connection; with more services than the agent's limits.http_max_conns_per_client allows, the one
// options query still gets a connection (it asks first, on connections of its own), so the services
// whose queries get one become ready, as they did when each service had its own options query.
func TestOptionsWatchHoldsAConnectionPastTheLimit(t *testing.T) {
	a := consultest.StartWith(t, "-hcl", "limits { http_max_conns_per_client = 10 }")
	r := newRegistrar(t, a, "alice")
	const services = 15
	names := make([]string, services)
	for i := range names {
		names[i] = fmt.Sprintf("past-%d", i)
	}
	applyServices(t, r, names...)
	w, err := watch.New(watch.NewConfig(a.HTTPAddr), watch.WithBackoff(50*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	views := make([]*watch.ServiceView, services)
	for i, name := range names {
		views[i] = w.Service(name)
	}
	ready := func() int {
		n := 0
		for _, v := range views {
			if closed(v.Ready()) {
				n++
			}
		}
		return n
	}
	waitFor(t, 20*time.Second, "5 services ready past the agent's limit", func() bool { return ready() >= 5 })
	t.Logf("%d of %d services ready, %d requests refused", ready(), services, w.Refused())
}
