package gray_test

import (
	"fmt"
	"math"
	"net/netip"
	"sync"
	"testing"

	"github.com/graylane/graylane/gray"
)

func canaryAt(weight string) []gray.Instance[string] {
	return []gray.Instance[string]{
		{ID: "s1", Meta: map[string]string{}, Value: "s1"},
		{ID: "c1", Meta: map[string]string{"canary": "true", "weight": weight}, Value: "c1"},
	}
}

var sticky = gray.Options{StickyHeader: "x-user-id"}

func userRequest(id string) *gray.StaticRequest {
	return &gray.StaticRequest{Headers: map[string]string{"x-user-id": id}, URLPath: "/"}
}

// TestWeightShareOverStickyKeys: 10 % over 100,000 distinct keys lands within 0.5 points of 10 %.
func TestWeightShareOverStickyKeys(t *testing.T) {
	for _, weight := range []string{"10", "0.5", "33.33"} {
		snap := gray.NewSnapshot("bservice", canaryAt(weight), sticky)
		const n = 100_000
		in := 0
		for i := 0; i < n; i++ {
			if d := snap.Decide(userRequest(fmt.Sprintf("user-%d", i))); d.Lane == "canary" {
				in++
			}
		}
		w, _ := gray.ParseWeight(weight)
		share := 100 * float64(in) / n
		if math.Abs(share-w.Percent()) > 0.5 {
			t.Errorf("weight %s%%: %.3f%% of %d keys went to the canary", weight, share, n)
		}
		t.Logf("weight %s%%: %.3f%% of %d keys", weight, share, n)
	}
}

// TestRandomBucketShare: without a sticky key the share still follows the weight.
func TestRandomBucketShare(t *testing.T) {
	snap := gray.NewSnapshot("bservice", canaryAt("25"), gray.Options{})
	const n = 100_000
	in := 0
	req := &gray.StaticRequest{URLPath: "/"}
	for i := 0; i < n; i++ {
		if snap.Decide(req).Lane == "canary" {
			in++
		}
	}
	if share := 100 * float64(in) / n; math.Abs(share-25) > 0.5 {
		t.Fatalf("random buckets: %.3f%% at weight 25%%", share)
	}
}

// TestRaisingWeightNeverMovesUsersOut: every user in the canary at one step stays in it at every
// higher step, and the same user always lands in the same lane.
func TestRaisingWeightNeverMovesUsersOut(t *testing.T) {
	steps := []string{"0.01", "1", "5", "25", "50", "99.99", "100"}
	in := map[string]bool{}
	for _, step := range steps {
		snap := gray.NewSnapshot("bservice", canaryAt(step), sticky)
		for i := 0; i < 20_000; i++ {
			user := fmt.Sprintf("u%d", i)
			lane := snap.Decide(userRequest(user)).Lane
			if again := snap.Decide(userRequest(user)).Lane; again != lane {
				t.Fatalf("weight %s: user %s flipped from %s to %s", step, user, lane, again)
			}
			if in[user] && lane != "canary" {
				t.Fatalf("weight %s: user %s left the canary", step, user)
			}
			in[user] = lane == "canary"
		}
	}
}

func TestBucketIsSaltedByService(t *testing.T) {
	same := 0
	for i := 0; i < 1000; i++ {
		k := fmt.Sprint(i)
		if gray.Bucket("a", k)/100 == gray.Bucket("b", k)/100 {
			same++
		}
	}
	if same > 30 { // 1 % expected by chance
		t.Fatalf("%d of 1000 keys share a percentile across services", same)
	}
}

func TestLanesDescribeShares(t *testing.T) {
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{
		{ID: "b1", Meta: map[string]string{"bluegreen": "blue"}},
		{ID: "g1", Meta: map[string]string{"bluegreen": "green", "weight": "30"}},
		{ID: "c1", Meta: map[string]string{"canary": "true", "weight": "5", "match": `[{"header":[{"key":"x","present":true}]}]`}},
	}, gray.Options{})
	got := map[string]string{}
	for _, l := range snap.Lanes() {
		got[l.Name] = fmt.Sprintf("base=%v share=%s rules=%d %v", l.Base, l.Share, len(l.Match), l.Instances)
	}
	want := map[string]string{
		"canary": "base=false share=5 rules=1 [c1]",
		"green":  "base=false share=30 rules=0 [g1]",
		"blue":   "base=true share=65 rules=0 [b1]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lanes:\n got %v\nwant %v", got, want)
	}
}

// TestDecisionPropagation: only gray decisions travel to the next hop.
func TestDecisionPropagation(t *testing.T) {
	snap := gray.NewSnapshot("bservice", canaryAt("100"), gray.Options{})
	if d := snap.Decide(&gray.StaticRequest{}); !d.Propagate() || d.Lane != "canary" {
		t.Fatalf("weighted canary decision %+v not propagated", d)
	}
	snap = gray.NewSnapshot("bservice", canaryAt("0"), gray.Options{})
	if d := snap.Decide(&gray.StaticRequest{}); d.Propagate() {
		t.Fatalf("base decision %+v propagated", d)
	}
	if snap.TagKey().Lower() != gray.DefaultTagKey || snap.TagKey().Canonical() != "X-Md-Global-Gray-Lane" {
		t.Fatalf("tag key %+v", snap.TagKey())
	}
}

// TestDecideDoesNotAllocate covers the paths a request can take: tag, match with every kind of
// condition (the regex included), weight with a sticky header and cookie, and base.
func TestDecideDoesNotAllocate(t *testing.T) {
	snap := benchSnapshot(100)
	for name, req := range benchRequests() {
		if n := testing.AllocsPerRun(200, func() { snap.Decide(req) }); n != 0 {
			t.Errorf("%s: %v allocations per decision", name, n)
		}
	}
}

// TestConcurrentDecisions runs decisions from many goroutines on one snapshot (run with -race).
func TestConcurrentDecisions(t *testing.T) {
	snap := benchSnapshot(10)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, req := range benchRequests() {
				for i := 0; i < 200; i++ {
					if d := snap.Decide(req); len(d.Instances) == 0 {
						t.Error("empty decision")
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// benchSnapshot is a service with n instances: a tenth are canaries with the article's header,
// cookie and uri rule plus a 10 % weight, one is a release lane, the rest stable.
func benchSnapshot(n int) *gray.Snapshot[string] {
	canary := map[string]string{
		"canary": "true", "weight": "10",
		"match": `[{"header":[{"key":"userid","value_match":"123"}],"cookie":{"regex":"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"},"uri":[{"prefix":["/api/user"]}]},` +
			`{"query":[{"name":"beta","value_match":"1"}],"method":["GET"],"client_ip":["10.8.0.0/16"]}]`,
	}
	instances := make([]gray.Instance[string], n)
	for i := range instances {
		id := fmt.Sprintf("i-%d", i)
		meta := map[string]string{"version": "v1"}
		switch {
		case i == 1:
			meta = map[string]string{"lane": "release-42"}
		case i%10 == 0:
			meta = canary
		}
		instances[i] = gray.Instance[string]{ID: id, Meta: meta, Value: id}
	}
	return gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id", StickyCookie: "uid"})
}

func benchRequests() map[string]*gray.StaticRequest {
	return map[string]*gray.StaticRequest{
		"production": {URLPath: "/api/user/7", HTTPMethod: "GET",
			Headers: map[string]string{"userid": "9", "x-user-id": "user-1", "cookie": "email=li@example.com; lang=zh"}},
		"matched": {URLPath: "/api/user/7", HTTPMethod: "GET",
			Headers: map[string]string{"userid": "123", "x-user-id": "user-1", "cookie": "email=li@some-company-name.com; lang=zh"}},
		"second rule": {URLPath: "/search", URLQuery: "q=1&beta=1", HTTPMethod: "GET", Client: netip.MustParseAddr("10.8.1.1"),
			Headers: map[string]string{"userid": "9"}},
		"weighted by cookie": {URLPath: "/", Headers: map[string]string{"cookie": "lang=zh; uid=user-2"}},
		"tagged":             {URLPath: "/", Headers: map[string]string{gray.DefaultTagKey: "release-42"}},
		"random bucket":      {URLPath: "/"},
	}
}
