package watch

// The watcher. One goroutine per watched service runs blocking queries on the service's passing
// instances. Each answer whose content differs from the last (the index alone proves nothing) is
// decoded into an immutable gray.Snapshot and published with an atomic pointer swap, so readers never
// see a half-updated view and never block. After an error the index is reset to 0, so that the first
// answer after an outage comes at once. An answer older than the one the watch holds (a server that
// restarted and is still replaying its log, with instances missing) is set aside, and the server
// asked again, until it has caught up (see behindServer). Errors back off exponentially with full
// jitter; meanwhile the last good snapshot stays in force and the view reports itself stale. One
// more blocking query, for all the services, follows the decision options they keep in KV (sticky
// key, tag key; see options.go); a change of a service's options rebuilds its snapshots too. All
// services share one Consul client (consulclient.Pooled): over HTTPS its queries share a few HTTP/2
// connections, 250 to a connection; over plain HTTP each holds a connection of its own.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/retry"
)

// Endpoint is an instance as a data plane needs it: where to send traffic.
type Endpoint struct {
	ID      string
	Service string
	Node    string
	Address string
	Port    int
	// TaggedAddresses are the instance's own tagged addresses, as registered (Kratos' registry
	// keeps one endpoint URL per scheme here, for example "grpc" -> "grpc://10.0.0.7:9000"). The
	// lan and wan addresses Consul keeps itself are left out.
	TaggedAddresses map[string]string
	Tags            []string
	Meta            map[string]string
}

// Instances is one answer from Consul on a service's passing instances, sorted by ID. It is never
// modified: each change publishes a new one, so a reader may keep it and compare pointers.
type Instances struct {
	// Index is the Consul index of the answer.
	Index uint64
	// Endpoints are the passing instances.
	Endpoints []Endpoint
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithSnapshotOptions sets options that override, field by field, the decision options each service
// keeps in Consul, for every view of this watcher.
func WithSnapshotOptions(o gray.Options) Option { return func(w *Watcher) { w.options = o } }

// WithWaitTime sets how long one blocking query may wait. Default 5 minutes.
func WithWaitTime(d time.Duration) Option { return func(w *Watcher) { w.waitTime = d } }

// WithBackoff sets the first and the longest delay between retries after errors. Default 100ms, 10s.
func WithBackoff(first, max time.Duration) Option {
	return func(w *Watcher) { w.backoffFirst, w.backoffMax = first, max }
}

// WithLogger sets where the watcher reports what an operator must act on: a Consul agent
// refusing its connections (ConnLimitError), at most once a minute. Default: nowhere.
func WithLogger(logf func(format string, args ...any)) Option {
	return func(w *Watcher) { w.logf = logf }
}

// WithKVPrefix sets the KV folder where the services' recorded state (with their decision options)
// is kept, as registrar.WithKVPrefix does for the registrar. Default: DefaultKVPrefix.
func WithKVPrefix(prefix string) Option {
	return func(w *Watcher) { w.prefix = strings.Trim(prefix, "/") }
}

// Watcher watches services in Consul and keeps a current gray snapshot of each. It is safe for
// concurrent use; Close stops every goroutine it started.
type Watcher struct {
	conn         *consulclient.Pooled
	client       *api.Client
	mux          *consulclient.Mux    // the event-driven client over HTTPS (instances.go); nil over HTTP
	muxOff       atomic.Bool          // the agent does not speak HTTP/2: goroutines after all
	optConn      *consulclient.Pooled // the options watch's own connections (options.go)
	optClient    *api.Client
	token        string
	prefix       string
	options      gray.Options
	waitTime     time.Duration
	backoffFirst time.Duration
	backoffMax   time.Duration
	agent        string
	logf         func(format string, args ...any)

	refused     atomic.Uint64 // requests the agent refused with 429
	lastRefusal atomic.Int64  // when a refusal was last reported, Unix nanoseconds

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu             sync.Mutex
	services       map[string]*serviceWatch
	optionsStarted bool          // the options folder's watch runs (options.go)
	optionsTried   chan struct{} // closed once its first query has been answered or has failed
	optionsOnce    sync.Once

	// The options folder as Consul last answered (nil before), and the services whose state is to
	// be read for options recorded before the folder existed.
	optFolder    atomic.Pointer[optionsFolder]
	stateMu      sync.Mutex
	stateQueue   []*serviceWatch
	stateReaders int

	segMu    sync.Mutex
	segments map[string]*segmentWatch
}

// New returns a Watcher for the agent in cfg (nil: NewConfig("")).
func New(cfg *api.Config, opts ...Option) (*Watcher, error) {
	conn, err := consulclient.NewPooled(cfg)
	if err != nil {
		return nil, err
	}
	cfg = conn.Config
	// The options watch gets connections of its own, so that it holds one even when the services'
	// queries meet the agent's connection limit (plain HTTP, see runOptions).
	optCfg := *cfg
	optCfg.Transport = cfg.Transport.Clone()
	optConn, err := consulclient.NewPooled(&optCfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	var mux *consulclient.Mux
	if conn.Multiplexed() { // HTTPS: the instance queries go through the event-driven client
		if mux, err = consulclient.NewMux(cfg); err != nil {
			conn.Close()
			optConn.Close()
			return nil, err
		}
	}
	w := &Watcher{conn: conn, client: conn.Client, mux: mux, optConn: optConn, optClient: optConn.Client,
		optionsTried: make(chan struct{}), token: cfg.Token, prefix: DefaultKVPrefix, waitTime: 5 * time.Minute,
		backoffFirst: 100 * time.Millisecond, backoffMax: 10 * time.Second, services: map[string]*serviceWatch{},
		segments: map[string]*segmentWatch{}, agent: cfg.Address, logf: func(string, ...any) {}}
	for _, o := range opts {
		o(w)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	return w, nil
}

// serviceWatch is what the watcher follows of one service: its passing instances, with a blocking
// query of its own, and its decision options, from the watcher's one query on all of them; and the
// views built from them.
type serviceWatch struct {
	name string
	opts *OptionsView

	state atomic.Pointer[State] // shared by the views; Changes is filled in per view

	endpoints atomic.Pointer[Instances] // nil before the first answer

	mu          sync.Mutex
	instances   []gray.Instance[Endpoint]
	options     gray.Options
	haveEntries bool
	haveOptions bool
	views       map[gray.Options]*ServiceView

	// The options of its state, read once when the options folder has no key for it (nil until
	// read), and whether that read is queued (options.go).
	stateOptions *gray.Options
	stateQueued  bool

	// The segments the instances name (see follow), their watches, and the set built from them.
	segmentNames   []string
	segmentWatches []*segmentWatch
	segments       atomic.Pointer[gray.Segments]
	segmentsLoaded bool // Consul has answered for each of them
}

// watch returns the watch of a service, starting it on first use. w.mu must be held.
func (w *Watcher) watch(name string) *serviceWatch {
	if sw, ok := w.services[name]; ok {
		return sw
	}
	sw := &serviceWatch{name: name, views: map[gray.Options]*ServiceView{}, segmentsLoaded: true,
		opts: &OptionsView{changed: make(chan struct{}), ready: make(chan struct{})}}
	sw.opts.value.Store(&gray.Options{})
	sw.state.Store(&State{Stale: true})
	w.services[name] = sw
	if w.ctx.Err() == nil {
		w.startInstances(sw)
		w.startOptions()
		w.resolveOptions(sw)
	}
	return sw
}

// Service returns the view of a service, starting to watch it on the first call. Views are shared:
// every caller asking for the same service gets the same view. Its snapshots use the decision
// options the service keeps in Consul, overridden by WithSnapshotOptions.
func (w *Watcher) Service(name string) *ServiceView { return w.ServiceWith(name, gray.Options{}) }

// ServiceWith returns a view of a service whose snapshots use the service's options from Consul,
// overridden by WithSnapshotOptions and then by the non-empty fields of override. Views of one
// service share its watch: one blocking query on its instances (and the watcher's one on every
// service's options).
func (w *Watcher) ServiceWith(name string, override gray.Options) *ServiceView {
	w.mu.Lock()
	sw := w.watch(name)
	w.mu.Unlock()
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if v, ok := sw.views[override]; ok {
		return v
	}
	v := &ServiceView{watch: sw, override: w.options.Override(override), changed: make(chan struct{}), ready: make(chan struct{})}
	sw.views[override] = v
	sw.publish(v)
	return v
}

// Options returns the view of the decision options a service keeps in Consul, starting to watch the
// service on the first call.
func (w *Watcher) Options(name string) *OptionsView {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.watch(name).opts
}

// ErrClosed is the LastError of every view of a closed Watcher.
var ErrClosed = errors.New("watch: the watcher is closed")

// Close stops watching, waits for every goroutine to end and closes the connections to Consul. Its
// views keep their last snapshot and turn stale: nothing follows Consul for them any more.
func (w *Watcher) Close() error {
	w.cancel()
	w.wg.Wait()
	if w.mux != nil {
		w.mux.Close()
	}
	w.conn.Close()
	w.optConn.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sw := range w.services {
		sw.mu.Lock()
		sw.setState(State{Stale: true, LastError: ErrClosed}, false)
		sw.mu.Unlock()
	}
	return nil
}

// HiddenInstancesError says that Consul left instances of a service out of an answer because the
// token may not read them. Consul does not refuse such a query: it answers without the instances on
// nodes the token may not read (all of them for a token without node read), which would look like a
// service that lost its instances. A Watcher keeps its last complete answer and turns stale with it;
// the registrar's Instances returns it instead of a short list. It matches ErrPermission.
type HiddenInstancesError struct {
	Service string
}

func (e *HiddenInstancesError) Error() string {
	return fmt.Sprintf("watch: Consul left instances of %s out of its answer because the token may not read them; "+
		"the token needs service read on %s and node read on the nodes they run on (node_prefix \"\" read)", e.Service, e.Service)
}

func (e *HiddenInstancesError) Is(target error) bool { return target == ErrPermission }

// ServiceView is the live view of one watched service.
type ServiceView struct {
	watch    *serviceWatch
	override gray.Options
	snap     atomic.Pointer[gray.Snapshot[Endpoint]]

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every published change
	ready     chan struct{} // closed on the first answer
	readyOnce sync.Once
	changes   uint64
}

// State describes a view's freshness.
type State struct {
	// Stale is set while Consul cannot be reached (and before the first answer): the snapshot is the
	// last good one.
	Stale bool
	// LastError is the most recent error, if any since the last success.
	LastError error
	// Updated is when the snapshot last changed.
	Updated time.Time
	// Index is the Consul index of the snapshot's instances.
	Index uint64
	// Changes counts the snapshots published.
	Changes uint64
}

// Snapshot returns the current snapshot. It never blocks and never returns nil.
func (v *ServiceView) Snapshot() *gray.Snapshot[Endpoint] { return v.snap.Load() }

// Instances returns the service's passing instances as Consul last answered, or nil before it first
// answered. The list is shared by every view of the service and never modified.
func (v *ServiceView) Instances() *Instances { return v.watch.endpoints.Load() }

// Stale reports what State().Stale does, without locking: cheap enough for every request.
func (v *ServiceView) Stale() bool { return v.watch.state.Load().Stale }

// State returns the view's freshness.
func (v *ServiceView) State() State {
	s := *v.watch.state.Load()
	v.mu.Lock()
	s.Changes = v.changes
	v.mu.Unlock()
	return s
}

// Changed returns a channel that is closed at the next published change.
func (v *ServiceView) Changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// Ready returns a channel that is closed once Consul has answered for the service's instances, its
// options and every segment its instances name, and the snapshot built from them is published.
func (v *ServiceView) Ready() <-chan struct{} { return v.ready }

// OptionsView is the live view of the decision options a service keeps in Consul.
type OptionsView struct {
	value atomic.Pointer[gray.Options]
	err   atomic.Pointer[error]

	mu        sync.Mutex
	changed   chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
}

// Load returns the service's options; the zero Options until Consul answered or when none are set.
// It never blocks.
func (o *OptionsView) Load() gray.Options { return *o.value.Load() }

// Current returns the service's options as last published. Each change publishes a new value and
// none is modified, so comparing the pointer with an earlier one tells whether the options changed,
// more cheaply than comparing values. It never blocks.
func (o *OptionsView) Current() *gray.Options { return o.value.Load() }

// Err returns the last error reading the options, nil after a success.
func (o *OptionsView) Err() error {
	if p := o.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Changed returns a channel that is closed at the next change of the options.
func (o *OptionsView) Changed() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

// Ready returns a channel that is closed once Consul has answered (or refused the token, in which case
// the options stay at their zero value and Err says why).
func (o *OptionsView) Ready() <-chan struct{} { return o.ready }

// publish builds v's snapshot from the latest instances and options and publishes it. sw.mu must be
// held.
func (sw *serviceWatch) publish(v *ServiceView) {
	v.snap.Store(gray.NewSnapshot(sw.name, sw.instances, sw.options.Override(v.override), gray.WithSegments(sw.segments.Load())))
	v.mu.Lock()
	v.changes++
	close(v.changed)
	v.changed = make(chan struct{})
	v.mu.Unlock()
	if sw.haveEntries && sw.haveOptions && sw.segmentsLoaded {
		v.readyOnce.Do(func() { close(v.ready) })
	}
}

// publishAll rebuilds every view. sw.mu must be held.
func (sw *serviceWatch) publishAll() {
	for _, v := range sw.views {
		sw.publish(v)
	}
}

// setState stores the watch's freshness: updated says the snapshots changed now. sw.mu must be held.
func (sw *serviceWatch) setState(st State, updated bool) {
	prev := sw.state.Load()
	st.Updated = prev.Updated
	if updated {
		st.Updated = time.Now()
	}
	if st.Stale {
		st.Index = prev.Index
	}
	sw.state.Store(&st)
}

// instanceLoop is what a service's instance query keeps from one answer to the next.
type instanceLoop struct {
	index    uint64 // the WaitIndex of the next query; 0 asks without waiting
	hash     uint64 // the content hash of the instances held
	held     uint64 // the index of the answer the snapshots are built from
	behind   behindServer
	failures int
}

// instancesQuery is one query to ask next: without waiting when index is 0, after pause when it is
// set.
type instancesQuery struct {
	index uint64
	pause time.Duration
	reask bool // a non-blocking query that replaces the blocking answer just received
}

// answered takes one answer of sw's instance query (entries and meta, or err) and says what to ask
// next. reask is set when the answer is the non-blocking query that answered's own reask asked for.
func (w *Watcher) answered(sw *serviceWatch, l *instanceLoop, entries []*api.ServiceEntry, meta *api.QueryMeta, err error, reask bool) instancesQuery {
	if err == nil && !reask && l.index > 0 && dropsAny(sw.endpoints.Load(), entries) {
		// Instances went away, or the token lost the right to read them: an answer to a blocking
		// query does not say which (Consul sets the filtered flag only when it does not wait). Ask
		// again without waiting.
		return instancesQuery{reask: true}
	}
	if err == nil && meta.ResultsFilteredByACLs {
		err = &HiddenInstancesError{Service: sw.name}
	}
	if err != nil {
		l.failures++
		err = w.refusal(err)
		// Ask without waiting once Consul is back: the view is fresh again as soon as it answers,
		// not only at the next change. The content comparison keeps that from being a change.
		l.index = 0
		sw.mu.Lock()
		sw.setState(State{Stale: true, LastError: consulclient.Redact(err, w.token)}, false)
		sw.mu.Unlock()
		return instancesQuery{pause: retry.Backoff(w.backoffFirst, w.backoffMax, l.failures)}
	}
	l.failures = 0
	if l.behind.older(meta.LastIndex, l.held) {
		l.index = 0 // ask again, without waiting, after a pause
		return instancesQuery{pause: behindPause}
	}
	if meta.LastIndex < l.index {
		l.index = 0 // the index went backwards (a cluster that started over): start over
	} else {
		l.index = max(meta.LastIndex, 1) // an index below 1 would never block
	}
	l.held = meta.LastIndex
	sw.mu.Lock()
	h := contentHash(entries)
	changed := h != l.hash || !sw.haveEntries
	if changed {
		l.hash = h
		sw.instances, sw.haveEntries = endpoints(entries), true
		list := &Instances{Index: meta.LastIndex, Endpoints: make([]Endpoint, len(sw.instances))}
		for i, in := range sw.instances {
			list.Endpoints[i] = in.Value
		}
		sw.endpoints.Store(list)
		w.follow(sw)
		sw.publishAll()
	}
	sw.setState(State{Index: meta.LastIndex}, changed)
	sw.mu.Unlock()
	return instancesQuery{index: l.index}
}

// runInstances follows sw's instances with one blocking query at a time on the watcher's client,
// in a goroutine of its own (see instances.go for the event-driven way over HTTP/2).
func (w *Watcher) runInstances(sw *serviceWatch) {
	defer w.wg.Done()
	select {
	case <-w.optionsTried: // the options watch holds its connection before the services ask
	case <-w.ctx.Done():
		return
	}
	w.followInstances(sw, &instanceLoop{}, instancesQuery{})
}

// followInstances asks q and every query after it, blocking, until the watcher closes.
func (w *Watcher) followInstances(sw *serviceWatch, l *instanceLoop, q instancesQuery) {
	for {
		if q.pause > 0 && !retry.Sleep(w.ctx, q.pause) {
			return
		}
		opts := &api.QueryOptions{}
		if !q.reask {
			opts.WaitIndex, opts.WaitTime = q.index, w.waitTime
		}
		entries, meta, err := w.client.Health().Service(sw.name, "", true, opts.WithContext(w.ctx))
		if w.ctx.Err() != nil {
			return
		}
		q = w.answered(sw, l, entries, meta, err, q.reask)
	}
}

// ConnLimitError is a request the Consul agent refused with 429 Too Many Requests: the process
// holds more connections to it than the agent's limits.http_max_conns_per_client allows (default
// 200). Over plain HTTP a watcher holds one per watched service and one for all their options, so
// at the default about 190 services fit in one process; over HTTPS its queries share HTTP/2
// connections, 250 to each (2,000 services hold 9). The watcher keeps retrying with back-off, its
// views stay on their last answer (stale), and it reports the refusal through its logger at most
// once a minute and counts it (Refused).
type ConnLimitError struct {
	Agent string
	Err   error
}

func (e *ConnLimitError) Error() string {
	return fmt.Sprintf("the Consul agent at %s refused a watch with 429 Too Many Requests: this process holds more "+
		"connections to it than its limits.http_max_conns_per_client allows (default 200; over plain HTTP graylane's "+
		"watcher holds one per service): reach the agent over HTTPS (its queries then share HTTP/2 connections), raise "+
		"that limit in the agent's configuration, or follow fewer services per process", e.Agent)
}

func (e *ConnLimitError) Unwrap() error { return e.Err }

// refusal turns a 429 from the agent into a *ConnLimitError, counts it and reports it at most once a
// minute; other errors pass unchanged.
func (w *Watcher) refusal(err error) error {
	if !consulclient.IsConnLimit(err) {
		return err
	}
	w.refused.Add(1)
	cerr := &ConnLimitError{Agent: w.agent, Err: err}
	now := time.Now().UnixNano()
	last := w.lastRefusal.Load()
	if now-last >= int64(time.Minute) && w.lastRefusal.CompareAndSwap(last, now) {
		w.logf("graylane: %v (%d refused requests so far)", cerr, w.refused.Load())
	}
	return cerr
}

// Refused returns how many of the watcher's requests the Consul agent refused with 429 Too Many
// Requests (see ConnLimitError): a counter for a process's metrics.
func (w *Watcher) Refused() uint64 { return w.refused.Load() }

// behindPause is how long a watch waits before it asks again a server whose answer was older than
// the one it holds; behindGrace is how long such answers may go on before the watch takes them.
const (
	behindPause = 100 * time.Millisecond
	behindGrace = 10 * time.Second
)

// behindServer recognises answers older than the one a watch holds. A Consul server that has just
// restarted answers while it is still replaying its raft log: its index is below the one the watch
// holds, and its content is the catalog of a moment ago, with instances missing or their checks not
// yet passing. Taken as the truth, that answer would empty lanes that never went away. Consul's rule
// to reset the index when it goes backwards stays for the blocking, but the content of an older
// answer is set aside, and the server asked again, until it has caught up. Only when older answers
// go on for behindGrace (a cluster that really started over, with a new raft log) are they taken.
type behindServer struct {
	since time.Time // when the first older answer of the current run came; zero when none
}

// older reports whether an answer with index got is to be set aside: it is older than held, the
// index of the answer the watch holds, and older answers have not gone on for behindGrace.
func (b *behindServer) older(got, held uint64) bool {
	if held == 0 || got >= held {
		b.since = time.Time{}
		return false
	}
	if b.since.IsZero() {
		b.since = time.Now()
	}
	return time.Since(b.since) < behindGrace
}

// dropsAny reports whether an answer lacks an instance of the previous one.
func dropsAny(prev *Instances, entries []*api.ServiceEntry) bool {
	if prev == nil {
		return false
	}
	type key struct{ node, id string }
	now := make(map[key]bool, len(entries))
	for _, e := range entries {
		if e.Node != nil && e.Service != nil {
			now[key{e.Node.Node, e.Service.ID}] = true
		}
	}
	for _, ep := range prev.Endpoints {
		if !now[key{ep.Node, ep.ID}] {
			return true
		}
	}
	return false
}

func endpoints(entries []*api.ServiceEntry) []gray.Instance[Endpoint] {
	out := make([]gray.Instance[Endpoint], 0, len(entries))
	for _, e := range entries {
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		ep := Endpoint{ID: e.Service.ID, Service: e.Service.Service, Node: e.Node.Node, Address: addr,
			Port: e.Service.Port, TaggedAddresses: ownTaggedAddresses(e.Service.TaggedAddresses),
			Tags: e.Service.Tags, Meta: e.Service.Meta}
		out = append(out, gray.Instance[Endpoint]{ID: ep.ID, Meta: ep.Meta, Value: ep})
	}
	slices.SortFunc(out, func(a, b gray.Instance[Endpoint]) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// ownTaggedAddresses returns the tagged addresses an instance was registered with, without the lan
// and wan ones Consul keeps itself.
func ownTaggedAddresses(tagged map[string]api.ServiceAddress) map[string]string {
	var out map[string]string
	for tag, a := range tagged {
		if consulclient.ConsulsOwnAddress(tag) {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(tagged))
		}
		out[tag] = a.Address
	}
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
		for _, tag := range slices.Sorted(maps.Keys(s.TaggedAddresses)) {
			write(tag)
			write(s.TaggedAddresses[tag].Address)
		}
		write("\xfe")
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
