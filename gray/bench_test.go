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
