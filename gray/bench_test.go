package gray_test

import (
	"fmt"
	"testing"

	"github.com/graylane/graylane/gray"
)

var sizes = []int{10, 100, 1000}

// BenchmarkDecide measures the decision on a prepared snapshot (header + cookie + uri rules, a sticky
// key) for 10, 100 and 1000 instances. Target: at most 100 ns/op, 0 allocs/op, flat in instances.
func BenchmarkDecide(b *testing.B) {
	reqs := benchRequests()
	for _, n := range sizes {
		snap := benchSnapshot(n)
		for _, name := range []string{"production", "matched", "weighted by cookie", "tagged"} {
			req := reqs[name]
			b.Run(fmt.Sprintf("instances=%d/%s", n, name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					snap.Decide(req)
				}
			})
		}
	}
}

// BenchmarkDecideWithHeaders: a snapshot whose rules read headers only (a header rule, a sticky
// key), deciding a request given as gray.StaticRequest (Decide) and as a gRPC-style header map
// (DecideWithHeaders), side by side.
func BenchmarkDecideWithHeaders(b *testing.B) {
	instances := []gray.Instance[string]{
		{ID: "s1", Meta: map[string]string{}, Value: "s1"},
		{ID: "c1", Meta: map[string]string{"canary": "true", "weight": "10", "match": `[{"header":[{"key":"userid","value_match":"123"}]}]`}, Value: "c1"},
	}
	snap := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id"})
	for _, rc := range []struct {
		name    string
		headers map[string]string
	}{
		{"production", map[string]string{"userid": "7", "x-user-id": "user-42"}},
		{"matched", map[string]string{"userid": "123", "x-user-id": "user-42"}},
		{"tagged", map[string]string{gray.DefaultTagKey: "canary", "x-user-id": "user-42"}},
	} {
		req := &gray.StaticRequest{Headers: rc.headers}
		md := map[string][]string{}
		for k, v := range rc.headers {
			md[k] = []string{v}
		}
		if snap.Decide(req) != snap.DecideWithHeaders(md, req) {
			b.Fatal("the two forms decide differently")
		}
		b.Run(rc.name+"/Decide", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				snap.Decide(req)
			}
		})
		b.Run(rc.name+"/DecideWithHeaders", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				snap.DecideWithHeaders(md, req)
			}
		})
	}
}

// BenchmarkBaselineFilterPerRequest is the approach of Kratos' stock version filter, side by side
// with Decide: each request walks every instance's meta and collects the matching ones into a new
// slice. It is O(instances) and allocates per request.
func BenchmarkBaselineFilterPerRequest(b *testing.B) {
	for _, n := range sizes {
		instances := benchInstances(n)
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var out []string
				for i := range instances {
					if instances[i].Meta["canary"] != "true" {
						out = append(out, instances[i].Value)
					}
				}
				if len(out) == 0 {
					b.Fatal("empty")
				}
			}
		})
	}
}

// BenchmarkBaselineDecodePerRequest decodes the meta on every request instead of once per change,
// as an enforcer without prepared snapshots would.
func BenchmarkBaselineDecodePerRequest(b *testing.B) {
	req := benchRequests()["production"]
	for _, n := range sizes[:2] {
		instances := benchInstances(n)
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id"}).Decide(req)
			}
		})
	}
}

// BenchmarkNewSnapshot measures building a snapshot: O(instances), identical meta decoded once.
func BenchmarkNewSnapshot(b *testing.B) {
	for _, n := range sizes {
		instances := benchInstances(n)
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				gray.NewSnapshot("bservice", instances, gray.Options{})
			}
		})
	}
}

// BenchmarkBucket: the sticky hash of a short user key and of a UUID (with the service's seed,
// which a snapshot computes once).
func BenchmarkBucket(b *testing.B) {
	for _, key := range []string{"user-1234567", "3f2c7a9e-4b1d-4c8e-9a7f-2d5e6b8c1a0f"} {
		b.Run(fmt.Sprintf("key=%d bytes", len(key)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				gray.Bucket("bservice", key)
			}
		})
	}
}

func benchInstances(n int) []gray.Instance[string] {
	snap := benchSnapshot(n)
	_ = snap
	instances := make([]gray.Instance[string], n)
	for i := range instances {
		id := fmt.Sprintf("i-%d", i)
		meta := map[string]string{"version": "v1"}
		if i%10 == 0 {
			meta = map[string]string{"canary": "true", "weight": "10",
				"match": `[{"header":[{"key":"userid","value_match":"123"}],"cookie":{"regex":"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"},"uri":[{"prefix":["/api/user"]}]}]`}
		}
		instances[i] = gray.Instance[string]{ID: id, Meta: meta, Value: id}
	}
	return instances
}

// segmentBenchSnapshot is a stable lane and a canary at 10 % whose one rule reads header userid:
// with a literal value, or in a segment of 100,000 user IDs holding that value. The sticky key is
// x-user-id.
func segmentBenchSnapshot(b *testing.B, literal bool) (*gray.Snapshot[string], string) {
	users := userIDs(gray.MaxSegmentValues)
	member := users[len(users)/2]
	cond := `{"key":"userid","in_segment":"users"}`
	if literal {
		cond = fmt.Sprintf(`{"key":"userid","value_match":%q}`, member)
	}
	instances := []gray.Instance[string]{
		inst("s1"), inst("s2"),
		inst("c1", "canary", "true", "weight", "10", "match", `[{"header":[`+cond+`]}]`),
	}
	seg, err := gray.NewSegment("users", users)
	if err != nil {
		b.Fatal(err)
	}
	snap := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(gray.NewSegments(seg)))
	if len(snap.Problems()) > 0 {
		b.Fatal(snap.Problems())
	}
	return snap, member
}

// BenchmarkSegmentRuleVsLiteral: the same decision with a header rule on a literal value and on a
// segment of 100,000 values, side by side; matched (the member) and unmatched (another user ID,
// decided by the sticky bucket). Target: the segment within 1.2× of the literal, 0 allocs/op.
func BenchmarkSegmentRuleVsLiteral(b *testing.B) {
	for _, literal := range []bool{true, false} {
		snap, member := segmentBenchSnapshot(b, literal)
		rule := "segment=100000"
		if literal {
			rule = "literal"
		}
		for _, rc := range []struct{ name, userid, lane string }{
			{"matched", member, "canary"},
			{"unmatched", "u9999999999", "stable"},
		} {
			req := headers("userid", rc.userid, "x-user-id", "user-42")
			if d := snap.Decide(req); d.Lane != rc.lane {
				b.Fatalf("%s: decided %+v", rc.name, *d)
			}
			b.Run(rc.name+"/"+rule, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					snap.Decide(req)
				}
			})
		}
	}
}

// BenchmarkExclusion: a canary at 10 % that excludes a segment of 100,000 users, deciding a member
// whose bucket is in the canary's range (kept out: to stable), and a non-member in that range (to
// the canary); beside the same non-member on a canary without exclusion.
func BenchmarkExclusion(b *testing.B) {
	users := userIDs(gray.MaxSegmentValues)
	seg, err := gray.NewSegment("vip", users)
	if err != nil {
		b.Fatal(err)
	}
	segs := gray.NewSegments(seg)
	inRange := func(candidates []string, member bool) string {
		for _, u := range candidates {
			if gray.Bucket("bservice", u) < 1000 && seg.Contains(u) == member {
				return u
			}
		}
		b.Fatal("no user in the canary's range")
		return ""
	}
	member := inRange(users, true)
	other := inRange([]string{"user-1", "user-2", "user-3", "user-4", "user-5", "user-6", "user-7", "user-8", "user-9", "user-10", "user-11", "user-12", "user-13", "user-14", "user-15", "user-16", "user-17", "user-18", "user-19", "user-20", "user-21", "user-22", "user-23", "user-24", "user-25", "user-26", "user-27", "user-28", "user-29", "user-30"}, false)
	excluding := gray.NewSnapshot("bservice", []gray.Instance[string]{inst("s1"), inst("c1", "canary", "true", "weight", "10", "exclude_segment", "vip")},
		gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(segs))
	plain := gray.NewSnapshot("bservice", []gray.Instance[string]{inst("s1"), inst("c1", "canary", "true", "weight", "10")},
		gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(segs))
	for _, bc := range []struct {
		name   string
		snap   *gray.Snapshot[string]
		user   string
		reason gray.Reason
	}{
		{"member kept out", excluding, member, gray.ReasonExcluded},
		{"non-member in range", excluding, other, gray.ReasonWeight},
		{"no exclusion", plain, other, gray.ReasonWeight},
	} {
		req := headers("x-user-id", bc.user)
		if d := bc.snap.Decide(req); d.Reason != bc.reason {
			b.Fatalf("%s: decided %+v", bc.name, *d)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bc.snap.Decide(req)
			}
		})
	}
}

// BenchmarkNewSegment builds a segment of 100,000 user IDs of 11 bytes ("u0001234567") and reports
// the heap it keeps per value (B/value, target at most 40) beside the time to build it.
func BenchmarkNewSegment(b *testing.B) {
	users := userIDs(gray.MaxSegmentValues)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := gray.NewSegment("users", users); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(segmentBytesPerValue(users), "B/value")
}

// BenchmarkSegmentContains: a lookup in a segment of 100,000 values beside a Go map of the same
// values, for members and non-members, cycling through 4096 keys so that not every probe is cached.
func BenchmarkSegmentContains(b *testing.B) {
	users := userIDs(gray.MaxSegmentValues)
	seg, _ := gray.NewSegment("users", users)
	set := make(map[string]struct{}, len(users))
	for _, u := range users {
		set[u] = struct{}{}
	}
	const n = 4096
	hits, misses := make([]string, n), make([]string, n)
	for i := range n {
		hits[i] = users[(i*7919)%len(users)]
		misses[i] = fmt.Sprintf("u%010d", i*7919+1)
	}
	for _, kc := range []struct {
		name string
		keys []string
	}{{"member", hits}, {"non-member", misses}} {
		b.Run(kc.name+"/segment", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				seg.Contains(kc.keys[i&(n-1)])
				i++
			}
		})
		b.Run(kc.name+"/map", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_, _ = set[kc.keys[i&(n-1)]]
				i++
			}
		})
	}
}
