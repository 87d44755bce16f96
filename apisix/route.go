package apisix

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
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
	SetLanes(route, service, laneHeader, lanes)
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

// BuildRoute reads the service's lanes and lane header from a synced State and returns its route.
func BuildRoute(spec RouteSpec, st *State) map[string]any {
	header := spec.Conf.TagKey
	if header == "" {
		header = st.LaneHeaders[spec.Conf.Service]
	}
	if header == "" {
		header = gray.DefaultTagKey
	}
	return NewRoute(spec, header, st.routeLanes(spec.Conf.Service))
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

// SetLanes makes route r, a route of service, split by lanes (one traffic-split rule per lane,
// the runner's hop enabled), or, with no lanes, take no hop and have no traffic-split; it keeps the
// header its proxy-rewrite strips equal to the lane header, whatever the lanes, and reports whether
// anything changed. Everything changes in r at once, so that one route update moves the gateway
// from one state to the other: a request never meets rules without the runner that sets their
// header, and a client's lane header is stripped in every state.
func SetLanes(r map[string]any, service, header string, lanes []string) bool {
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
		disabled := meta["disable"] == true
		switch {
		case len(lanes) == 0 && !disabled:
			if meta == nil {
				meta = map[string]any{}
				pre["_meta"] = meta
			}
			meta["disable"] = true
			changed = true
		case len(lanes) > 0 && meta != nil && meta["disable"] != nil:
			delete(meta, "disable")
			if len(meta) == 0 {
				delete(pre, "_meta")
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
