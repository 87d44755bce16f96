package consulclient

import (
	"strings"

	"github.com/hashicorp/consul/api"
)

// The ways a client reaches its agent, as Scheme reports them. They decide what the agent's
// limits.http_max_conns_per_client means for a process that holds many blocking queries: over
// HTTPS its queries share HTTP/2 connections (Pooled), over plain HTTP each holds one, and a unix
// socket carries no client address for the agent to count.
const (
	SchemeHTTPS = "https"
	SchemeHTTP  = "http"
	SchemeUnix  = "unix"
)

// Scheme returns how cfg reaches its agent, read as api.NewClient reads the address and the
// scheme (an https:// address, or CONSUL_HTTP_SSL; an http:// address never turns TLS off):
// SchemeHTTPS, SchemeHTTP, or the address's own scheme for anything else (SchemeUnix).
func Scheme(cfg *api.Config) string {
	if s, _, ok := strings.Cut(cfg.Address, "://"); ok && s != SchemeHTTP && s != SchemeHTTPS {
		return s
	}
	if _, https := httpsAddress(cfg); https {
		return SchemeHTTPS
	}
	return SchemeHTTP
}
