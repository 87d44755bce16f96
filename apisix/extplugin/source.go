package extplugin

import (
	"sync"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// defaultSource watches the Consul agent named by the standard CONSUL_* environment. APISIX starts
// the runner with only the variables listed in nginx_config.envs: list CONSUL_HTTP_ADDR and
// CONSUL_HTTP_TOKEN there.
func defaultSource() (Source, error) {
	return NewWatcherSource()
}

// WatcherSource is a Source over registrar watchers, one per set of overrides; each shares one
// Consul watch per service among every conf that asks for it.
type WatcherSource struct {
	opts []registrar.WatchOption

	mu       sync.Mutex
	watchers map[gray.Options]*registrar.Watcher
}

// NewWatcherSource returns a Source on the Consul agent that the CONSUL_* environment names,
// passing opts to each watcher. It fails only on a client configuration that cannot be used (a
// missing TLS file, say); it does not contact Consul.
func NewWatcherSource(opts ...registrar.WatchOption) (*WatcherSource, error) {
	s := &WatcherSource{opts: opts, watchers: map[gray.Options]*registrar.Watcher{}}
	if _, err := s.watcher(gray.Options{}); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *WatcherSource) watcher(override gray.Options) (*registrar.Watcher, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.watchers[override]; ok {
		return w, nil
	}
	opts := append(append([]registrar.WatchOption(nil), s.opts...), registrar.WithSnapshotOptions(override))
	w, err := registrar.NewWatcher(registrar.NewConfig(""), opts...)
	if err != nil {
		return nil, err
	}
	s.watchers[override] = w
	return w, nil
}

// View implements Source. It starts the watch and returns at once.
func (s *WatcherSource) View(service string, override gray.Options) View {
	w, err := s.watcher(override)
	if err != nil {
		// The same configuration built the first watcher, so this cannot happen; should it, the
		// first watcher still serves, with the service's own options.
		w, _ = s.watcher(gray.Options{})
	}
	return w.Service(service)
}

// Close implements Source.
func (s *WatcherSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.watchers {
		w.Close()
	}
	clear(s.watchers)
	return nil
}
