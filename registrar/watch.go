package registrar

// The watcher. One goroutine per watched service runs blocking queries on the service's passing
// instances. Each answer whose content differs from the last (the index alone proves nothing) is
// decoded into an immutable gray.Snapshot and published with an atomic pointer swap, so readers never
// see a half-updated view and never block. When the index goes backwards (a restarted or replaced
// server) it is reset to 0, and so it is after an error, so that the first answer after an outage
// comes at once. Errors back off exponentially with full jitter; meanwhile the last good
// snapshot stays in force and the view reports itself stale. All services share one Consul client,
// whose transport keeps enough idle connections for one blocking query per service.

import (
	"context"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
)

// Endpoint is an instance as a data plane needs it: where to send traffic.
type Endpoint struct {
	ID      string
	Service string
	Node    string
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
}

// WatchOption configures a Watcher.
type WatchOption func(*Watcher)

// WithSnapshotOptions sets the options every snapshot is built with (tag key, sticky key).
func WithSnapshotOptions(o gray.Options) WatchOption { return func(w *Watcher) { w.options = o } }

// WithWaitTime sets how long one blocking query may wait. Default 5 minutes.
func WithWaitTime(d time.Duration) WatchOption { return func(w *Watcher) { w.waitTime = d } }

// WithBackoff sets the first and the longest delay between retries after errors. Default 100ms, 10s.
func WithBackoff(first, max time.Duration) WatchOption {
	return func(w *Watcher) { w.backoffFirst, w.backoffMax = first, max }
}

// Watcher watches services in Consul and keeps a current gray snapshot of each. It is safe for
// concurrent use; Close stops every goroutine it started.
type Watcher struct {
	client       *api.Client
	token        string
	options      gray.Options
	waitTime     time.Duration
	backoffFirst time.Duration
	backoffMax   time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	services map[string]*ServiceView
}

// NewWatcher returns a Watcher for the agent in cfg (nil: NewConfig("")).
func NewWatcher(cfg *api.Config, opts ...WatchOption) (*Watcher, error) {
	client, cfg, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	w := &Watcher{client: client, token: cfg.Token, waitTime: 5 * time.Minute,
		backoffFirst: 100 * time.Millisecond, backoffMax: 10 * time.Second, services: map[string]*ServiceView{}}
	for _, o := range opts {
		o(w)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	return w, nil
}

// Service returns the view of a service, starting to watch it on the first call. Views are shared:
// every caller asking for the same service gets the same view.
func (w *Watcher) Service(name string) *ServiceView {
	w.mu.Lock()
	defer w.mu.Unlock()
	if v, ok := w.services[name]; ok {
		return v
	}
	v := &ServiceView{name: name, changed: make(chan struct{}), ready: make(chan struct{})}
	v.snap.Store(gray.NewSnapshot[Endpoint](name, nil, w.options))
	v.state.Store(&WatchState{Stale: true})
	w.services[name] = v
	if w.ctx.Err() == nil {
		w.wg.Add(1)
		go w.run(v)
	}
	return v
}

// Close stops watching and waits for every goroutine to end.
func (w *Watcher) Close() error {
	w.cancel()
	w.wg.Wait()
	return nil
}

// ServiceView is the live view of one watched service.
type ServiceView struct {
	name  string
	snap  atomic.Pointer[gray.Snapshot[Endpoint]]
	state atomic.Pointer[WatchState]

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every published change
	ready     chan struct{} // closed on the first answer
	readyOnce sync.Once
}

// WatchState describes a view's freshness.
type WatchState struct {
	// Stale is set while Consul cannot be reached (and before the first answer): the snapshot is the
	// last good one.
	Stale bool
	// LastError is the most recent error, if any since the last success.
	LastError error
	// Updated is when the snapshot last changed.
	Updated time.Time
	// Index is the Consul index of the snapshot's data.
	Index uint64
	// Changes counts the snapshots published.
	Changes uint64
}

// Snapshot returns the current snapshot. It never blocks and never returns nil.
func (v *ServiceView) Snapshot() *gray.Snapshot[Endpoint] { return v.snap.Load() }

// State returns the view's freshness.
func (v *ServiceView) State() WatchState { return *v.state.Load() }

// Changed returns a channel that is closed at the next published change.
func (v *ServiceView) Changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// Ready returns a channel that is closed once the first answer from Consul has been published.
func (v *ServiceView) Ready() <-chan struct{} { return v.ready }

func (w *Watcher) run(v *ServiceView) {
	defer w.wg.Done()
	var index, hash uint64
	var changes uint64
	var updated time.Time
	failures := 0
	for {
		entries, meta, err := w.client.Health().Service(v.name, "", true,
			(&api.QueryOptions{WaitIndex: index, WaitTime: w.waitTime}).WithContext(w.ctx))
		if w.ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			// Ask without waiting once Consul is back: the view is fresh again as soon as it answers,
			// not only at the next change. The content comparison keeps that from being a change.
			index = 0
			v.state.Store(&WatchState{Stale: true, LastError: redact(err, w.token), Updated: updated, Changes: changes})
			if !w.sleep(w.backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		if meta.LastIndex < index {
			index = 0 // the index went backwards (a restarted or new server): start over
		} else {
			index = max(meta.LastIndex, 1) // an index below 1 would never block
		}
		if h := contentHash(entries); h != hash || changes == 0 {
			hash = h
			changes++
			updated = time.Now()
			v.snap.Store(gray.NewSnapshot(v.name, endpoints(entries), w.options))
			v.mu.Lock()
			close(v.changed)
			v.changed = make(chan struct{})
			v.mu.Unlock()
		}
		v.state.Store(&WatchState{Updated: updated, Index: meta.LastIndex, Changes: changes})
		v.readyOnce.Do(func() { close(v.ready) })
	}
}

// backoff returns the delay before retry n: exponential, capped, with full jitter.
func (w *Watcher) backoff(n int) time.Duration {
	d := w.backoffFirst << min(n-1, 20)
	if d <= 0 || d > w.backoffMax {
		d = w.backoffMax
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

func (w *Watcher) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.ctx.Done():
		return false
	}
}

func endpoints(entries []*api.ServiceEntry) []gray.Instance[Endpoint] {
	out := make([]gray.Instance[Endpoint], 0, len(entries))
	for _, e := range entries {
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		ep := Endpoint{ID: e.Service.ID, Service: e.Service.Service, Node: e.Node.Node, Address: addr,
			Port: e.Service.Port, Tags: e.Service.Tags, Meta: e.Service.Meta}
		out = append(out, gray.Instance[Endpoint]{ID: ep.ID, Meta: ep.Meta, Value: ep})
	}
	slices.SortFunc(out, func(a, b gray.Instance[Endpoint]) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// contentHash fingerprints what a snapshot is built from: the passing instances, their addresses,
// tags and meta.
func contentHash(entries []*api.ServiceEntry) uint64 {
	h := fnv.New64a()
	ids := make([]int, len(entries))
	for i := range ids {
		ids[i] = i
	}
	slices.SortFunc(ids, func(a, b int) int { return strings.Compare(entries[a].Service.ID, entries[b].Service.ID) })
	write := func(s string) { h.Write([]byte(s)); h.Write([]byte{0}) }
	for _, i := range ids {
		s := entries[i].Service
		write(s.ID)
		write(entries[i].Node.Node)
		write(s.Address)
		write(entries[i].Node.Address)
		write(string(rune(s.Port)))
		for _, t := range s.Tags {
			write(t)
		}
		for _, k := range slices.Sorted(maps.Keys(s.Meta)) {
			write(k)
			write(s.Meta[k])
		}
		write("\xff")
	}
	return h.Sum64()
}
