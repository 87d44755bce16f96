// Package extplugin is graylane's plugin for the APISIX Go plugin runner
// (github.com/apache/apisix-go-plugin-runner), used from APISIX's ext-plugin-pre-req.
//
// An external plugin cannot choose an upstream: it can only rewrite the request. So the plugin
// decides the request's lane with the same [gray.Snapshot.Decide] that Kratos clients use, and
// labels the request with the lane header; APISIX's traffic-split plugin then sends each label to the
// lane's upstream, which `graylane apisix sync` keeps in step with Consul (package apisix).
//
// Per request the plugin
//
//  1. removes a lane header the client sent, unless the client's address is in the conf's
//     trusted_cidrs (a trusted client, such as a test harness, may pick its lane);
//  2. decides the lane from what arrived with the call: headers, path, arguments, method and source
//     address, read through the runner's public request interface from the message APISIX sent
//     (no Var or Body calls, which would each cost a round trip to APISIX);
//  3. sets the lane header to a gray lane, overwriting whatever was there, or removes it for the
//     base lane, so base decisions do not travel to the next hop and the route's own upstream
//     (the service's base) serves the request;
//  4. optionally echoes the lane in a response header.
//
// The snapshot comes from one shared watch.Watcher: every conf naming a service shares one
// Consul watch, started when the first conf names it. A request never waits for Consul: before the
// first answer the snapshot is empty and every request goes to the base; while Consul is away the
// last good snapshot stays in force.
//
// Concurrency: the runner calls ParseConf and RequestFilter from one goroutine per APISIX
// connection; both are safe for concurrent use. The plugin uses the runner's public API only
// (pkg/http.Request and its Header). It reads the request's headers from Header().View(), which the
// runner builds on the first call of each request (a Go map of every header, and a clone of it that
// its answer is diffed against), and the arguments from Args() only when a rule reads the query. Of
// its own, RequestFilter allocates only the one-value slice Header().Set stores when the lane
// header must change, and its small per-snapshot table of echo values once after each Consul
// change. It asks for the response header map only to echo the lane.
package extplugin
