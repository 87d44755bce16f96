package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// segmentSpecs: bservice's canary takes the beta testers (a 100,000-user segment) always and 20 %
// of the other users, never a key account (another segment, of 99,999 users), and has a rule on a
// tenant segment that does not exist; edge calls bservice with the selector.
const segmentSpecs = `
- {name: bservice, id: bservice-1, meta: {version: v1}}
- name: bservice
  id: bservice-canary-1
  meta:
    version: v2
    canary: true
    weight: 20
    exclude_segment: key-accounts
    match:
      - header:
          - key: x-user-id
            in_segment: beta-testers
      - cookie: {name: tenant, in_segment: tenants-that-do-not-exist}
- {name: cservice, id: cservice-1, meta: {version: v1}}
- {name: edge, id: edge-1}
`

// TestSegmentsDecideAlike: two 100,000-user segments, one included in a canary and one excluded from
// it, imported through the registrar (each larger than one KV value), and 10,000 requests through
// the plugin runner's protocol path and through a Kratos service with the selector: every request is
// served by the same lane in both, and by the lane the core decides. Then a user added to the
// excluded segment leaves the canary in both planes, and comes back when removed, within the
// propagation bound.
func TestSegmentsDecideAlike(t *testing.T) {
	ctx := context.Background()
	s := &stack{dir: t.TempDir()}
	t.Cleanup(s.close)
	if err := s.build(ctx, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := s.startConsul(false); err != nil {
		t.Fatal(err)
	}
	// The key accounts leave room for the one added below: a segment holds at most 100,000.
	beta, keyAccounts := make([]string, 100_000), make([]string, 99_999)
	for i := range beta {
		beta[i] = fmt.Sprintf("beta-%07d", i)
	}
	for i := range keyAccounts {
		keyAccounts[i] = fmt.Sprintf("key-%07d", i)
	}
	keyAccounts[0] = beta[0] // one beta tester is also a key account: the exclusion wins
	for name, values := range map[string][]string{"beta-testers": beta, "key-accounts": keyAccounts} {
		res, err := s.r.ImportSegment(ctx, name, values, registrar.ImportOptions{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("segment %s: %s", name, res.Written())
	}
	specs, err := registrar.ParseSpecs("segments.yaml", []byte(segmentSpecs))
	if err != nil {
		t.Fatal(err)
	}
	next := map[string]string{"bservice": "cservice", "edge": "bservice"}
	for _, sp := range specs {
		if err := s.startInstance(ctx, sp, next[sp.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.r.SetServiceOptions(ctx, "bservice", gray.Options{StickyHeader: stickyHeader}); err != nil {
		t.Fatal(err)
	}
	if err := s.startRunner(ctx); err != nil {
		t.Fatal(err)
	}
	entries, _, err := s.client.Health().Service("edge", "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("edge: %v %v", entries, err)
	}
	gw := newGateway(s.sock, s.w)
	defer gw.close()
	edge := &edgePlane{url: entries[0].Service.TaggedAddresses["http"].Address, http: &http.Client{Timeout: 10 * time.Second}}
	defer edge.http.CloseIdleConnections()
	d := &demo{out: io.Discard, s: s, planes: []plane{gw, edge}}

	probe := []request{{User: beta[7], Method: "GET", Path: "/api/order"}, {User: keyAccounts[7], Method: "GET", Path: "/api/order"}}
	if err := d.wait(ctx, "bservice", probe, func(m []*reply) bool { return m[0].Serves == "canary" && m[1].Serves == "stable" }); err != nil {
		t.Fatal(err)
	}

	// The core's own answer, from the same meta and segments, is what both planes must give.
	view := s.w.Service("bservice")
	<-view.Ready()
	want := func(r *request) string {
		h := map[string]string{}
		for _, kv := range r.headers() {
			h[kv[0]] = kv[1]
		}
		return view.Snapshot().Decide(&gray.StaticRequest{Headers: h, URLPath: "/api/order", HTTPMethod: "GET"}).Lane
	}
	rnd := rand.New(rand.NewPCG(25, 25))
	reqs := make([]request, 10_000)
	for i := range reqs {
		r := request{Method: "GET", Path: "/api/order"}
		switch rnd.IntN(4) {
		case 0:
			r.User = beta[rnd.IntN(len(beta))]
		case 1:
			r.User = keyAccounts[rnd.IntN(len(keyAccounts))]
		case 2:
			r.User = fmt.Sprintf("user-%d", rnd.IntN(50_000))
		default:
			r.User = fmt.Sprintf("user-%d", rnd.IntN(50_000))
			r.Headers = [][2]string{{"cookie", "tenant=acme"}} // a rule on a segment that does not exist
		}
		reqs[i] = r
	}
	reqs[0].User = beta[0] // in both segments
	m, err := d.measure(ctx, "bservice", reqs)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]map[string]int{}
	for i := range reqs {
		g, k := m[0][i], m[1][i]
		if g.Serves != k.Serves || g.Serves != want(&reqs[i]) {
			t.Errorf("request %d %+v: gateway %s, selector %s, core %s", i, reqs[i], g.Serves, k.Serves, want(&reqs[i]))
			if i > 20 {
				t.FailNow()
			}
		}
		kind := "other user"
		switch u := reqs[i].User; {
		case u == beta[0]:
			kind = "beta tester and key account"
		case strings.HasPrefix(u, "key-"):
			kind = "key account"
		case strings.HasPrefix(u, "beta-"):
			kind = "beta tester"
		case len(reqs[i].Headers) > 0:
			kind = "other user, tenant cookie"
		}
		if kinds[kind] == nil {
			kinds[kind] = map[string]int{}
		}
		kinds[kind][g.Serves]++
	}
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		t.Logf("%-28s %v", k, kinds[k])
	}
	if kinds["beta tester"]["stable"] != 0 || kinds["key account"]["canary"] != 0 || kinds["beta tester and key account"]["canary"] != 0 {
		t.Errorf("segments not honoured: %v", kinds)
	}
	for _, k := range []string{"other user", "other user, tenant cookie"} {
		if c, n := kinds[k]["canary"], kinds[k]["canary"]+kinds[k]["stable"]; c*100 > n*30 || c*100 < n*10 {
			t.Errorf("%s: %d of %d in the canary, want about 20 %% (a rule on a missing segment must match nothing)", k, c, n)
		}
	}

	// A beta tester added to the key accounts leaves the canary in both planes; removed, comes back.
	mover := []request{{User: beta[42], Method: "GET", Path: "/api/order"}}
	for _, step := range []struct {
		op   func() (*registrar.SegmentResult, error)
		lane string
	}{
		{func() (*registrar.SegmentResult, error) {
			return s.r.AddToSegment(ctx, "key-accounts", []string{beta[42]})
		}, "stable"},
		{func() (*registrar.SegmentResult, error) {
			return s.r.RemoveFromSegment(ctx, "key-accounts", []string{beta[42]})
		}, "canary"},
	} {
		start := time.Now()
		res, err := step.op()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s committed in %v", res.Written(), time.Since(start).Round(time.Millisecond))
		for p := range d.planes {
			took, err := d.waitPlane(ctx, p, "bservice", mover, start, func(_ int, m []*reply) bool { return m[0].Serves == step.lane })
			if err != nil {
				t.Fatal(err)
			}
			if took > 5*time.Second {
				t.Errorf("%s: the user reached %s after %v (bound 5 s)", d.planes[p].Name(), step.lane, took)
			}
			t.Logf("%s: the user in %s %v after the change was committed", d.planes[p].Name(), step.lane, took.Round(time.Millisecond))
		}
	}
}
