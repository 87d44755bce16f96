// Package gray is graylane's pure core: the gray rule model, the Consul meta codec, the request
// matchers and the lane decision. It imports nothing from Consul, Kratos or APISIX; every enforcer
// (the Kratos selector filter, the APISIX plugin, the graylane command's explain) calls the same
// [Snapshot.Decide], so a request is routed the same way at the gateway and inside the mesh.
//
// # Meta schema
//
// Each instance carries its gray role in Consul service meta, a flat string map:
//
//	canary     "true" or "false" (default false)
//	bluegreen  "blue" or "green"
//	weight     share of unmatched production traffic in percent, 0–100, up to two decimals;
//	           no key means 0 (the encoder writes none for 0, because Kratos' balancer reads
//	           the same key as a relative weight)
//	match      match rules as compact JSON; longer than 512 characters it is split over
//	           match, match_1, match_2, ... and joined on read
//	lane       optional lane name shared by the instances of one release across services
//	drain      "true" while the instance is being drained: no new traffic is chosen for it
//
// Other keys belong to other users of the meta and are left alone. The YAML form a user writes
// (see [Meta]) is the same schema with match written as YAML.
//
// # Lanes
//
// Every instance belongs to one lane: its lane key, else "canary" when canary is true, else its
// bluegreen colour, else the base lane "stable". A lane's policy (weight, match rules) comes from its
// instances; where they disagree the lane takes the smallest weight and only the match rules all of
// them carry, so it never takes more traffic than any of its instances asked for. The conflict is
// reported in [Snapshot.Problems].
//
// The base lane is "stable" when the service has stable instances. Without them (pure blue/green)
// the base is the lane that asks for nothing: no canary instance, no weight and no match rules. When
// several lanes ask for nothing and blue is one of them, blue is the base, so a green deployed beside
// a live blue takes no production traffic until it is given a weight or promoted; without blue they
// share the base. Both cases are reported. A green lane with weight 100 takes all unmatched traffic,
// and weight 0 rolls it back to blue. A weight on the stable lane only matters to the balancer; the stable lane takes whatever the
// other lanes leave.
//
// # The decision
//
// [Snapshot.Decide] walks four steps and stops at the first that yields a lane:
//
//  1. tag: the request carries a lane tag (header [DefaultTagKey] unless configured) naming a lane
//     this service has.
//  2. match: the first lane, in lane order, one of whose rules the request satisfies. A rule list is
//     OR; inside a rule every condition must hold.
//  3. weight: a bucket in [0, 10000) falls into a weighted lane's range. Ranges are laid end to end
//     in lane order, each as wide as the lane's weight in hundredths of a percent. The bucket is a
//     hash of the sticky key salted with the service name ([Bucket]), so one user stays in one lane,
//     and raising the first weighted lane's weight only adds buckets to it. Without a sticky key the
//     bucket is random.
//  4. base: the base lane.
//
// Lane order: lanes with canary instances first, then the other gray lanes, then the base lane
// "stable"; lanes of the same rank by name.
//
// Lanes exist by registration, not by connection. An enforcer marks an instance that is registered
// but that it cannot reach yet (a client's connection still being made) as [Instance.Pending]: the
// instance keeps its lane in being, and a request for a lane whose instances are all pending gets a
// decision with Wait set and no instances. The enforcer holds such a request until the lane can take
// it, within the request's deadline, and never sends it to another lane: a weight-0 canary whose
// connection is ready first takes no production traffic.
//
// Only a base lane with no registered instance falls back (reason [ReasonFallback]), as the
// service's [Fallback] policy says. The default, [FallbackWeighted], sends the base's traffic to the
// lanes that take production traffic already (a weight above 0), then to draining instances that
// took production traffic; never to a lane that takes only matched or tagged traffic.
// [FallbackNone] sends it nowhere; [FallbackAny] to every active instance, then draining ones. An
// instance whose meta does not decode is never chosen, not even on fallback: a broken canary must not
// take production traffic. With no instance left the decision has no instances, and the enforcer
// fails the request with its own error.
//
// # Cost
//
// Meta is decoded and regular expressions are compiled when a [Snapshot] is built (O(instances)).
// Every decision a snapshot can make (each lane by tag, by each of its rules and by weight, and the
// base) is prepared then too: Decide reads the immutable snapshot only and returns one of them. It
// allocates nothing and its cost does not depend on the number of instances. A Snapshot is safe for
// concurrent use. A request whose headers are one map keyed by lower-case names (gRPC metadata) can
// be decided with [Snapshot.DecideWithHeaders], which reads the map directly when every match rule
// reads headers only.
package gray
