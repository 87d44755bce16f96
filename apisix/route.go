package apisix

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
)

// Priorities that order the route's plugins. ext-plugin-pre-req runs at 12000 in the rewrite
// phase; traffic-split at 966 in the access phase, after it. The header strip must run before the
// runner, so that a client's lane header never reaches traffic-split when the runner is down and
// allow_degradation lets the request through.
const (
	ExtPluginPriority    = 12000
	StripPriority        = 13000
	TrafficSplitPriority = 966
)

// RouteSpec describes the route for one service.
type RouteSpec struct {
	// ID is the route's id. Default: graylane-SERVICE.
	ID string
	// URI is the route's uri (APISIX syntax, "/api/*"). Required.
	URI string
	// Hosts restricts the route to these hosts; empty matches any.
	Hosts []string
	// Conf is the plugin's conf; Conf.Service names the service.
	Conf extplugin.Conf
}

// RouteID returns the spec's route id.
func (s *RouteSpec) RouteID() string {
	if s.ID != "" {
		return s.ID
	}
	return "graylane-" + s.Conf.Service
}

// Validate checks the spec.
func (s *RouteSpec) Validate() error {
	if err := s.Conf.Validate(); err != nil {
		return err
	}
	if s.URI == "" || !strings.HasPrefix(s.URI, "/") {
		return fmt.Errorf("apisix route: uri %q: give a path such as /api/*", s.URI)
	}
	if !idPattern.MatchString(s.RouteID()) {
		return fmt.Errorf("apisix route: id %q is not a valid APISIX id", s.RouteID())
	}
	return nil
}

// HeaderVar returns the nginx variable APISIX exposes for a request header: http_ followed by the
// name in lower case with '-' as '_'.
func HeaderVar(header string) string {
	return "http_" + strings.ReplaceAll(strings.ToLower(header), "-", "_")
}

// NewRoute returns the route for spec, with one traffic-split rule per lane, as the JSON object
// the Admin API takes (and a standalone apisix.yaml lists). laneHeader is the header the plugin
// sets: the conf's tag_key, else the service's option in Consul, else gray.DefaultTagKey.
//
// lanes are the lanes of a service that has a gray lane; give none for a service without one.
// Then the route takes no hop to the runner (its ext-plugin-pre-req is kept, with its conf, but
// disabled through _meta.disable) and has no traffic-split: it costs what a plain route does, and
// the sync turns both on in one route update when a gray lane appears (SetLanes).
//
// The route reads the lane header in one place only, traffic-split's rules, which run after the
// plugin. proxy-rewrite removes the client's lane header before the runner (priority 13000), except
// for clients in trusted_cidrs (a _meta.filter on remote_addr), so a runner outage under
// allow_degradation cannot let a spoofed header pick a lane.
func NewRoute(spec RouteSpec, laneHeader string, lanes []string) map[string]any {
	service := spec.Conf.Service
	strip := map[string]any{
		"_meta":   map[string]any{"priority": StripPriority},
		"headers": map[string]any{"remove": []any{laneHeader}},
	}
	if cidrs := trustedList(spec.Conf.TrustedCIDRs); len(cidrs) > 0 {
		strip["_meta"].(map[string]any)["filter"] = []any{[]any{"remote_addr", "!", "ipmatch", cidrs}}
	}
	plugins := map[string]any{
		"proxy-rewrite": strip,
		"ext-plugin-pre-req": map[string]any{
			"conf":              []any{map[string]any{"name": extplugin.Name, "value": spec.Conf.JSON()}},
			"allow_degradation": true,
		},
	}
	route := map[string]any{"plugins": plugins}
	SetLanes(route, service, laneHeader, lanes, nil)
	maps.Copy(route, map[string]any{
		"id":          spec.RouteID(),
		"name":        spec.RouteID(),
		"desc":        fmt.Sprintf("graylane: %s by gray lane; traffic-split rules kept by graylane apisix sync", service),
		"uri":         spec.URI,
		"upstream_id": BaseUpstreamID(service),
		"labels":      map[string]any{LabelManagedBy: "graylane", LabelService: service},
	})
	if len(spec.Hosts) > 0 {
		hosts := make([]any, len(spec.Hosts))
		for i, h := range spec.Hosts {
			hosts[i] = h
		}
		route["hosts"] = hosts
	}
	return route
}

// TrafficSplitRules returns one rule per lane: lane header == lane -> graylane-SERVICE-LANE.
func TrafficSplitRules(service, laneHeader string, lanes []string) []any {
	v := HeaderVar(laneHeader)
	rules := make([]any, 0, len(lanes))
	for _, lane := range lanes {
		rules = append(rules, map[string]any{
			"match": []any{map[string]any{"vars": []any{[]any{v, "==", lane}}}},
			"weighted_upstreams": []any{map[string]any{
				"upstream_id": LaneUpstreamID(service, lane), "weight": 1,
			}},
		})
	}
	return rules
}

// trustedList normalises the trusted networks for lua-resty-ipmatcher (CIDRs; a bare address as
// itself). The conf has been validated.
func trustedList(in []string) []any {
	var out []any
	for _, s := range in {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked().String())
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap().String())
		}
	}
	return out
}

// BuildRoute reads the service's lanes, lane header and triggers from a synced State and returns
// its route.
func BuildRoute(spec RouteSpec, st *State) map[string]any {
	header := spec.Conf.TagKey
	if header == "" {
		header = st.LaneHeaders[spec.Conf.Service]
	}
	if header == "" {
		header = gray.DefaultTagKey
	}
	route := NewRoute(spec, header, nil)
	SetLanes(route, spec.Conf.Service, header, st.routeLanes(spec.Conf.Service), st.hopFilter(&spec.Conf, header))
	return route
}

// hopFilter returns the runner hop's filter for a route of the conf's service, from the service's
// triggers; nil (every request) when they are not known or the conf answers every request (its
// echo_header tells every client its lane, the base included).
func (st *State) hopFilter(conf *extplugin.Conf, header string) []any {
	t, ok := st.Triggers[conf.Service]
	if !ok || conf.EchoHeader != "" {
		return nil
	}
	return HopFilter(t, header, conf.TrustedCIDRs)
}

// HopFilter returns the _meta.filter under which a route's ext-plugin-pre-req asks the runner for a
// decision: only for a request that carries one of the headers or cookies the service's triggers
// list, or that comes from a trusted client (trusted_cidrs: only such a client's lane header
// survives the route's header strip). Every other request gets the base decision from the runner,
// so it goes straight to the route's upstream, which holds the base. It returns nil when every
// request may need a decision (t.Always), and a filter that holds for no request when none can
// leave the base.
//
// The filter never reads the lane header's variable: APISIX caches a header variable on its first
// read, and the runner's rewrite of that header clears another cache key than the one the read
// filled (the name with '-', not '_'), so traffic-split would read the value from before the
// runner. The trusted clients stand for it.
func HopFilter(t gray.Triggers, laneHeader string, trusted []string) []any {
	if t.Always {
		return nil
	}
	var or []any
	if cidrs := trustedList(trusted); len(cidrs) > 0 {
		or = append(or, []any{"remote_addr", "ipmatch", cidrs})
	}
	laneVar := HeaderVar(laneHeader)
	wholeCookie := false
	for _, h := range t.Headers {
		v := HeaderVar(h)
		if v == laneVar {
			continue // only a trusted client's lane header reaches the runner
		}
		wholeCookie = wholeCookie || v == "http_cookie"
		or = append(or, []any{v, "~~", ".*"})
	}
	if !wholeCookie {
		for _, c := range t.Cookies {
			// Over the whole Cookie header: a cookie the core finds there has its name followed
			// by '=' somewhere in it.
			or = append(or, []any{"http_cookie", "~~", regexp.QuoteMeta(c) + "="})
		}
	}
	switch len(or) {
	case 0:
		// No request can leave the base: a filter that holds for no client address.
		return []any{[]any{"remote_addr", "!", "ipmatch", []any{"0.0.0.0/0", "::/0"}}}
	case 1:
		return or
	}
	return []any{append([]any{"OR"}, or...)}
}

// routeLanes returns the lanes a service's route splits by: none while it has no gray lane.
func (st *State) routeLanes(service string) []string {
	if !st.Gray[service] {
		return nil
	}
	return st.Lanes[service]
}

// RouteHop reads a route as the gateway holds it: whether its runner hop is on (an
// ext-plugin-pre-req that is not disabled) and the upstreams its traffic-split rules name, in order.
func RouteHop(r map[string]any) (hop bool, upstreams []string) {
	plugins, _ := r["plugins"].(map[string]any)
	pre, _ := plugins["ext-plugin-pre-req"].(map[string]any)
	meta, _ := pre["_meta"].(map[string]any)
	ts, _ := plugins["traffic-split"].(map[string]any)
	rules, _ := ts["rules"].([]any)
	for _, rule := range rules {
		r, _ := rule.(map[string]any)
		weighted, _ := r["weighted_upstreams"].([]any)
		for _, w := range weighted {
			u, _ := w.(map[string]any)
			if id, ok := u["upstream_id"].(string); ok {
				upstreams = append(upstreams, id)
			}
		}
	}
	return pre != nil && meta["disable"] != true, upstreams
}

// RouteHopFilter reads the _meta.filter of a route's runner hop: nil when every request takes it.
func RouteHopFilter(r map[string]any) []any {
	plugins, _ := r["plugins"].(map[string]any)
	pre, _ := plugins["ext-plugin-pre-req"].(map[string]any)
	meta, _ := pre["_meta"].(map[string]any)
	f, _ := meta["filter"].([]any)
	return f
}

// SetLanes makes route r, a route of service, split by lanes (one traffic-split rule per lane,
// the runner's hop enabled under filter, HopFilter's, or for every request when filter is nil),
// or, with no lanes, take no hop and have no traffic-split; it keeps the header its proxy-rewrite
// strips equal to the lane header, whatever the lanes, and reports whether anything changed.
// Everything changes in r at once, so that one route update moves the gateway from one state to the
// other: a request never meets rules without the runner that sets their header, and a client's lane
// header is stripped in every state. A filter that trails the service's rules by a route update
// only sends a request the runner would have sent to a gray lane to the base.
func SetLanes(r map[string]any, service, header string, lanes []string, filter []any) bool {
	plugins, _ := r["plugins"].(map[string]any)
	if plugins == nil {
		plugins = map[string]any{}
		r["plugins"] = plugins
	}
	changed := false
	if pr, ok := plugins["proxy-rewrite"].(map[string]any); ok {
		if hs, ok := pr["headers"].(map[string]any); ok {
			if rm, _ := hs["remove"].([]any); len(rm) != 1 || rm[0] != header {
				hs["remove"] = []any{header}
				changed = true
			}
		}
	}
	if pre, ok := plugins["ext-plugin-pre-req"].(map[string]any); ok {
		meta, _ := pre["_meta"].(map[string]any)
		want := map[string]any{}
		for k, v := range meta {
			if k != "disable" && k != "filter" {
				want[k] = v
			}
		}
		switch {
		case len(lanes) == 0:
			want["disable"] = true
		case filter != nil:
			want["filter"] = filter
		}
		if !sameJSON(meta, want) {
			if len(want) == 0 {
				delete(pre, "_meta")
			} else {
				pre["_meta"] = want
			}
			changed = true
		}
	}
	ts, _ := plugins["traffic-split"].(map[string]any)
	if slices.Equal(rulePairs(ts), wantPairs(service, header, lanes)) {
		return changed
	}
	if len(lanes) == 0 {
		delete(plugins, "traffic-split")
		return true
	}
	if ts == nil {
		ts = map[string]any{}
		plugins["traffic-split"] = ts
	}
	ts["rules"] = TrafficSplitRules(service, header, lanes)
	return true
}

// ApplyRoute writes the service's upstreams through the Admin API (the route's upstream_id must
// exist before the route), then the route, and returns the route written.
func ApplyRoute(ctx context.Context, admin *Admin, views ServiceViews, spec RouteSpec, opts ...SyncOption) (map[string]any, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	s := NewSync(&AdminTarget{Admin: admin}, views, []string{spec.Conf.Service}, opts...)
	if _, err := s.Once(ctx); err != nil {
		return nil, err
	}
	st, err := s.State()
	if err != nil {
		return nil, err
	}
	route := BuildRoute(spec, st)
	if err := admin.PutRoute(ctx, route); err != nil {
		return nil, err
	}
	return route, nil
}

// sameJSON reports whether two _meta objects read the same as JSON (an absent one as an empty one).
func sameJSON(a, b map[string]any) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}
