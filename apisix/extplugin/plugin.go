package extplugin

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/metrics"
	"github.com/graylane/graylane/watch"
)

// Name is the plugin's name in ext-plugin-pre-req's conf list.
const Name = "graylane"

// Source hands out live views of services, shared by everyone asking for the same service and
// options. The runner's Source is a WatcherSource, on Consul.
type Source interface {
	// View returns the view of service whose snapshots are built with the service's own options
	// (kept in Consul) overridden by override's non-empty fields. It must not block.
	View(service string, override gray.Options) View
	// Close stops every watch.
	Close() error
}

// View is the live state of one service; *watch.ServiceView is one. Its methods are called
// concurrently and must not block.
type View interface {
	// Snapshot returns the current snapshot, never nil.
	Snapshot() *gray.Snapshot[watch.Endpoint]
	// Changed returns a channel closed at the next change.
	Changed() <-chan struct{}
	// Ready returns a channel closed once the snapshot is built from Consul's answer: before, the
	// snapshot is empty and must not decide a request.
	Ready() <-chan struct{}
}

// Option configures a Plugin.
type Option func(*Plugin)

// WithSource sets where snapshots come from. Default: a watch.Watcher on the Consul agent that
// the standard CONSUL_* environment names, created when the first conf is parsed.
func WithSource(newSource func() (Source, error)) Option {
	return func(p *Plugin) { p.newSource = newSource }
}

// WithLogger sets where the plugin reports snapshot problems (instances left out, conflicting
// lane policies). Default: discard.
func WithLogger(logf func(format string, args ...any)) Option {
	return func(p *Plugin) { p.logf = logf }
}

// WithDecisions counts every decision in d (graylane_decisions_total{service,lane,reason}).
func WithDecisions(d *metrics.Decisions) Option {
	return func(p *Plugin) { p.decisions = d }
}

// Plugin is the graylane plugin. Register it with the runner's plugin.RegisterPlugin, then call
// Close when the runner has stopped. It is safe for concurrent use.
type Plugin struct {
	newSource func() (Source, error)
	logf      func(format string, args ...any)
	decisions *metrics.Decisions

	mu       sync.Mutex
	src      Source
	services map[serviceKey]*service
	closed   bool
	done     chan struct{}
	wg       sync.WaitGroup
}

type serviceKey struct {
	name string
	opts gray.Options
}

// service is the state shared by every conf naming one service with the same overrides.
type service struct {
	name  string
	view  View
	table atomic.Pointer[laneTable]

	// known is set once the view is ready; until then requests wait for it, up to their conf's
	// wait counted from watched, the moment the runner began to watch the service.
	known       atomic.Bool
	watched     time.Time
	unknownOnce sync.Once
}

// laneTable holds, for one snapshot, the header value of each lane as a one-element slice, so that
// echoing the lane in a response header allocates nothing. The slices are shared and never written.
type laneTable struct {
	snap   *gray.Snapshot[watch.Endpoint]
	values map[string][]string
}

// conf is what ParseConf hands the runner: the checked conf, prepared for the request path.
type conf struct {
	*Conf
	svc     *service
	trusted []netip.Prefix
	echo    string // canonical response header name, or ""
	wait    time.Duration
}

// New returns the plugin.
func New(opts ...Option) *Plugin {
	p := &Plugin{
		newSource: defaultSource,
		logf:      func(string, ...any) {},
		services:  map[serviceKey]*service{},
		done:      make(chan struct{}),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Name implements the runner's plugin.Plugin.
func (p *Plugin) Name() string { return Name }

// ErrClosed is returned by ParseConf after Close.
var ErrClosed = errors.New("graylane plugin: closed")

// ParseConf implements the runner's plugin.Plugin: it checks the conf and starts watching its
// service if no other conf does yet. It never waits for Consul: the first requests do. A bad conf returns a *ConfError
// naming the field; the runner then leaves the plugin out of the route's chain and logs why.
func (p *Plugin) ParseConf(in []byte) (any, error) {
	c, err := ParseConf(in)
	if err != nil {
		return nil, err
	}
	trusted, _ := c.trusted() // checked by ParseConf
	svc, err := p.service(c.Service, c.Options)
	if err != nil {
		return nil, err
	}
	out := &conf{Conf: c, svc: svc, trusted: trusted, wait: c.unknownWait()}
	if c.EchoHeader != "" {
		out.echo = textproto.CanonicalMIMEHeaderKey(c.EchoHeader)
	}
	return out, nil
}

func (p *Plugin) service(name string, opts gray.Options) (*service, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	key := serviceKey{name, opts}
	if s, ok := p.services[key]; ok {
		return s, nil
	}
	if p.src == nil {
		src, err := p.newSource()
		if err != nil {
			return nil, fmt.Errorf("graylane plugin: consul: %w", err)
		}
		p.src = src
	}
	s := &service{name: name, view: p.src.View(name, opts), watched: time.Now()}
	p.services[key] = s
	p.wg.Add(1)
	go p.report(name, s.view)
	return s, nil
}

// report logs each new snapshot's problems until Close.
func (p *Plugin) report(name string, v View) {
	defer p.wg.Done()
	for {
		changed := v.Changed()
		select {
		case <-changed:
		case <-p.done:
			return
		}
		snap := v.Snapshot()
		lanes := snap.Lanes()
		names := make([]string, len(lanes))
		for i, l := range lanes {
			names[i] = fmt.Sprintf("%s(%d)", l.Name, len(l.Instances))
		}
		p.logf("graylane: service %s: lanes %s", name, strings.Join(names, " "))
		for _, err := range snap.Problems() {
			p.logf("graylane: service %s: %v", name, err)
		}
	}
}

// Close stops the Consul watches and waits for the plugin's goroutines. Confs parsed before keep
// serving their last snapshot.
func (p *Plugin) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	src := p.src
	p.mu.Unlock()
	var err error
	if src != nil {
		err = src.Close()
	}
	p.wg.Wait()
	return err
}

// RequestFilter implements the runner's plugin.Plugin: it decides the request's lane and sets or
// removes the lane header. Once the runner has Consul's answer for the service it never writes to w
// (that would answer the client instead of proxying) and never blocks. Of its own it allocates only
// the one-value slice that Header().Set stores when the lane header must change; the runner
// allocates its header map (see request). Before that answer the request waits for it, up to the
// conf's unknown_wait_ms counted from when the runner began to watch the service, and past that
// gets what on_unknown says.
func (p *Plugin) RequestFilter(c any, w http.ResponseWriter, r pkgHTTP.Request) {
	cf, ok := c.(*conf)
	if !ok {
		return
	}
	if !cf.svc.known.Load() && !p.await(cf) {
		p.unknown(cf, w, r)
		return
	}
	snap := cf.svc.view.Snapshot()
	key := snap.TagKey()

	q := requestPool.Get().(*request)
	q.bind(r)
	sent, copies := q.header(key)
	if copies > 0 && !cf.trusts(q.ClientIP()) {
		q.hideTag = key.Lower() // an untrusted client's lane tag is not part of the decision
	}
	d := snap.Decide(q)
	q.release()
	if p.decisions != nil {
		p.decisions.Observe(snap.Service(), d.Lane, d.Reason)
	}

	// Change the lane header only when it must change, so that the runner's answer carries no
	// header change otherwise. The upstream must see exactly the decided lane, or no lane header.
	switch {
	case d.Propagate():
		if copies != 1 || sent != d.Lane {
			setHeader(r, key.Canonical(), d.Lane)
		}
	case copies > 0:
		delHeader(r, key.Canonical())
	}
	if cf.echo != "" && d.Lane != "" {
		r.RespHeader()[cf.echo] = cf.svc.lanes(snap).value(d.Lane)
	}
}

// await waits until the conf's service has Consul's answer, or its wait has passed since the
// runner began to watch the service, or the plugin closes. It reports whether the answer is there.
func (p *Plugin) await(cf *conf) bool {
	s := cf.svc
	ready := s.view.Ready()
	select {
	case <-ready:
		s.known.Store(true)
		return true
	default:
	}
	left := time.Until(s.watched.Add(cf.wait))
	if left <= 0 {
		return false
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-ready:
		s.known.Store(true)
		return true
	case <-t.C:
	case <-p.done:
	}
	return false
}

// unknown answers a request whose service's lanes are still unknown after its wait: a 503 the
// client may retry, or, with on_unknown "base", the route's own upstream without an untrusted lane
// header. It is counted and logged once per service.
func (p *Plugin) unknown(cf *conf, w http.ResponseWriter, r pkgHTTP.Request) {
	answer := cmp.Or(cf.OnUnknown, OnUnknownReject)
	if p.decisions != nil {
		p.decisions.ObserveUnknown(cf.Service)
	}
	cf.svc.unknownOnce.Do(func() {
		p.logf("graylane: service %s: Consul has not answered for it within %v of the runner watching it; "+
			"requests get on_unknown %q until it does%s", cf.Service, cf.wait, answer, lastError(cf.svc.view))
	})
	if answer == OnUnknownBase {
		key := cf.svc.view.Snapshot().TagKey()
		q := requestPool.Get().(*request)
		q.bind(r)
		_, copies := q.header(key)
		trusted := copies > 0 && cf.trusts(q.ClientIP())
		q.release()
		if copies > 0 && !trusted {
			delHeader(r, key.Canonical())
		}
		return
	}
	w.Header().Set("Retry-After", "1")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "graylane: the lanes of %s are not known yet: Consul has not answered\n", cf.Service)
}

// lastError describes why a view has no answer yet, when it can say.
func lastError(v View) string {
	if s, ok := v.(interface{ State() watch.State }); ok {
		if err := s.State().LastError; err != nil {
			return " (last error: " + err.Error() + ")"
		}
	}
	return ""
}

// ResponseFilter implements the runner's plugin.Plugin; graylane does nothing after the upstream.
func (p *Plugin) ResponseFilter(any, pkgHTTP.Response) {}

func (c *conf) trusts(addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	for _, p := range c.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// lanes returns the lane table of snap, building it once per snapshot.
func (s *service) lanes(snap *gray.Snapshot[watch.Endpoint]) *laneTable {
	if t := s.table.Load(); t != nil && t.snap == snap {
		return t
	}
	t := &laneTable{snap: snap, values: map[string][]string{}}
	var base []string
	for _, l := range snap.Lanes() {
		t.values[l.Name] = []string{l.Name}
		if l.Base {
			base = append(base, l.Name)
		}
	}
	if len(base) > 1 {
		joined := strings.Join(base, "+")
		t.values[joined] = []string{joined}
	}
	s.table.Store(t)
	return t
}

func (t *laneTable) value(lane string) []string {
	if v, ok := t.values[lane]; ok {
		return v
	}
	return []string{lane}
}
