package watch

import (
	"errors"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consulclient"
)

// DefaultKVPrefix is the Consul KV folder where graylane keeps the desired gray state of each service
// and its change history.
const DefaultKVPrefix = "graylane"

// ErrPermission: the token may not read (or, for the registrar, change) what was asked; a retry with
// the same token will not help. HiddenInstancesError matches it, and so do the registrar's permission
// errors.
var ErrPermission = errors.New("graylane: permission denied")

// NewConfig returns the Consul client configuration from the standard environment
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), with addr overriding the address when
// set, and a transport that keeps enough idle connections for many concurrent blocking queries over
// plain HTTP (a watcher holds one per service there; over HTTPS its queries share HTTP/2
// connections).
func NewConfig(addr string) *api.Config { return consulclient.Config(addr) }

// NoAnswerError is returned when Consul at Address accepted a request that is not a blocking query
// (a watch's first query of a service) and did not answer it within After.
type NoAnswerError = consulclient.NoAnswerError
