package extplugin

import (
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// defaultSource watches the Consul agent named by the standard CONSUL_* environment. APISIX starts
// the runner with only the variables listed in nginx_config.envs: list CONSUL_HTTP_ADDR and
// CONSUL_HTTP_TOKEN there.
func defaultSource() (Source, error) {
	return NewWatcherSource()
}

// WatcherSource is the Source on Consul: one watch.Watcher, so that every conf naming a service
// shares one watch of its instances and one of its decision options.
type WatcherSource struct {
	w *watch.Watcher
}

// NewWatcherSource returns a Source on the Consul agent that the CONSUL_* environment names,
// passing opts to the watcher. It fails only on a client configuration that cannot be used (a
// missing TLS file, say); it does not contact Consul.
func NewWatcherSource(opts ...watch.Option) (*WatcherSource, error) {
	w, err := watch.New(watch.NewConfig(""), opts...)
	if err != nil {
		return nil, err
	}
	return &WatcherSource{w: w}, nil
}

// View implements Source: the service's view with its options from Consul, overridden by the
// conf's. It starts the watch and returns at once.
func (s *WatcherSource) View(service string, override gray.Options) View {
	return s.w.ServiceWith(service, override)
}

// Refused returns how many of the watcher's requests the Consul agent refused with 429 (its
// connection limit; see watch.ConnLimitError).
func (s *WatcherSource) Refused() uint64 { return s.w.Refused() }

// Close implements Source.
func (s *WatcherSource) Close() error { return s.w.Close() }
