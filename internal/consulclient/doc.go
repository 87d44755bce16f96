// Package consulclient is how graylane talks to Consul, shared by the control plane (registrar) and
// the data planes' watcher (watch) so that neither imports the other for it: the client
// configuration from the standard environment, a client whose requests that are not blocking
// queries give up when no answer begins within AnswerTimeout, a client for a process that holds
// many blocking queries at once (Pooled: over HTTPS they share a few HTTP/2 connections, see
// h2pool.go), an event-driven HTTP/2 client that holds thousands of them with no goroutine per
// request (Mux, see h2mux.go), how to read Consul's errors (the HTTP status, a refused token, a connection limit)
// without ever showing the token, and which tagged addresses of an instance are Consul's own.
package consulclient
