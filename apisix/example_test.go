package apisix_test

import (
	"encoding/json"
	"fmt"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
)

// The route for bservice with a canary and a stable lane: the header strip before the runner
// (except for the trusted network), the plugin, and one traffic-split rule per lane.
func ExampleNewRoute() {
	spec := apisix.RouteSpec{URI: "/api/*", Conf: extplugin.Conf{
		Service: "bservice", Options: gray.Options{StickyHeader: "x-user-id"}, TrustedCIDRs: []string{"10.0.0.0/8"}}}
	route := apisix.NewRoute(spec, gray.DefaultTagKey, []string{"canary", "stable"})
	plugins, _ := json.Marshal(route["plugins"])
	fmt.Println(route["upstream_id"])
	fmt.Println(string(plugins))
	// Output:
	// graylane-bservice
	// {"ext-plugin-pre-req":{"allow_degradation":true,"conf":[{"name":"graylane","value":"{\"service\":\"bservice\",\"sticky_header\":\"x-user-id\",\"trusted_cidrs\":[\"10.0.0.0/8\"]}"}]},"proxy-rewrite":{"_meta":{"filter":[["remote_addr","!","ipmatch",["10.0.0.0/8"]]],"priority":13000},"headers":{"remove":["x-md-global-gray-lane"]}},"traffic-split":{"rules":[{"match":[{"vars":[["http_x_md_global_gray_lane","==","canary"]]}],"weighted_upstreams":[{"upstream_id":"graylane-bservice-canary","weight":1}]},{"match":[{"vars":[["http_x_md_global_gray_lane","==","stable"]]}],"weighted_upstreams":[{"upstream_id":"graylane-bservice-stable","weight":1}]}]}}
}
