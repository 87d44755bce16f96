// Package watch is the data plane's read side of Consul: it follows the passing instances of
// services, and the decision options graylane records for each in KV, with blocking queries, and
// keeps an immutable gray snapshot of each service that a request reads without locks or I/O.
//
// A Watcher is shared by everything in a process that decides where traffic goes (the Kratos
// selector, the APISIX plugin runner, the APISIX upstream sync): one blocking query per service on
// its instances and one on its options, whoever asks. Service and ServiceWith return a ServiceView,
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
// A token never appears in an error or a log line.
package watch
