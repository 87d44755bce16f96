package apisix

import (
	"context"
	"fmt"
	"net/netip"
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
	if rules := TrafficSplitRules(service, laneHeader, lanes); len(rules) > 0 {
		plugins["traffic-split"] = map[string]any{"rules": rules}
	}
	route := map[string]any{
		"id":          spec.RouteID(),
		"name":        spec.RouteID(),
		"desc":        fmt.Sprintf("graylane: %s by gray lane; traffic-split rules kept by graylane apisix sync", service),
		"uri":         spec.URI,
		"upstream_id": BaseUpstreamID(service),
		"labels":      map[string]any{LabelManagedBy: "graylane", LabelService: service},
		"plugins":     plugins,
	}
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
	return NewRoute(spec, header, st.Lanes[spec.Conf.Service])
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
