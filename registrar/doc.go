// Package registrar is graylane's Consul side: it registers instances with gray meta, changes that
// meta in place (weight, match rules, promote, roll back, drain), records every change with
// check-and-set and history in Consul KV, and watches services, publishing an immutable gray snapshot
// of each.
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
// Connections: New and NewWatcher read the standard CONSUL_* environment (address, token, TLS). A
// token never appears in an error or a log line.
package registrar
