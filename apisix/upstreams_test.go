package apisix

import (
	"slices"
	"strings"
	"testing"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

func snapshotOf(insts map[string]map[string]string) *gray.Snapshot[watch.Endpoint] {
	var out []gray.Instance[watch.Endpoint]
	port := 9000
	for _, id := range slices.Sorted(mapKeys(insts)) {
		port++
		out = append(out, gray.Instance[watch.Endpoint]{ID: id, Meta: insts[id],
			Value: watch.Endpoint{ID: id, Address: "10.0.0.1", Port: port}})
	}
	return gray.NewSnapshot("bservice", out, gray.Options{})
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestDesiredBaseFollowsTheLiveLane: the route's own upstream holds stable, or the colour that
// takes the unmatched traffic; it moves on a blue/green switch and back on a rollback.
func TestDesiredBaseFollowsTheLiveLane(t *testing.T) {
	for _, tc := range []struct {
		name  string
		insts map[string]map[string]string
		base  []string
		lanes []string
	}{
		{"stable and a canary", map[string]map[string]string{"a-s1": {}, "b-c1": {"canary": "true", "weight": "10"}},
			[]string{"10.0.0.1:9001"}, []string{"graylane-bservice", "graylane-bservice-canary", "graylane-bservice-stable"}},
		{"blue live, green at 0", map[string]map[string]string{"a-b1": {"bluegreen": "blue"}, "b-g1": {"bluegreen": "green", "weight": "0", "match": `[{"header":[{"key":"x-test","value_match":"1"}]}]`}},
			[]string{"10.0.0.1:9001"}, []string{"graylane-bservice", "graylane-bservice-blue", "graylane-bservice-green"}},
		{"switched to green", map[string]map[string]string{"a-b1": {"bluegreen": "blue"}, "b-g1": {"bluegreen": "green", "weight": "100"}},
			[]string{"10.0.0.1:9002"}, []string{"graylane-bservice", "graylane-bservice-blue", "graylane-bservice-green"}},
		{"green at 50: blue is still the base", map[string]map[string]string{"a-b1": {"bluegreen": "blue"}, "b-g1": {"bluegreen": "green", "weight": "50"}},
			[]string{"10.0.0.1:9001"}, []string{"graylane-bservice", "graylane-bservice-blue", "graylane-bservice-green"}},
		{"broken meta never serves", map[string]map[string]string{"a-s1": {}, "b-x1": {"canary": "maybe"}},
			[]string{"10.0.0.1:9001"}, []string{"graylane-bservice", "graylane-bservice-stable"}},
	} {
		ups, err := Desired("bservice", snapshotOf(tc.insts))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var ids []string
		for _, u := range ups {
			ids = append(ids, u.ID)
			if u.ID == "graylane-bservice" {
				if got := slices.Sorted(mapKeys(u.Nodes)); !slices.Equal(got, tc.base) {
					t.Errorf("%s: base nodes %v, want %v", tc.name, got, tc.base)
				}
			}
		}
		if !slices.Equal(ids, tc.lanes) {
			t.Errorf("%s: upstreams %v, want %v", tc.name, ids, tc.lanes)
		}
	}
}

func TestDesiredRefusesIDsAPISIXWouldRefuse(t *testing.T) {
	long := strings.Repeat("s", 60) // graylane-SERVICE is 69 characters, APISIX takes 64
	_, err := Desired(long, snapshotOf(map[string]map[string]string{"a": {}}))
	if err == nil {
		t.Errorf("a 69-character upstream id was accepted")
	}
}
