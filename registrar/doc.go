// Package registrar is graylane's control plane on Consul: it registers instances with gray meta,
// changes that meta in place (weight, match rules, promote, roll back, drain), and records every
// change with check-and-set and history in Consul KV. The data planes read what it writes through
// package watch (each service's instances and decision options, as immutable gray snapshots):
// registrar may import watch, and watch never imports registrar.
//
// Desired state: a change made with graylane is recorded per instance in KV under
// graylane/services/<service>/state, then written into each instance's meta by re-registering it
// through the agent that owns it (Consul ties an instance to the agent that registered it, and
// anti-entropy would revert catalog-only edits). The re-registration carries no checks, so the agent
// keeps the instance's checks and their status. An instance that registers again (a restart, a
// deploy pipeline running apply) takes the recorded state over its spec; a Kratos app gets it from
// DesiredMeta and keeps it with Keep, which also repairs the Kratos registry's re-registration of its
// original meta after a failed TTL update.
//
// Segments: named sets of values (user ids, tenant ids) that match rules (in_segment) and lanes
// (exclude_segment) use, kept in KV under graylane/segments/<name>/ and changed with CreateSegment,
// AddToSegment, RemoveFromSegment, ImportSegment and DeleteSegment. Each change writes a new
// generation of the values and switches the segment's head to it with check-and-set, with a history
// entry, in one transaction when it fits and otherwise after writing the chunks: a reader never sees
// a change half written (see internal/record).
//
// Connections: New reads the standard CONSUL_* environment (address, token, TLS) through NewConfig,
// as watch.New does. A token never appears in an error or a log line.
package registrar
