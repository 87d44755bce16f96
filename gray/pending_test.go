package gray_test

import (
	"slices"
	"testing"

	"github.com/graylane/graylane/gray"
)

// pendingCase is a service with a stable lane and a canary, each of whose instances is pending or
// not: registered and passing, but not yet reachable by the enforcer.
func pendingCase(stablePending []bool, canaryMeta map[string]string, canaryPending bool) []gray.Instance[string] {
	var out []gray.Instance[string]
	for i, p := range stablePending {
		id := "s" + string(rune('1'+i))
		out = append(out, gray.Instance[string]{ID: id, Meta: map[string]string{}, Value: id, Pending: p})
	}
	return append(out, gray.Instance[string]{ID: "c1", Meta: canaryMeta, Value: "c1", Pending: canaryPending})
}

// TestPendingBaseWaitsAndNeverFallsBack is the mesh's cold start: stable is registered but its
// connection is not ready yet, a weight-0 canary's is. Production must wait for stable, whatever
// the fallback policy, and never reach the canary.
func TestPendingBaseWaitsAndNeverFallsBack(t *testing.T) {
	for _, f := range gray.Fallbacks {
		snap := gray.NewSnapshot("bservice", pendingCase([]bool{true}, map[string]string{"canary": "true"}, false),
			gray.Options{StickyHeader: "x-user-id", Fallback: f})
		if lanes := snap.Lanes(); len(lanes) != 2 || lanes[1].Name != gray.StableLane || lanes[1].Share != gray.MaxWeight {
			t.Fatalf("Lanes() = %+v, want the pending stable listed as the base with the whole share", lanes)
		}
		for _, user := range []string{"user-1", "user-362", ""} {
			req := userRequest(user)
			headers := map[string][]string{"x-user-id": {user}}
			for _, d := range []*gray.Decision[string]{snap.Decide(req), snap.DecideWithHeaders(headers, req)} {
				if !d.Wait || len(d.Instances) != 0 || d.Lane != gray.StableLane || d.Reason != gray.ReasonBase {
					t.Errorf("fallback %s, user %q: %+v, want to wait for stable", f, user, d)
				}
			}
		}
	}
}

// TestPartlyPendingBaseUsesItsReadyInstances: a lane with one ready instance sends there and does
// not wait.
func TestPartlyPendingBaseUsesItsReadyInstances(t *testing.T) {
	snap := gray.NewSnapshot("bservice", pendingCase([]bool{true, false}, map[string]string{"canary": "true"}, false), sticky)
	d := snap.Decide(userRequest("user-1"))
	if d.Wait || !slices.Equal(d.Instances, []string{"s2"}) || d.Lane != gray.StableLane {
		t.Fatalf("decision %+v, want stable on s2 only", d)
	}
}

// TestPendingGrayLaneWaits: a request sent to a gray lane by its tag, a rule or its weight waits for
// that lane when its instances are pending, rather than going to the base.
func TestPendingGrayLaneWaits(t *testing.T) {
	canary := map[string]string{"canary": "true", "weight": "12", "match": `[{"header":[{"key":"x-test","present":true}]}]`}
	snap := gray.NewSnapshot("bservice", pendingCase([]bool{false}, canary, true), sticky)
	for name, req := range map[string]*gray.StaticRequest{
		"tag":    {Headers: map[string]string{gray.DefaultTagKey: "canary"}},
		"match":  {Headers: map[string]string{"x-test": "1"}},
		"weight": userRequest("user-362"), // bucket 1149, inside 12 %
	} {
		d := snap.Decide(req)
		if !d.Wait || d.Lane != gray.CanaryLane || len(d.Instances) != 0 {
			t.Errorf("%s: %+v, want to wait for the canary", name, d)
		}
	}
	if d := snap.Decide(userRequest("user-1")); d.Wait || d.Lane != gray.StableLane {
		t.Errorf("a user outside the canary: %+v, want stable", d)
	}
	if lanes := snap.Lanes(); len(lanes) != 2 || !slices.Equal(lanes[0].Instances, []string{"c1"}) {
		t.Errorf("Lanes() = %+v, want the pending canary listed with its instance", lanes)
	}
}

// TestFallbackWaitsForPendingWeightedLane: with no registered base, the weighted policy's lanes are
// the fallback; when they are pending the fallback waits for them instead of widening.
func TestFallbackWaitsForPendingWeightedLane(t *testing.T) {
	instances := []gray.Instance[string]{
		{ID: "g1", Meta: map[string]string{"bluegreen": "green", "weight": "40"}, Value: "g1", Pending: true},
		{ID: "t1", Meta: map[string]string{"lane": "test", "match": `[{"header":[{"key":"x-test","present":true}]}]`}, Value: "t1"},
	}
	snap := gray.NewSnapshot("bservice", instances, sticky)
	d := snap.Decide(userRequest("user-1")) // bucket 8915: outside green's 40 %
	if !d.Wait || d.Reason != gray.ReasonFallback || len(d.Instances) != 0 {
		t.Fatalf("decision %+v, want a fallback that waits for green", d)
	}
	any := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id", Fallback: gray.FallbackAny})
	if d := any.Decide(userRequest("user-1")); d.Wait || !slices.Equal(d.Instances, []string{"t1"}) {
		t.Fatalf("fallback any: %+v, want the ready test lane", d)
	}
}
