package watch_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

// writeSegment writes a segment as a new generation and switches its head to it, in one
// transaction, in the form internal/record describes; with commit false it writes only the new
// generation's chunks, as a process killed before its commit leaves them.
func writeSegment(t *testing.T, c *api.Client, name string, values []string, commit bool) {
	t.Helper()
	gen := fmt.Sprintf("%016x", time.Now().UnixNano())
	values = record.SortedValues(values)
	var ops api.TxnOps
	chunks := record.Chunks(values)
	for i, body := range chunks {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: record.SegmentChunkKey(watch.DefaultKVPrefix, name, gen, i), Value: body}})
	}
	if commit {
		head := fmt.Appendf(nil, `{"name":%q,"generation":%q,"chunks":%d,"count":%d}`, name, gen, len(chunks), len(values))
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: record.SegmentHeadKey(watch.DefaultKVPrefix, name), Value: head}})
	}
	ok, resp, _, err := c.Txn().Txn(ops, nil)
	if err != nil || !ok {
		t.Fatalf("writing segment %s: %v %+v", name, err, resp)
	}
}

// TestSegmentsReachSnapshots: a service whose canary takes the users of one segment and keeps out
// those of another follows both segments as Consul holds them: absent (the rule matches nothing,
// the excluding lane is closed), written, changed, half-written by a change that never committed
// (not seen), and deleted.
func TestSegmentsReachSnapshots(t *testing.T) {
	a := consultest.Start(t)
	c, err := api.NewClient(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	registerRaw(t, a, &api.AgentServiceRegistration{ID: "checkout-1", Name: "checkout", Address: "127.0.0.1", Port: 9001})
	registerRaw(t, a, &api.AgentServiceRegistration{ID: "checkout-canary-1", Name: "checkout", Address: "127.0.0.1", Port: 9002,
		Meta: map[string]string{"canary": "true", "weight": "100", "exclude_segment": "paying",
			"match": `[{"header":[{"key":"x-tenant","in_segment":"beta"}]}]`}})
	w := newWatcher(t, a, watch.WithSnapshotOptions(gray.Options{StickyHeader: "x-user-id"}))
	t.Cleanup(func() { w.Close(); checkNoLeak(t) })
	v := w.Service("checkout")
	select {
	case <-v.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready: a segment that does not exist is an answer")
	}

	decide := func(user, tenant string) *gray.Decision[watch.Endpoint] {
		h := map[string]string{"x-user-id": user}
		if tenant != "" {
			h["x-tenant"] = tenant
		}
		return v.Snapshot().Decide(&gray.StaticRequest{Headers: h})
	}
	// Absent segments: nothing fails open. The rule matches nothing and the lane that cannot check
	// its exclusion takes no weighted traffic.
	if d := decide("anyone", "acme"); d.Lane != "stable" {
		t.Fatalf("without the segments: %s (%s)", d.Lane, d.Reason)
	}
	if n := len(v.Snapshot().Problems()); n < 2 {
		t.Fatalf("missing segments not reported: %v", v.Snapshot().Problems())
	}

	writeSegment(t, c, "beta", []string{"acme", "globex"}, true)
	writeSegment(t, c, "paying", []string{"alice", "bob"}, true)
	// Each segment has a watch of its own: wait for both, so that neither arrives later as a change.
	waitFor(t, 5*time.Second, "segments reach the snapshot", func() bool {
		return decide("carol", "").Lane == "canary" && decide("alice", "").Reason == gray.ReasonExcluded &&
			v.Segments() != nil && len(v.Segments().Names()) == 2
	})
	if d := decide("alice", "acme"); d.Lane != "stable" || d.Reason != gray.ReasonExcluded || d.Segment != "paying" || d.ExcludedFrom != "canary" {
		t.Errorf("alice of acme: %s %s %q from %q; want kept out of canary by paying", d.Lane, d.Reason, d.Segment, d.ExcludedFrom)
	}
	if got := v.Segments().Names(); len(got) != 2 {
		t.Errorf("view's segments: %v", got)
	}

	// A change that wrote its chunks and died before its commit is not seen.
	changes := v.State().Changes
	writeSegment(t, c, "paying", []string{"carol"}, false)
	time.Sleep(300 * time.Millisecond)
	if d := decide("alice", ""); d.Reason != gray.ReasonExcluded || v.State().Changes != changes {
		t.Errorf("a half-written change was seen: alice %s, %d changes after %d", d.Reason, v.State().Changes, changes)
	}

	writeSegment(t, c, "paying", []string{"bob"}, true) // alice is no longer paying
	waitFor(t, 5*time.Second, "a removed user moves", func() bool { return decide("alice", "").Lane == "canary" })

	if _, err := c.KV().DeleteTree(record.SegmentFolder(watch.DefaultKVPrefix, "paying"), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a deleted segment closes the lane", func() bool {
		return decide("carol", "").Lane == "stable" && decide("anyone", "acme").Lane == "stable"
	})
}

// BenchmarkSegmentChangeToSnapshot measures, on a 99,999-value segment that a canary excludes, the
// time from a committed change of one value (the registrar rewrites the whole set) to the watcher's
// snapshot deciding by it: commit-ms/op is the registrar's commit, seen-ms/op the time after it.
func BenchmarkSegmentChangeToSnapshot(b *testing.B) {
	a := consultest.Start(b)
	r := newRegistrar(b, a, "alice")
	values := make([]string, 99_999)
	for i := range values {
		values[i] = fmt.Sprintf("key-%07d", i)
	}
	if _, err := r.ImportSegment(context.Background(), "paying", values, registrar.ImportOptions{Create: true}); err != nil {
		b.Fatal(err)
	}
	registerRaw(b, a, &api.AgentServiceRegistration{ID: "c-1", Name: "c", Address: "127.0.0.1", Port: 9001})
	registerRaw(b, a, &api.AgentServiceRegistration{ID: "c-canary-1", Name: "c", Address: "127.0.0.1", Port: 9002,
		Meta: map[string]string{"canary": "true", "weight": "100", "exclude_segment": "paying"}})
	w, err := watch.New(watch.NewConfig(a.HTTPAddr), watch.WithSnapshotOptions(gray.Options{StickyHeader: "x-user-id"}))
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	v := w.Service("c")
	<-v.Ready()
	lane := func() string {
		return v.Snapshot().Decide(&gray.StaticRequest{Headers: map[string]string{"x-user-id": "mover"}}).Lane
	}
	var commit, seen time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		want := "stable"
		if i%2 == 0 {
			_, err = r.AddToSegment(context.Background(), "paying", []string{"mover"})
		} else {
			_, err = r.RemoveFromSegment(context.Background(), "paying", []string{"mover"})
			want = "canary"
		}
		if err != nil {
			b.Fatal(err)
		}
		committed := time.Now()
		commit += committed.Sub(start)
		for lane() != want {
			time.Sleep(200 * time.Microsecond)
		}
		seen += time.Since(committed)
	}
	b.ReportMetric(float64(commit.Milliseconds())/float64(b.N), "commit-ms/op")
	b.ReportMetric(float64(seen.Microseconds())/1000/float64(b.N), "seen-ms/op")
}
