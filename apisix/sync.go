package apisix

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/retry"
	"github.com/graylane/graylane/watch"
)

// State is what the gateway should hold for the services a Sync manages.
type State struct {
	// Services are the services whose upstreams and routes the state covers: what graylane wrote
	// for them and is not listed below is pruned. Services not yet read from Consul are left out,
	// so that nothing is pruned on the way up.
	Services []string
	// Upstreams are the desired upstreams of those services, sorted by id.
	Upstreams []Upstream
	// Lanes lists each service's lanes, in lane order: a route's traffic-split rules.
	Lanes map[string][]string
	// Gray holds the services that have a gray lane (one that is not their base). A route of a
	// service without one takes no hop to the runner: its ext-plugin-pre-req is disabled and it has
	// no traffic-split, so its requests cost what a plain route's do.
	Gray map[string]bool
	// LaneHeaders holds each service's lane header (its options in Consul, else the default); a
	// route's own conf may name another.
	LaneHeaders map[string]string
	// Triggers holds what a request must carry for each service to decide it anything but its base
	// (gray.Snapshot.Triggers): a route asks the runner for a decision only then (HopFilter).
	Triggers map[string]gray.Triggers
}

// Changes reports what an Apply wrote.
type Changes struct {
	Written []string // upstream and route ids created or replaced
	Deleted []string // upstream ids deleted
	Kept    []string // upstreams no lane needs that a route still references
	// Retry is set when the gateway refused to delete an upstream that no route of its store names
	// any more: APISIX checks a DELETE against its workers' copy of the routes, which trails the
	// route update just made. The sync applies again shortly instead of at the next resync.
	Retry bool
}

// Empty reports whether nothing was written or deleted.
func (c Changes) Empty() bool { return len(c.Written) == 0 && len(c.Deleted) == 0 }

// Target is where a Sync writes: the Admin API or a standalone apisix.yaml.
type Target interface {
	// Apply makes the gateway hold st, writing only what differs. It stops at the first error;
	// the next Apply starts over from what the gateway holds, so nothing is lost.
	Apply(ctx context.Context, st *State) (Changes, error)
}

// ServiceViews hands out live views of services; *watch.Watcher is one.
type ServiceViews interface {
	Service(name string) *watch.ServiceView
}

// SyncOption configures a Sync.
type SyncOption func(*Sync)

// WithSyncBackoff sets the first and the longest delay between retries after a failed Apply.
// Default 200ms and 15s.
func WithSyncBackoff(first, max time.Duration) SyncOption {
	return func(s *Sync) { s.backoffFirst, s.backoffMax = first, max }
}

// WithResync sets how often the sync compares the gateway with Consul even when Consul did not
// change (repairing edits made behind its back). Default 1 minute.
func WithResync(d time.Duration) SyncOption { return func(s *Sync) { s.resync = d } }

// WithSyncLogger sets where the sync reports what it writes, keeps and retries. Default: discard.
func WithSyncLogger(logf func(format string, args ...any)) SyncOption {
	return func(s *Sync) { s.logf = logf }
}

// Sync keeps a gateway's lane upstreams equal to the services' lanes in Consul. Run it as a
// long-lived process; it is not meant to be shared between goroutines.
type Sync struct {
	target       Target
	views        ServiceViews
	services     []string
	backoffFirst time.Duration
	backoffMax   time.Duration
	resync       time.Duration
	logf         func(string, ...any)
}

// NewSync returns a Sync of services from views into target.
func NewSync(target Target, views ServiceViews, services []string, opts ...SyncOption) *Sync {
	s := &Sync{target: target, views: views, services: slices.Clone(services),
		backoffFirst: 200 * time.Millisecond, backoffMax: 15 * time.Second, resync: time.Minute,
		logf: func(string, ...any) {}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// State returns the desired state from the services' current snapshots. Services that Consul has
// not answered for yet are left out.
func (s *Sync) State() (*State, error) {
	st := &State{Lanes: map[string][]string{}, LaneHeaders: map[string]string{}, Gray: map[string]bool{},
		Triggers: map[string]gray.Triggers{}}
	var errs []error
	for _, name := range s.services {
		v := s.views.Service(name)
		select {
		case <-v.Ready():
		default:
			continue
		}
		snap := v.Snapshot()
		ups, err := Desired(name, snap)
		if err != nil {
			errs = append(errs, err)
		}
		st.Services = append(st.Services, name)
		st.Upstreams = append(st.Upstreams, ups...)
		for _, l := range laneEndpoints(snap) {
			st.Lanes[name] = append(st.Lanes[name], l.name)
		}
		st.Gray[name] = hasGrayLane(snap)
		st.LaneHeaders[name] = snap.TagKey().Lower()
		st.Triggers[name] = snap.Triggers()
	}
	slices.SortFunc(st.Upstreams, func(a, b Upstream) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return st, errors.Join(errs...)
}

// Once waits until Consul has answered for every service (or ctx ends), then applies the state
// once, retrying failures with backoff until ctx ends; an Admin API that refuses the key (401,
// 403) fails it at once.
func (s *Sync) Once(ctx context.Context) (Changes, error) {
	for _, name := range s.services {
		select {
		case <-s.views.Service(name).Ready():
		case <-ctx.Done():
			return Changes{}, fmt.Errorf("apisix sync: waiting for Consul to answer for %s: %w", name, ctx.Err())
		}
	}
	for failures := 1; ; failures++ {
		ch, err := s.apply(ctx)
		if err == nil {
			return ch, nil
		}
		if ctx.Err() != nil || keyRefused(err) {
			return ch, err
		}
		d := retry.Backoff(s.backoffFirst, s.backoffMax, failures)
		s.logf("apisix sync: %v; retrying in %v", err, d.Round(time.Millisecond))
		if !retry.Sleep(ctx, d) {
			return ch, err
		}
	}
}

func (s *Sync) apply(ctx context.Context) (Changes, error) {
	st, err := s.State()
	if err != nil {
		s.logf("apisix sync: %v", err) // the valid upstreams are still applied
	}
	ch, err := s.target.Apply(ctx, st)
	for _, id := range ch.Written {
		s.logf("apisix sync: wrote %s", id)
	}
	for _, id := range ch.Deleted {
		s.logf("apisix sync: deleted upstream %s", id)
	}
	return ch, err
}

// Run applies the state whenever a service changes in Consul, and every resync interval, until ctx
// ends. A failed Apply is retried with exponential backoff and jitter; changes that arrive
// meanwhile are folded into the next attempt, which starts from the latest snapshots. Run returns
// nil when ctx ends, and the error at once when the Admin API refuses the key (401, 403).
func (s *Sync) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	kick := make(chan struct{}, 1)
	notify := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: deferred calls run last first
	for _, name := range s.services {
		v := s.views.Service(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-v.Ready():
				notify()
			case <-ctx.Done():
				return
			}
			for {
				select {
				case <-v.Changed():
					notify()
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	tick := time.NewTicker(s.resync)
	defer tick.Stop()
	failures, retries := 0, 0
	var again <-chan time.Time
	for {
		kicks, ticks := kick, tick.C
		if again != nil {
			kicks, ticks = nil, nil // backing off: the retry picks up whatever changed meanwhile
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kicks:
		case <-ticks:
		case <-again:
		}
		again = nil
		ch, err := s.apply(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if keyRefused(err) {
				return err // no retry can fix a wrong admin key
			}
			failures++
			d := retry.Backoff(s.backoffFirst, s.backoffMax, failures)
			s.logf("apisix sync: %v; retrying in %v", err, d.Round(time.Millisecond))
			again = time.After(d)
			continue
		}
		failures = 0
		if ch.Retry && retries < 10 {
			retries++
			again = time.After(retry.Backoff(s.backoffFirst, 2*time.Second, retries))
			continue
		}
		retries = 0
	}
}
