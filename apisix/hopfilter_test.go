package apisix

import (
	"encoding/json"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/apisixtest"
)

// hopRequest is a request as it reaches a route: its client address and its headers (lower case).
type hopRequest struct {
	remote  string
	headers map[string]string
	path    string
}

var hopRequests = []hopRequest{
	{"203.0.113.9", map[string]string{}, "/"},
	{"203.0.113.9", map[string]string{"userid": "123"}, "/api/user"},
	{"203.0.113.9", map[string]string{"userid": "7", "cookie": "email=li@some-company-name.com"}, "/api/user"},
	{"203.0.113.9", map[string]string{"userid": ""}, "/"},
	{"203.0.113.9", map[string]string{"x-tester": "1", "cookie": "a=b"}, "/beta"},
	{"203.0.113.9", map[string]string{"cookie": "a=b; uid=7"}, "/"},
	{"203.0.113.9", map[string]string{"cookie": "beta.1=yes"}, "/"},
	{"203.0.113.9", map[string]string{"cookie": "beta=1"}, "/"},
	{"203.0.113.9", map[string]string{"x-md-global-gray-lane": "canary"}, "/"}, // spoofed: stripped
	{"10.1.2.3", map[string]string{"x-md-global-gray-lane": "canary"}, "/"},    // trusted
	{"10.1.2.3", map[string]string{}, "/"},
	{"203.0.113.9", map[string]string{"x-user-id": "u1"}, "/"},
}

// TestHopFilterNeverSkipsARequestTheRunnerWouldMove: for services of every kind of rule, a request
// that the route's hop filter keeps from the runner is one the runner would have given the base
// decision, as the gateway sees it (the lane header of an untrusted client stripped first); and the
// filter lets through the requests the rules are about.
func TestHopFilterNeverSkipsARequestTheRunnerWouldMove(t *testing.T) {
	trusted := []string{"10.0.0.0/8"}
	cases := []struct {
		name    string
		canary  map[string]string
		opts    gray.Options
		always  bool
		runners int // requests of hopRequests that ask the runner
	}{
		{"weight 0, no rule", map[string]string{}, gray.Options{}, false, 2},
		{"the article's rules", map[string]string{"match": `[{"header":[{"key":"userid","value_match":"123"}],"cookie":{"regex":"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"},"uri":[{"prefix":["/api/user"]}]}]`}, gray.Options{}, false, 5},
		{"a header rule and a cookie rule", map[string]string{"match": `[{"header":{"key":"X-Tester","present":true}},{"cookie":{"name":"uid","value_match":"7"}},{"cookie":{"name":"beta.1","present":true}}]`}, gray.Options{}, false, 5},
		{"a rule on the whole Cookie header", map[string]string{"match": `[{"cookie":{"regex":"beta"}},{"cookie":{"name":"uid","present":true}}]`}, gray.Options{}, false, 7},
		{"another tag key", map[string]string{"match": `[{"header":{"key":"userid","present":true}}]`}, gray.Options{TagKey: "x-lane"}, false, 5},
		{"a weighted share", map[string]string{"weight": "5"}, gray.Options{StickyHeader: "x-user-id"}, true, len(hopRequests)},
		{"a rule on the path", map[string]string{"match": `[{"uri":{"prefix":"/beta"}}]`}, gray.Options{}, true, len(hopRequests)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			meta := map[string]string{"canary": "true"}
			maps.Copy(meta, c.canary)
			snap := gray.NewSnapshot("bservice", []gray.Instance[string]{
				{ID: "s1", Meta: map[string]string{}, Value: "s1"},
				{ID: "c1", Meta: meta, Value: "c1"},
			}, c.opts)
			header := snap.TagKey().Lower()
			filter := HopFilter(snap.Triggers(), header, trusted)
			if (filter == nil) != c.always {
				t.Fatalf("HopFilter = %v, want nil: %v", filter, c.always)
			}
			// As the Admin API hands it back.
			var read []any
			if body, err := json.Marshal(filter); err != nil || json.Unmarshal(body, &read) != nil {
				t.Fatalf("filter %v does not survive JSON", filter)
			}
			if strings.Contains(string(mustJSON(t, filter)), HeaderVar(header)) {
				t.Fatalf("the filter reads the lane header's variable: %s", mustJSON(t, filter))
			}
			runners := 0
			for _, hr := range hopRequests {
				remote := netip.MustParseAddr(hr.remote)
				headers := maps.Clone(hr.headers)
				if !remote.IsPrivate() { // the route's strip: only a trusted client keeps its lane header
					delete(headers, header)
				}
				pass := true
				if read != nil {
					var err error
					if pass, err = apisixtest.EvalFilter(read, remote, headers); err != nil {
						t.Fatal(err)
					}
				}
				if pass {
					runners++
					continue
				}
				req := &gray.StaticRequest{Headers: headers, URLPath: hr.path, HTTPMethod: "GET", Client: remote}
				if d := snap.Decide(req); d != snap.Base() {
					t.Errorf("%s %v: kept from the runner, which decides %s (%s)", hr.remote, hr.headers, d.Lane, d.Reason)
				}
			}
			if runners != c.runners {
				t.Errorf("%d of %d requests ask the runner, want %d (filter %s)", runners, len(hopRequests), c.runners, mustJSON(t, filter))
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSetLanesKeepsTheHopFilter: the filter goes on with the lanes, changes with the triggers, goes
// away when every request needs the runner, and is no change when it reads the same (as the Admin
// API hands the route back); with no lanes the hop is off and the filter gone.
func TestSetLanesKeepsTheHopFilter(t *testing.T) {
	spec := RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice", TrustedCIDRs: []string{"10.0.0.0/8"}}}
	route := clone(NewRoute(spec, gray.DefaultTagKey, nil))
	lanes := []string{"canary", "stable"}
	userid := HopFilter(gray.Triggers{Headers: []string{"userid", "x-md-global-gray-lane"}}, gray.DefaultTagKey, spec.Conf.TrustedCIDRs)
	if !SetLanes(route, "bservice", gray.DefaultTagKey, lanes, userid) {
		t.Fatal("lanes with a filter: no change")
	}
	route = clone(route)
	pre := func() map[string]any { return route["plugins"].(map[string]any)["ext-plugin-pre-req"].(map[string]any) }
	if meta, _ := pre()["_meta"].(map[string]any); meta["disable"] != nil || meta["filter"] == nil {
		t.Fatalf("ext-plugin-pre-req with lanes and a filter: %v", pre())
	}
	if hop, _ := RouteHop(route); !hop {
		t.Fatal("the hop is off under a filter")
	}
	if SetLanes(route, "bservice", gray.DefaultTagKey, lanes, userid) {
		t.Fatal("the same filter, read back through JSON, is a change")
	}
	tester := HopFilter(gray.Triggers{Headers: []string{"x-md-global-gray-lane", "x-tester"}}, gray.DefaultTagKey, spec.Conf.TrustedCIDRs)
	if !SetLanes(route, "bservice", gray.DefaultTagKey, lanes, tester) {
		t.Fatal("a new filter is no change")
	}
	if !SetLanes(route, "bservice", gray.DefaultTagKey, lanes, nil) {
		t.Fatal("dropping the filter is no change")
	}
	if _, ok := pre()["_meta"]; ok {
		t.Fatalf("a route where every request asks the runner keeps _meta: %v", pre())
	}
	SetLanes(route, "bservice", gray.DefaultTagKey, lanes, tester)
	if !SetLanes(route, "bservice", gray.DefaultTagKey, nil, tester) {
		t.Fatal("the last lane going is no change")
	}
	if meta, _ := pre()["_meta"].(map[string]any); meta["disable"] != true || meta["filter"] != nil {
		t.Fatalf("without lanes: %v", pre())
	}
}

// TestBuildRouteFilterFollowsTheConf: a conf with an echo header answers every request (the base
// too), so its route asks the runner for every request; a service whose triggers the state does not
// hold gets no filter.
func TestBuildRouteFilterFollowsTheConf(t *testing.T) {
	st := &State{Lanes: map[string][]string{"bservice": {"canary", "stable"}}, Gray: map[string]bool{"bservice": true},
		LaneHeaders: map[string]string{"bservice": gray.DefaultTagKey},
		Triggers:    map[string]gray.Triggers{"bservice": {Headers: []string{"userid", gray.DefaultTagKey}}}}
	filterOf := func(conf extplugin.Conf) any {
		r := clone(BuildRoute(RouteSpec{URI: "/", Conf: conf}, st))
		meta, _ := r["plugins"].(map[string]any)["ext-plugin-pre-req"].(map[string]any)["_meta"].(map[string]any)
		return meta["filter"]
	}
	if filterOf(extplugin.Conf{Service: "bservice"}) == nil {
		t.Fatal("no filter from known triggers")
	}
	if f := filterOf(extplugin.Conf{Service: "bservice", EchoHeader: "x-lane-echo"}); f != nil {
		t.Fatalf("a conf with an echo header got filter %v", f)
	}
	delete(st.Triggers, "bservice")
	if f := filterOf(extplugin.Conf{Service: "bservice"}); f != nil {
		t.Fatalf("unknown triggers got filter %v", f)
	}
}
