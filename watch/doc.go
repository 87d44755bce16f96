// Package watch is the data plane's read side of Consul: it follows the passing instances of
// services, and the decision options graylane records for each in KV, with blocking queries, and
// keeps an immutable gray snapshot of each service that a request reads without locks or I/O.
//
// A Watcher is shared by everything in a process that decides where traffic goes (the Kratos
// selector, the APISIX plugin runner, the APISIX upstream sync): one blocking query per service on
// its instances, and one on every service's options, whoever asks. Service and ServiceWith return a ServiceView,
// whose Snapshot never blocks and never returns nil; its State says whether Consul could be reached
// (Stale) and why not (LastError). Options returns an OptionsView of a service's options alone.
//
// The package only reads Consul: it writes nothing, and imports none of graylane's control plane
// (package registrar, which records and applies changes, may import it, never the reverse). Its
// errors say what an operator must act on: a token that may not read what it needs
// (HiddenInstancesError, which matches ErrPermission), an agent refusing connections
// (ConnLimitError), an address that never answers (NoAnswerError).
//
// Connections: New reads the standard CONSUL_* environment (address, token, TLS) through NewConfig.
// A token never appears in an error or a log line. Over HTTPS (an https:// address, or
// CONSUL_HTTP_SSL) the queries share a few HTTP/2 connections, 250 to a connection, so one process
// follows thousands of services within the agent's limits.http_max_conns_per_client (default 200),
// and the services' queries wait in an event-driven client, not in goroutines (see instances.go);
// over plain HTTP each query in flight holds a connection and a goroutine, and about 190 services
// fit.
package watch
