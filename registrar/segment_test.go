package registrar_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	kv "github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/registrar"
)

// segmentKV reads a segment as a watcher does: one List of its folder, decoded by the codec.
func segmentKV(t *testing.T, r *registrar.Registrar, name string) (*gray.Segment, []string, api.KVPairs) {
	t.Helper()
	pairs, _, err := r.Client().KV().List(kv.SegmentFolder(r.KVPrefix(), name), &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	seg, _, err := kv.DecodeSegment(r.KVPrefix(), name, pairs)
	if err != nil {
		t.Fatalf("decoding segment %s: %v", name, err)
	}
	values, _, err := kv.SegmentValues(r.KVPrefix(), name, pairs)
	if err != nil {
		t.Fatal(err)
	}
	return seg, values, pairs
}

// generations lists the generation folders of a segment in KV.
func generations(t *testing.T, r *registrar.Registrar, name string) []string {
	t.Helper()
	folder := kv.SegmentFolder(r.KVPrefix(), name) + "gen/"
	keys, _, err := r.Client().KV().Keys(folder, "/", &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(k, folder), "/"))
	}
	return out
}

func segmentValues(t *testing.T, r *registrar.Registrar, name string) []string {
	t.Helper()
	_, values, err := r.Segment(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return values
}

func userIDs(prefix string, from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%010d", prefix, from+i)
	}
	return out
}

// TestSegmentLifecycle: create, add, remove, import, list, show, history and delete, each read back
// as the watcher reads it; a change that changes nothing writes nothing.
func TestSegmentLifecycle(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()

	res, err := r.CreateSegment(ctx, "beta-testers", "users who try things first", []string{"u3", "u1", "u2", "u1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.After != 3 || res.Added != 3 || res.Written() != "one transaction" || res.Chunks != 1 {
		t.Fatalf("create: %+v (%s)", res, res.Written())
	}
	if _, err := r.CreateSegment(ctx, "beta-testers", "", nil); !errors.Is(err, registrar.ErrSegmentExists) || !strings.Contains(err.Error(), "3 values") {
		t.Fatalf("creating it again: %v", err)
	}
	if res, err = r.AddToSegment(ctx, "beta-testers", []string{"u4", "u2"}); err != nil || res.Before != 3 || res.After != 4 || res.Added != 1 {
		t.Fatalf("add: %+v, %v", res, err)
	}
	if res, err = r.AddToSegment(ctx, "beta-testers", []string{"u4"}); err != nil || !res.Unchanged || res.Written() != "nothing written" {
		t.Fatalf("adding a value it holds: %+v, %v", res, err)
	}
	if res, err = r.RemoveFromSegment(ctx, "beta-testers", []string{"u1", "u9"}); err != nil || res.After != 3 || res.Removed != 1 {
		t.Fatalf("remove: %+v, %v", res, err)
	}
	seg, values, _ := segmentKV(t, r, "beta-testers")
	if !slices.Equal(values, []string{"u2", "u3", "u4"}) || !seg.Contains("u4") || seg.Contains("u1") {
		t.Fatalf("in KV after remove: %q", values)
	}
	desc := "imported"
	if res, err = r.ImportSegment(ctx, "beta-testers", []string{"u9", "u2"}, registrar.ImportOptions{Description: &desc}); err != nil ||
		res.Added != 1 || res.Removed != 2 || res.After != 2 {
		t.Fatalf("import: %+v, %v", res, err)
	}
	info, values, err := r.Segment(ctx, "beta-testers")
	if err != nil || !slices.Equal(values, []string{"u2", "u9"}) || info.Count != 2 || info.Description != "imported" || info.Who != "alice" {
		t.Fatalf("show: %+v %q %v", info, values, err)
	}
	if gens := generations(t, r, "beta-testers"); len(gens) != 1 || gens[0] != info.Generation {
		t.Fatalf("generations in KV %q, head names %s: old generations must be deleted with the commit", gens, info.Generation)
	}

	if _, err := r.AddToSegment(ctx, "nobody", []string{"u1"}); !errors.Is(err, registrar.ErrSegmentNotFound) || !errors.Is(err, registrar.ErrNotFound) {
		t.Fatalf("adding to a segment that does not exist: %v", err)
	}
	if _, err := r.ImportSegment(ctx, "nobody", []string{"u1"}, registrar.ImportOptions{}); !errors.Is(err, registrar.ErrSegmentNotFound) {
		t.Fatalf("importing into a segment that does not exist: %v", err)
	}
	if res, err := r.ImportSegment(ctx, "empty", nil, registrar.ImportOptions{Create: true}); err != nil || res.After != 0 || res.Chunks != 0 {
		t.Fatalf("importing nothing into a new segment: %+v, %v", res, err)
	}
	if seg, values, _ := segmentKV(t, r, "empty"); seg == nil || seg.Len() != 0 || len(values) != 0 {
		t.Fatalf("an empty segment reads as %v %q", seg, values)
	}

	list, err := r.Segments(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "beta-testers" || list[0].Count != 2 || list[1].Name != "empty" {
		t.Fatalf("list: %+v, %v", list, err)
	}

	if res, err := r.DeleteSegment(ctx, "beta-testers"); err != nil || res.Before != 2 || res.After != 0 {
		t.Fatalf("delete: %+v, %v", res, err)
	}
	if _, _, err := r.Segment(ctx, "beta-testers"); !errors.Is(err, registrar.ErrSegmentNotFound) {
		t.Fatalf("a deleted segment: %v", err)
	}
	if keys, _, _ := r.Client().KV().Keys(kv.SegmentFolder(r.KVPrefix(), "beta-testers"), "", nil); len(keys) != 0 {
		t.Fatalf("delete left keys: %q", keys)
	}
	if _, err := r.DeleteSegment(ctx, "beta-testers"); !errors.Is(err, registrar.ErrSegmentNotFound) {
		t.Fatalf("deleting it again: %v", err)
	}

	hist, err := r.SegmentHistory(ctx, "beta-testers")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hist {
		got = append(got, fmt.Sprintf("%s %d->%d +%d -%d %s", h.Action, h.Before, h.After, h.Added, h.Removed, strings.Join(append(h.AddedSample, h.RemovedSample...), ",")))
		if h.Who != "alice" || h.Segment != "beta-testers" || h.Time.IsZero() || (h.Action != "create") != (h.Base != 0) {
			t.Errorf("history entry %+v", h)
		}
	}
	want := []string{"create 0->3 +3 -0 u1,u2,u3", "add 3->4 +1 -0 u4", "remove 4->3 +0 -1 u1", "import 3->2 +1 -2 u9,u3,u4", "delete 2->0 +0 -2 u2,u9"}
	if !slices.Equal(got, want) {
		t.Fatalf("history:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if hist[3].DescriptionBefore != "users who try things first" || hist[3].DescriptionAfter != "imported" {
		t.Fatalf("the import's entry does not record the new description: %+v", hist[3])
	}
}

// TestSegmentLargeImport: 100,000 values, larger than one KV value and one transaction, are written
// as chunk transactions and one commit, and read back exactly; a small change of a large segment
// takes the same path and leaves one generation; one value more than the limit is refused.
func TestSegmentLargeImport(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	values := userIDs("u", 0, gray.MaxSegmentValues)

	start := time.Now()
	res, err := r.ImportSegment(ctx, "everyone", values, registrar.ImportOptions{Create: true})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	wantChunks := len(kv.Chunks(values))
	if res.After != len(values) || res.Chunks != wantChunks || wantChunks < 2 || res.ChunkTransactions != wantChunks || res.Transactions != wantChunks+1 {
		t.Fatalf("import: %+v", res)
	}
	t.Logf("100,000 values (%d bytes): %d chunks, %s, in %v", len(values)*11, res.Chunks, res.Written(), took.Round(time.Millisecond))

	seg, got, pairs := segmentKV(t, r, "everyone")
	if !slices.Equal(got, values) || seg.Len() != len(values) || !seg.Contains("u0000099999") || seg.Contains("u0000100000") {
		t.Fatalf("read back %d values (segment of %d)", len(got), seg.Len())
	}
	for _, p := range pairs {
		if len(p.Value) > kv.ChunkBytes {
			t.Fatalf("%s holds %d bytes", p.Key, len(p.Value))
		}
	}

	res, err = r.AddToSegment(ctx, "everyone", []string{"u0000100000"})
	var limit *registrar.SegmentLimitError
	if !errors.As(err, &limit) || limit.Count != gray.MaxSegmentValues+1 {
		t.Fatalf("one value over the limit: %+v, %v", res, err)
	}
	start = time.Now()
	if res, err = r.RemoveFromSegment(ctx, "everyone", []string{"u0000000000"}); err != nil || res.After != len(values)-1 || res.ChunkTransactions != wantChunks {
		t.Fatalf("remove from a large segment: %+v, %v", res, err)
	}
	t.Logf("removing one value: %s, in %v", res.Written(), time.Since(start).Round(time.Millisecond))
	if gens := generations(t, r, "everyone"); len(gens) != 1 || gens[0] != res.Generation {
		t.Fatalf("generations %q after the change to %s", gens, res.Generation)
	}
	if _, got, _ := segmentKV(t, r, "everyone"); !slices.Equal(got, values[1:]) {
		t.Fatalf("after remove: %d values", len(got))
	}
	if _, err := r.ImportSegment(ctx, "everyone", userIDs("v", 0, gray.MaxSegmentValues+1), registrar.ImportOptions{}); !errors.As(err, &limit) {
		t.Fatalf("importing too many values: %v", err)
	}

	// The most a commit carries itself: 300 kB of chunks (25,600 values of 11 bytes and a line
	// break), 400 kB in base64 with a history entry of 40 samples, which Consul takes.
	if res, err = r.ImportSegment(ctx, "edge", userIDs("a", 0, 25_600), registrar.ImportOptions{Create: true}); err != nil || res.Written() != "one transaction" {
		t.Fatalf("import of 300 kB: %+v, %v", res, err)
	}
	if res, err = r.ImportSegment(ctx, "edge", userIDs("b", 0, 25_600), registrar.ImportOptions{}); err != nil || res.Written() != "one transaction" ||
		res.Added != 25_600 || res.Removed != 25_600 {
		t.Fatalf("import of 300 kB over 300 kB: %+v, %v", res, err)
	}
	if res, err = r.AddToSegment(ctx, "edge", []string{"c0000000000"}); err != nil || res.Written() != "2 chunk transactions and one commit" {
		t.Fatalf("one value more: %+v, %v", res, err)
	}
	if _, got, _ := segmentKV(t, r, "edge"); len(got) != 25_601 || got[25_600] != "c0000000000" {
		t.Fatalf("edge: %d values", len(got))
	}
}

// pauseFirstCommit stops the first change of a segment that reaches its commit until release is
// closed; entered is closed when it stops there. Later changes pass.
func pauseFirstCommit() (entered, release chan struct{}, restore func()) {
	entered, release = make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	restore = registrar.SetBeforeSegmentCommit(func(string) {
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
	})
	return entered, release, restore
}

// TestConcurrentSegmentAdds: adds that race both land, the loser reading the segment again; many
// racing adds all land.
func TestConcurrentSegmentAdds(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	if _, err := r.CreateSegment(ctx, "testers", "", []string{"u0"}); err != nil {
		t.Fatal(err)
	}

	// The first add stops after reading; the second commits meanwhile; the first must try again.
	entered, release, restore := pauseFirstCommit()
	var first *registrar.SegmentResult
	var firstErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		first, firstErr = r.AddToSegment(ctx, "testers", []string{"u1"})
	}()
	<-entered
	if _, err := r.AddToSegment(ctx, "testers", []string{"u2"}); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-done
	restore()
	if firstErr != nil || first.Retries != 1 {
		t.Fatalf("the add that lost the race: %+v, %v", first, firstErr)
	}
	if got := segmentValues(t, r, "testers"); !slices.Equal(got, []string{"u0", "u1", "u2"}) {
		t.Fatalf("values %q", got)
	}

	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				if _, err := r.AddToSegment(ctx, "testers", []string{fmt.Sprintf("g%d-%02d", g, i)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if got := segmentValues(t, r, "testers"); len(got) != 23 {
		t.Fatalf("%d values after 20 racing adds: %q", len(got), got)
	}
}

// TestConcurrentSegmentImports: of two imports that race, one wins; the other fails with a
// conflict, and the chunks it had written are deleted.
func TestConcurrentSegmentImports(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	if _, err := r.CreateSegment(ctx, "tenants", "", []string{"t0"}); err != nil {
		t.Fatal(err)
	}
	entered, release, restore := pauseFirstCommit()
	defer restore()
	big := userIDs("a", 0, 30_000) // 330 kB: chunk transactions, then the commit
	var loser *registrar.SegmentResult
	var loserErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		loser, loserErr = r.ImportSegment(ctx, "tenants", big, registrar.ImportOptions{})
	}()
	<-entered
	if gens := generations(t, r, "tenants"); len(gens) != 2 {
		t.Fatalf("while the import waits for its commit: generations %q, want the head's and the import's", gens)
	}
	winner, err := r.ImportSegment(ctx, "tenants", []string{"b1", "b2"}, registrar.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	close(release)
	<-done
	var conflict *registrar.SegmentConflictError
	if !errors.As(loserErr, &conflict) || !errors.Is(loserErr, registrar.ErrConflict) || conflict.Attempts != 1 || conflict.Last == nil ||
		conflict.Last.Action != "import" || loser != nil {
		t.Fatalf("the import that lost: %+v, %v", loser, loserErr)
	}
	if gens := generations(t, r, "tenants"); len(gens) != 1 || gens[0] != winner.Generation {
		t.Fatalf("generations %q, want only the winner's %s", gens, winner.Generation)
	}
	if got := segmentValues(t, r, "tenants"); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Fatalf("values %q", got)
	}
	if hist, _ := r.SegmentHistory(ctx, "tenants"); len(hist) != 2 {
		t.Fatalf("history: %+v", hist)
	}
}

// TestAbandonedGeneration: a change stopped between its chunks and its commit leaves the segment as
// it was; the next change deletes the generation left behind only once it is older than the cutoff.
func TestAbandonedGeneration(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	if _, err := r.CreateSegment(ctx, "vip", "", []string{"u1", "u2"}); err != nil {
		t.Fatal(err)
	}
	// An import whose process stops after writing its chunks, before its commit: here its context
	// ends there, and whether the commit was sent is not known, so its chunks stay.
	killed, kill := context.WithCancel(ctx)
	restore := registrar.SetBeforeSegmentCommit(func(string) { kill() })
	_, err := r.ImportSegment(killed, "vip", userIDs("x", 0, 30_000), registrar.ImportOptions{})
	restore()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("an import stopped before its commit: %v", err)
	}
	gens := generations(t, r, "vip")
	if len(gens) != 2 {
		t.Fatalf("generations %q, want the head's and the stopped import's", gens)
	}
	// What an import killed two hours ago left.
	old := fmt.Sprintf("%016x-%08x", time.Now().Add(-2*time.Hour).UnixNano(), 1)
	for i, chunk := range kv.Chunks(userIDs("y", 0, 30_000)) {
		if _, err := r.Client().KV().Put(&api.KVPair{Key: kv.SegmentChunkKey(r.KVPrefix(), "vip", old, i), Value: chunk}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if seg, values, _ := segmentKV(t, r, "vip"); !slices.Equal(values, []string{"u1", "u2"}) || seg.Contains("x0000000001") || seg.Contains("y0000000001") {
		t.Fatalf("with abandoned chunks the segment reads %q", values)
	}
	res, err := r.AddToSegment(ctx, "vip", []string{"u3"})
	if err != nil || res.Abandoned != 1 {
		t.Fatalf("add: %+v, %v", res, err)
	}
	if gens = generations(t, r, "vip"); len(gens) != 2 || slices.Contains(gens, old) {
		t.Fatalf("after a change: generations %q; want the recent abandoned one kept, the old one deleted", gens)
	}
	defer registrar.SetAbandonedAfter(time.Millisecond)()
	if res, err = r.AddToSegment(ctx, "vip", []string{"u4"}); err != nil || res.Abandoned != 1 {
		t.Fatalf("add: %+v, %v", res, err)
	}
	if gens := generations(t, r, "vip"); len(gens) != 1 || gens[0] != res.Generation {
		t.Fatalf("with the cutoff passed: generations %q", gens)
	}
	if got := segmentValues(t, r, "vip"); !slices.Equal(got, []string{"u1", "u2", "u3", "u4"}) {
		t.Fatalf("values %q", got)
	}
}

// TestSegmentPermissionDenied: a token that may read the segments but not write them is refused
// before anything is written, with an error naming the segment and the permission it lacks; a token
// that may not read them is told so rather than that the segment does not exist.
func TestSegmentPermissionDenied(t *testing.T) {
	a := consultest.StartACL(t)
	admin := aclAdmin(t, a)
	ctx := context.Background()
	if _, err := admin.CreateSegment(ctx, "beta", "", []string{"u1"}); err != nil {
		t.Fatal(err)
	}
	withToken := func(rules string) *registrar.Registrar {
		cfg := registrar.NewConfig(a.HTTPAddr)
		cfg.Token = aclToken(t, admin, rules).SecretID
		r, err := registrar.New(cfg, registrar.WithOperator("mallory"))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	reader := withToken(`key_prefix "graylane/" { policy = "read" }`)
	if _, values, err := reader.Segment(ctx, "beta"); err != nil || !slices.Equal(values, []string{"u1"}) {
		t.Fatalf("a read-only token reading: %q, %v", values, err)
	}
	for _, change := range []func() (*registrar.SegmentResult, error){
		func() (*registrar.SegmentResult, error) { return reader.AddToSegment(ctx, "beta", []string{"u2"}) },
		func() (*registrar.SegmentResult, error) {
			return reader.ImportSegment(ctx, "beta", userIDs("u", 0, 40_000), registrar.ImportOptions{})
		},
		func() (*registrar.SegmentResult, error) { return reader.CreateSegment(ctx, "gamma", "", nil) },
		func() (*registrar.SegmentResult, error) { return reader.DeleteSegment(ctx, "beta") },
	} {
		_, err := change()
		var denied *registrar.SegmentPermissionError
		if !errors.As(err, &denied) || !errors.Is(err, registrar.ErrPermission) ||
			!strings.Contains(err.Error(), "the token lacks key write on graylane/segments/") {
			t.Fatalf("a read-only token writing: %v", err)
		}
	}
	if _, values, _ := segmentKV(t, admin, "beta"); !slices.Equal(values, []string{"u1"}) || len(generations(t, admin, "beta")) != 1 {
		t.Fatalf("refused changes left %q", values)
	}
	if hist, _ := admin.SegmentHistory(ctx, "beta"); len(hist) != 1 {
		t.Fatalf("refused changes wrote history: %+v", hist)
	}
	stranger := withToken(`key_prefix "other/" { policy = "read" }`)
	if _, _, err := stranger.Segment(ctx, "beta"); !errors.Is(err, registrar.ErrPermission) || !strings.Contains(err.Error(), "key read on graylane/segments/beta/") {
		t.Fatalf("a token that may not read: %v", err)
	}
}

// TestSegmentInputErrors: a bad name, value or description is refused before anything is asked of
// Consul, with an error naming the value's position and what is wrong.
func TestSegmentInputErrors(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		values []string
		says   string
	}{
		{"Beta", nil, "lower-case"},
		{"", nil, "1 to 64 characters"},
		{"a/b", nil, "only lower-case letters"},
		{"beta", []string{"u1", ""}, "value 2: an empty value"},
		{"beta", []string{" u1"}, `value 1: value " u1" begins or ends with white space`},
		{"beta", []string{"u1", "u2", "u3\n"}, "value 3: value \"u3\\n\" holds a line break"},
		{"beta", []string{"#u1"}, "begins with '#'"},
		{"beta", []string{"u\x01"}, "control character"},
		{"beta", []string{"\xff"}, "not valid UTF-8"},
		{"beta", []string{strings.Repeat("x", 257)}, "has 257 bytes; a value has at most 256"},
	} {
		_, err := r.CreateSegment(ctx, tc.name, "", tc.values)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("create %q %q: %v; want an error saying %q", tc.name, tc.values, err, tc.says)
		}
		var bad *registrar.SegmentValueError
		if len(tc.values) > 0 && (!errors.As(err, &bad) || bad.Position != len(tc.values)) {
			t.Errorf("create %q %q: %v; want a SegmentValueError at %d", tc.name, tc.values, err, len(tc.values))
		}
	}
	if _, err := r.CreateSegment(ctx, "beta", "two\nlines", nil); err == nil || !strings.Contains(err.Error(), "one line") {
		t.Errorf("a description of two lines: %v", err)
	}
	if list, err := r.Segments(ctx); err != nil || len(list) != 0 {
		t.Fatalf("refused creates left segments: %+v, %v", list, err)
	}
}
