package apisix

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
)

// Default priorities of the plugins a graylane route uses (APISIX 3.x), and their phases: the
// rewrite phase runs before the access phase.
var pluginOrder = map[string]struct {
	phase    int // 0 rewrite, 1 access
	priority int
}{
	"proxy-rewrite":      {0, 1008},
	"ext-plugin-pre-req": {0, ExtPluginPriority},
	"traffic-split":      {1, TrafficSplitPriority},
}

// routeThroughDegradedGateway plays a request through the route the way APISIX runs it when the
// runner is down and allow_degradation lets the request through: plugins by phase and priority
// (_meta.priority overriding), proxy-rewrite's _meta.filter on remote_addr, then traffic-split's
// rules on the header variable. It returns the upstream the request goes to. It knows only the
// forms graylane emits and fails the test on anything else.
func routeThroughDegradedGateway(t *testing.T, route map[string]any, headers map[string]string, remote netip.Addr) string {
	t.Helper()
	route = clone(route) // JSON numbers and slices, as APISIX would read them
	plugins := route["plugins"].(map[string]any)
	type step struct {
		name     string
		phase    int
		priority int
	}
	var steps []step
	for name, conf := range plugins {
		o, ok := pluginOrder[name]
		if !ok {
			t.Fatalf("route uses plugin %s, which the check does not know", name)
		}
		if meta, ok := conf.(map[string]any)["_meta"].(map[string]any); ok {
			if p, ok := meta["priority"].(float64); ok {
				o.priority = int(p)
			}
		}
		steps = append(steps, step{name, o.phase, o.priority})
	}
	sort.Slice(steps, func(i, j int) bool {
		if steps[i].phase != steps[j].phase {
			return steps[i].phase < steps[j].phase
		}
		return steps[i].priority > steps[j].priority
	})
	lower := map[string]string{}
	for k, v := range headers {
		lower[strings.ToLower(k)] = v
	}
	for _, st := range steps {
		conf := plugins[st.name].(map[string]any)
		switch st.name {
		case "proxy-rewrite":
			if !filterPasses(t, conf, remote) {
				continue
			}
			hs := conf["headers"].(map[string]any)
			for _, h := range hs["remove"].([]any) {
				delete(lower, strings.ToLower(h.(string)))
			}
		case "ext-plugin-pre-req":
			if conf["allow_degradation"] != true {
				return "503" // the runner is down and the route does not degrade
			}
		case "traffic-split":
			for _, r := range conf["rules"].([]any) {
				rule := r.(map[string]any)
				vars := rule["match"].([]any)[0].(map[string]any)["vars"].([]any)[0].([]any)
				name := strings.TrimPrefix(vars[0].(string), "http_")
				for h, v := range lower {
					if strings.ReplaceAll(h, "-", "_") == name && vars[1] == "==" && v == vars[2] {
						return rule["weighted_upstreams"].([]any)[0].(map[string]any)["upstream_id"].(string)
					}
				}
			}
		}
	}
	return route["upstream_id"].(string)
}

func filterPasses(t *testing.T, conf map[string]any, remote netip.Addr) bool {
	meta, _ := conf["_meta"].(map[string]any)
	f, ok := meta["filter"]
	if !ok {
		return true
	}
	rule := f.([]any)[0].([]any)
	if len(f.([]any)) != 1 || rule[0] != "remote_addr" || rule[1] != "!" || rule[2] != "ipmatch" {
		t.Fatalf("unexpected filter %v", f)
	}
	for _, c := range rule[3].([]any) {
		p, err := netip.ParsePrefix(c.(string))
		if err != nil {
			a := netip.MustParseAddr(c.(string))
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Contains(remote) {
			return false
		}
	}
	return true
}

func TestRouteIsSpoofProofWhenTheRunnerIsDown(t *testing.T) {
	spec := RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice", TrustedCIDRs: []string{"10.0.0.0/8", "192.168.1.7"}}}
	route := NewRoute(spec, gray.DefaultTagKey, []string{"canary", "green", "stable"})
	spoof := map[string]string{"X-Md-Global-Gray-Lane": "canary"}
	for _, ip := range []string{"203.0.113.9", "11.0.0.1", "192.168.1.8", "2001:db8::1"} {
		if got := routeThroughDegradedGateway(t, route, spoof, netip.MustParseAddr(ip)); got != "graylane-bservice" {
			t.Errorf("spoofed canary from %s goes to %s, want the base upstream", ip, got)
		}
	}
	for _, ip := range []string{"10.1.2.3", "192.168.1.7"} {
		if got := routeThroughDegradedGateway(t, route, spoof, netip.MustParseAddr(ip)); got != "graylane-bservice-canary" {
			t.Errorf("trusted canary tag from %s goes to %s", ip, got)
		}
	}
	// Without trusted networks the header is always stripped.
	open := NewRoute(RouteSpec{URI: "/", Conf: extplugin.Conf{Service: "bservice"}}, gray.DefaultTagKey, []string{"canary"})
	if got := routeThroughDegradedGateway(t, open, spoof, netip.MustParseAddr("10.1.2.3")); got != "graylane-bservice" {
		t.Errorf("no trusted networks: spoof goes to %s", got)
	}
	// The check itself can fail: without the strip, the spoof would win.
	delete(open["plugins"].(map[string]any), "proxy-rewrite")
	if got := routeThroughDegradedGateway(t, open, spoof, netip.MustParseAddr("203.0.113.9")); got != "graylane-bservice-canary" {
		t.Fatalf("the simulation does not model degradation: %s", got)
	}

	pre := route["plugins"].(map[string]any)["ext-plugin-pre-req"].(map[string]any)
	if pre["allow_degradation"] != true {
		t.Errorf("allow_degradation %v", pre["allow_degradation"])
	}
	value, ok := pre["conf"].([]any)[0].(map[string]any)["value"].(string)
	if !ok {
		t.Fatalf("conf value is not a JSON string: %#v", pre["conf"])
	}
	if c, err := extplugin.ParseConf([]byte(value)); err != nil || c.Service != "bservice" {
		t.Errorf("conf value %s: %v", value, err)
	}
}

// TestRouteHasNoEarlyLaneHeaderReader: APISIX caches http_* variables; anything that reads the
// lane header before the plugin would pin the client's value. The only reader is traffic-split.
func TestRouteHasNoEarlyLaneHeaderReader(t *testing.T) {
	for _, header := range []string{gray.DefaultTagKey, "X-Lane"} {
		spec := RouteSpec{URI: "/api/*", Hosts: []string{"api.example.com"},
			Conf: extplugin.Conf{Service: "bservice", Options: gray.Options{TagKey: header}, TrustedCIDRs: []string{"10.0.0.0/8"}}}
		route := clone(NewRoute(spec, header, []string{"canary", "stable"}))
		variable := HeaderVar(header)
		var readers []string
		walk(route, "", func(path string, s string) {
			if strings.Contains(strings.ToLower(s), variable) && !strings.HasPrefix(path, ".plugins.traffic-split.rules") {
				readers = append(readers, path)
			}
		})
		if len(readers) > 0 {
			t.Errorf("%s: the lane header variable is read outside traffic-split at %v", header, readers)
		}
		if _, ok := route["vars"]; ok {
			t.Errorf("%s: route-level vars", header)
		}
		if _, ok := route["filter_func"]; ok {
			t.Errorf("%s: route-level filter_func", header)
		}
		strip := route["plugins"].(map[string]any)["proxy-rewrite"].(map[string]any)
		if p := strip["_meta"].(map[string]any)["priority"].(float64); p <= ExtPluginPriority {
			t.Errorf("%s: header strip at priority %v runs after the runner (%d)", header, p, ExtPluginPriority)
		}
		if got := strip["headers"].(map[string]any)["remove"]; !slices.Equal(got.([]any), []any{header}) {
			t.Errorf("%s: strip removes %v", header, got)
		}
		// The filter reads remote_addr only.
		filter, _ := json.Marshal(strip["_meta"].(map[string]any)["filter"])
		if strings.Contains(string(filter), "http_") {
			t.Errorf("%s: filter reads a header: %s", header, filter)
		}
		// Every plugin on the route either runs after the plugin or does not read headers.
		for name := range route["plugins"].(map[string]any) {
			if _, ok := pluginOrder[name]; !ok {
				t.Errorf("%s: unexpected plugin %s", header, name)
			}
		}
	}
}

func walk(v any, path string, f func(path, s string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			walk(e, path+"."+k, f)
		}
	case []any:
		for i, e := range x {
			walk(e, fmt.Sprintf("%s[%d]", path, i), f)
		}
	case string:
		f(path, x)
	}
}

func TestSyncRewritesOnlyTrafficSplit(t *testing.T) {
	spec := RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice", TrustedCIDRs: []string{"10.0.0.0/8"}}}
	route := clone(NewRoute(spec, gray.DefaultTagKey, []string{"canary", "stable"}))
	before := clone(route)
	if SetLanes(route, "bservice", gray.DefaultTagKey, []string{"canary", "stable"}, nil) {
		t.Errorf("same lanes reported as a change")
	}
	if !SetLanes(route, "bservice", gray.DefaultTagKey, []string{"green", "stable"}, nil) {
		t.Fatalf("new lanes not reported as a change")
	}
	if got := routeLanes(route); !slices.Equal(got, []string{
		"http_x_md_global_gray_lane==green->graylane-bservice-green", "http_x_md_global_gray_lane==stable->graylane-bservice-stable"}) {
		t.Errorf("rules %v", got)
	}
	// A new lane header (the service's option in Consul changed): the strip follows it.
	if !SetLanes(route, "bservice", "x-lane", []string{"green", "stable"}, nil) {
		t.Fatalf("new lane header not reported as a change")
	}
	strip := route["plugins"].(map[string]any)["proxy-rewrite"].(map[string]any)["headers"].(map[string]any)["remove"]
	if !slices.Equal(strip.([]any), []any{"x-lane"}) {
		t.Errorf("strip removes %v after the lane header changed", strip)
	}
	if got := routeLanes(route); !slices.Equal(got, []string{"http_x_lane==green->graylane-bservice-green", "http_x_lane==stable->graylane-bservice-stable"}) {
		t.Errorf("rules %v", got)
	}
	for _, p := range []string{"ext-plugin-pre-req"} {
		a, _ := json.Marshal(before["plugins"].(map[string]any)[p])
		b, _ := json.Marshal(route["plugins"].(map[string]any)[p])
		if string(a) != string(b) {
			t.Errorf("%s changed: %s -> %s", p, a, b)
		}
	}
}

func TestRouteSpecValidate(t *testing.T) {
	for _, spec := range []RouteSpec{
		{URI: "", Conf: extplugin.Conf{Service: "bservice"}},
		{URI: "api", Conf: extplugin.Conf{Service: "bservice"}},
		{URI: "/api", Conf: extplugin.Conf{}},
		{URI: "/api", ID: "bad id", Conf: extplugin.Conf{Service: "bservice"}},
	} {
		if err := spec.Validate(); err == nil {
			t.Errorf("%+v: no error", spec)
		}
	}
}

// TestRouteWithoutGrayLaneTakesNoHop: with no lanes the route keeps its header strip and its
// plugin conf but disables the runner's hop and has no traffic-split; lanes turn both on in one
// change, and taking them away turns both off again.
func TestRouteWithoutGrayLaneTakesNoHop(t *testing.T) {
	spec := RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice"}}
	route := clone(NewRoute(spec, gray.DefaultTagKey, nil))
	plugins := route["plugins"].(map[string]any)
	pre := plugins["ext-plugin-pre-req"].(map[string]any)
	if meta, _ := pre["_meta"].(map[string]any); meta["disable"] != true || pre["conf"] == nil {
		t.Fatalf("ext-plugin-pre-req without a gray lane: %v", pre)
	}
	if _, ok := plugins["traffic-split"]; ok || plugins["proxy-rewrite"] == nil {
		t.Fatalf("plugins without a gray lane: %v", plugins)
	}
	if !SetLanes(route, "bservice", gray.DefaultTagKey, []string{"canary", "stable"}, nil) {
		t.Fatal("a gray lane appearing is not a change")
	}
	if _, ok := pre["_meta"]; ok || len(routeLanes(route)) != 2 {
		t.Fatalf("with a gray lane: %v", plugins)
	}
	if !SetLanes(route, "bservice", gray.DefaultTagKey, nil, nil) || SetLanes(route, "bservice", gray.DefaultTagKey, nil, nil) {
		t.Fatal("the last gray lane going is not exactly one change")
	}
	if meta, _ := pre["_meta"].(map[string]any); meta["disable"] != true || plugins["traffic-split"] != nil {
		t.Fatalf("after the last gray lane: %v", plugins)
	}
}

// TestRouteHopReadsWhatSetLanesWrote: RouteHop reads back the hop and the upstreams a route was
// given, in rule order, through JSON as the Admin API returns it.
func TestRouteHopReadsWhatSetLanesWrote(t *testing.T) {
	spec := RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice"}}
	for _, c := range []struct {
		lanes []string
		hop   bool
		ups   []string
	}{
		{nil, false, nil},
		{[]string{"canary", "stable"}, true, []string{"graylane-bservice-canary", "graylane-bservice-stable"}},
	} {
		route := clone(NewRoute(spec, gray.DefaultTagKey, c.lanes))
		if hop, ups := RouteHop(route); hop != c.hop || !slices.Equal(ups, c.ups) {
			t.Errorf("lanes %v: hop %v, upstreams %v; want %v, %v", c.lanes, hop, ups, c.hop, c.ups)
		}
	}
}
