// Package apisix keeps an APISIX gateway in step with the gray state graylane keeps in Consul.
//
// An external plugin cannot choose an upstream, so the gateway side has two halves. The plugin
// (package extplugin, run by the graylane-apisix-runner in apisix-plugin/) decides each request's
// lane and sets the lane header; APISIX's traffic-split plugin sends each lane header value to the
// lane's own upstream. This package writes those upstreams and the route that ties the halves
// together:
//
//   - [Desired] turns a service's snapshot into upstreams: graylane-SERVICE-LANE for each lane,
//     nodes = the lane's passing instances, and graylane-SERVICE, the route's own upstream, holding
//     the service's base (stable, or the live colour of a blue/green pair; it follows a switch).
//   - [NewRoute] builds the route: proxy-rewrite (priority 13000, before the runner) strips the
//     client's lane header unless the client is in a trusted network, ext-plugin-pre-req runs
//     graylane (allow_degradation: true), traffic-split maps each lane header value to its
//     upstream, and the route's upstream serves the base. Nothing else reads the lane header:
//     APISIX caches header variables, and a read before the plugin would pin the client's value.
//   - [Sync] watches services and applies the desired upstreams through the Admin API
//     ([AdminTarget]) or into a standalone apisix.yaml ([FileTarget]): create, update, prune,
//     write only on change, retry with backoff. A route graylane created (label
//     graylane-service) has its traffic-split rules kept equal to the service's lanes: new lanes
//     get their upstream before the rule that names them, gone lanes lose their rule before
//     their upstream. An upstream some other route still references is kept, and the sync says so.
package apisix
