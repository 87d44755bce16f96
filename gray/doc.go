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
//	exclude_segment
//	           segment names separated by commas ("vip,internal"): users in these segments are
//	           never sent to the instance's lane by a match rule or a weight (see Segments)
//
// Other keys belong to other users of the meta and are left alone. The YAML form a user writes
// (see [Meta]) is the same schema with match written as YAML.
//
// # Lanes
//
// Every instance belongs to one lane: its lane key, else "canary" when canary is true, else its
// bluegreen colour, else the base lane "stable". A lane's policy (weight, match rules, exclusion)
// comes from its instances; where they disagree the lane takes the smallest weight, only the match
// rules all of them carry and every segment one of them excludes, so it never takes more traffic than
// any of its instances asked for. The conflict is reported in [Snapshot.Problems].
//
// The base lane is "stable" when the service has stable instances. Without them (pure blue/green)
// the base is the lane that asks for nothing: no canary instance, no weight and no match rules. When
// several lanes ask for nothing and blue is one of them, blue is the base, so a green deployed beside
// a live blue takes no production traffic until it is given a weight or promoted; without blue they
// share the base. Both cases are reported. A green lane with weight 100 takes all unmatched traffic,
// and weight 0 rolls it back to blue. A weight on the stable lane only matters to the balancer; the stable lane takes whatever the
// other lanes leave.
//
// # Segments
//
// A [Segment] is a named, immutable set of up to 100,000 values (user IDs, tenant IDs). A match
// condition on a header, a named cookie or a query parameter may ask for the value to be in one
// ("in_segment: beta-testers"), and a lane may exclude the users of segments (exclude_segment). A
// snapshot is given the segments as a [Segments] collection ([WithSegments]) and looks each name up
// once, when it is built; [Snapshot.SegmentNames] (or [ReferencedSegments] on the instances) says
// which it needs. A segment the snapshot was not given never lets traffic through: a condition on it
// matches nothing, and a lane that excludes it is closed (below). Both are reported in
// [Snapshot.Problems] as [*SegmentMissingError].
//
// A lane's exclusion is the union of its instances' exclude_segment, so that it never takes a user
// one of its instances refused. The user a segment is checked against is the request's sticky key
// ([Options].StickyHeader, else StickyCookie), the value the weight bucket hashes; a request without
// one is in no segment. A lane whose exclusion cannot be checked, because the options name no sticky
// key or a segment is missing, is closed: it takes tagged requests only, and its weight range goes to
// the base ([*ExclusionError], [*SegmentMissingError]). Exclusion never applies to a base lane: an
// excluded user would have nowhere else to go; it is ignored and reported.
//
// # The decision
//
// [Snapshot.Decide] walks five steps and stops at the first that yields a lane:
//
//  1. tag: the request carries a lane tag (header [DefaultTagKey] unless configured) naming a lane
//     this service has. A tag wins over every exclusion: it is explicit test traffic.
//  2. exclusion: a lane that excludes a segment holding the request's user, and a closed lane, is
//     skipped by the steps below.
//  3. match: the first lane, in lane order, one of whose rules the request satisfies. A rule list is
//     OR; inside a rule every condition must hold. A lane skipped by step 2 is passed over for the
//     next lane whose rule the request satisfies.
//  4. weight: a bucket in [0, 10000) falls into a weighted lane's range. Ranges are laid end to end
//     in lane order, each as wide as the lane's weight in hundredths of a percent. The bucket is a
//     hash of the sticky key salted with the service name ([Bucket]), so one user stays in one lane,
//     and raising the first weighted lane's weight only adds buckets to it. Without a sticky key the
//     bucket is random. A bucket in the range of a lane skipped by step 2 goes to the base, not to
//     another lane, so that a user's bucket never moves between gray lanes.
//  5. base: the base lane. The reason is [ReasonExcluded] when a lane skipped by step 2 would have
//     taken the request, by weight or by a rule that no later lane matched;
//     [Decision].ExcludedFrom names that lane and [Decision].Segment the segment that kept the
//     request out.
//
// A decision by a rule with an in_segment condition names that segment in [Decision].Segment too.
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
// took production traffic; never to a lane that takes only matched or tagged traffic, nor to a closed
// lane, and a request whose user a lane excludes to no lane that excludes segments. [FallbackNone]
// sends it nowhere; [FallbackAny] to every active instance, then draining ones, exclusions
// notwithstanding: availability before isolation. An
// instance whose meta does not decode is never chosen, not even on fallback: a broken canary must not
// take production traffic. With no instance left the decision has no instances, and the enforcer
// fails the request with its own error.
//
// # Cost
//
// Meta is decoded, regular expressions are compiled and segments are looked up when a [Snapshot] is
// built (O(instances)).
// Every decision a snapshot can make (each lane by tag, by each of its rules and by weight, and the
// base) is prepared then too: Decide reads the immutable snapshot only and returns one of them. It
// allocates nothing and its cost does not depend on the number of instances; an in_segment condition
// or an exclusion costs one hash-table lookup. A Snapshot is safe for
// concurrent use. A request whose headers are one map keyed by lower-case names (gRPC metadata) can
// be decided with [Snapshot.DecideWithHeaders], which reads the map directly when every match rule
// reads headers only.
package gray
