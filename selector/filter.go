package selector

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/go-kratos/kratos/v2/log"
	kselector "github.com/go-kratos/kratos/v2/selector"

	"github.com/graylane/graylane/gray"
)

// Filter decides the lane of each call with gray.Snapshot.Decide and hands Kratos' balancer the
// instances of that lane. One Filter belongs to one client (one target service).
//
// The node set Kratos passes in is the key of a prepared snapshot: when it differs from the one the
// current snapshot was built from (a discovery update, a meta change, a connection that came up or
// went away), the meta of the new set is decoded once and the snapshot replaced atomically. A call
// only compares the node set with the key (one comparison of memory) and reads the snapshot.
//
// A Filter is safe for concurrent use. Its NodeFilter returns elements of its input only, never
// writes into the input's backing array, and returns an empty set only when no instance with valid
// meta may take the call, when the call must wait for its lane's instances to connect (see
// GRPC), or, in strict mode, when the decision would fall back.
type Filter struct {
	cfg config

	// current and previous are the two most recent prepared node sets. gRPC keeps using an old
	// picker for calls already picking while a new one is installed; keeping the previous set
	// avoids decoding twice in that window.
	current  atomic.Pointer[state]
	previous atomic.Pointer[state]
	builds   atomic.Uint64
	watched  atomic.Pointer[watched] // with WithWatcher, from the first call on

	warnInterceptors sync.Once
}

// state is one prepared node set.
type state struct {
	// key is the node set the snapshot was built from, in input order. It is compared with a
	// call's nodes as memory: the two words of each interface value, its type and its data
	// pointer. That is one vectorised comparison instead of runtime.ifaceeq per node, and it
	// cannot panic on a node type that is not comparable; two interface values with equal words
	// hold the same node. The key keeps its nodes alive, so a new node cannot reuse an address.
	key  []kselector.Node
	in   inputs
	snap *gray.Snapshot[kselector.Node]
}

// New returns a Filter configured by opts.
func New(opts ...Option) *Filter {
	f := &Filter{}
	for _, o := range opts {
		o(&f.cfg)
	}
	f.cfg.never = slices.Clone(f.cfg.never)
	return f
}

// NodeFilter returns the Kratos node filter. Kratos' grpc.WithNodeFilter and http.WithNodeFilter
// replace the filter list: use GRPC or HTTP, which keep it last behind the filters given with
// WithNodeFilters.
func (f *Filter) NodeFilter() kselector.NodeFilter { return f.filter }

// Builds returns how many times the filter decoded a node set: once per change of the node set, not
// per call.
func (f *Filter) Builds() uint64 { return f.builds.Load() }

// Snapshot returns the snapshot prepared for the most recent node set, or nil before the first call.
func (f *Filter) Snapshot() *gray.Snapshot[kselector.Node] {
	if st := f.current.Load(); st != nil {
		return st.snap
	}
	return nil
}

func (f *Filter) filter(ctx context.Context, nodes []kselector.Node) []kselector.Node {
	if len(nodes) == 0 {
		return nil
	}
	st := f.current.Load()
	if f.live() || !st.matches(nodes) { // inputs that can change, or a change of the node set
		st = f.prepared(nodes)
	}
	if d := decide(ctx, st.snap, &f.cfg, &f.warnInterceptors); d != nil {
		return d.Instances
	}
	return nil
}

// Decide returns the decision for a call whose context is ctx over nodes, as the node filter makes
// it: the returned instances are elements of nodes, and the slice belongs to the prepared snapshot
// (do not modify it). For a gRPC call through GRPC's interceptors it records the lane tag the call
// must carry; for an HTTP Invoke it sets the tag on the outgoing request. Read the decision, do not
// modify it.
func (f *Filter) Decide(ctx context.Context, nodes []kselector.Node) *gray.Decision[kselector.Node] {
	if len(nodes) == 0 {
		return &noInstances
	}
	if d := decide(ctx, f.prepared(nodes).snap, &f.cfg, &f.warnInterceptors); d != nil {
		return d
	}
	return &noInstances
}

// noInstances is the decision without instances: for no nodes, and for a call strict mode refuses.
var noInstances = gray.Decision[kselector.Node]{Reason: gray.ReasonFallback, Rule: -1}

// decide makes one call's decision on a prepared snapshot: it builds the request view over ctx,
// applies strict mode, and records the lane tag the call must carry. It returns nil when strict
// mode refuses the call.
func decide[T any](ctx context.Context, snap *gray.Snapshot[T], cfg *config, warn *sync.Once) *gray.Decision[T] {
	cc, _ := ctx.Value(callKey).(*callCtx)
	if cc == nil || !cc.clientOnly {
		return decideView(ctx, cc, snap, cfg, warn)
	}
	// Most calls: a unary gRPC call made outside a handler, whose headers are all in its client
	// transport's header. The decision reads that header alone, and a lane tag found there is on
	// its way to the callee already.
	cc.forgetPick()
	d := snap.Decide(outgoingHeaders{&cc.call})
	if d.Wait {
		cc.waitFor(snap.Service(), d.Lane)
		return nil
	}
	if (cfg.metrics != nil || cfg.strict) && !admit(ctx, cc, snap, cfg, d) {
		return nil
	}
	// A decision by tag found the tag on the call; any other one to be propagated sends its lane
	// unless the call carries a tag (one naming a lane this service does not have) already.
	if d.Reason != gray.ReasonTag && d.Propagate() {
		if key := snap.TagKey(); len(cc.out.values(key)) == 0 {
			cc.sendTag, cc.sendKey = d.Lane, key.Lower()
		}
	}
	return d
}

// decideView decides any other call (cc is nil for a call that did not start through GRPC's
// interceptors or StrictErrors): through the request view that looks wherever the call shows a
// header.
func decideView[T any](ctx context.Context, cc *callCtx, snap *gray.Snapshot[T], cfg *config, warn *sync.Once) *gray.Decision[T] {
	var c *call
	if cc != nil {
		cc.forgetPick()
		c = &cc.call // begun where the call started
		c.repick()
	} else {
		c = viewPool.Get().(*call)
		c.reset(ctx, false)
		defer func() { c.reset(nil, false); viewPool.Put(c) }()
	}

	// The tag is looked up once, for the decision (Header answers it from the call record) and
	// for the propagation below.
	tagKey := snap.TagKey()
	tag, where := c.tag(tagKey)
	d := snap.Decide(c)
	if d.Wait {
		if cc != nil {
			cc.waitFor(snap.Service(), d.Lane)
		}
		return nil
	}
	if (cfg.metrics != nil || cfg.strict) && !admit(ctx, cc, snap, cfg, d) {
		return nil
	}

	// The tag the call carries on: the one it came with, never replaced; else the decided lane
	// when the decision is to be propagated.
	if tag == "" && d.Propagate() {
		tag = d.Lane
	}
	if tag != "" && where != foundOutgoing {
		switch {
		case c.out.req != nil: // HTTP Invoke: the request is still to be sent
			c.out.req.Header.Set(tagKey.Canonical(), tag)
		case cc != nil:
			cc.sendTag, cc.sendKey = tag, tagKey.Lower()
		case c.out.kind == kindGRPC:
			warn.Do(func() {
				log.Warnf("graylane: the lane tag of calls to %s cannot be propagated: the interceptors of selector.GRPC are missing (was grpc.WithOptions given after it?)", snap.Service())
			})
		}
	}
	return d
}

// admit counts a decision and applies strict mode: it reports false, and records the refusal on
// the call, when strict mode refuses a fallback.
func admit[T any](ctx context.Context, cc *callCtx, snap *gray.Snapshot[T], cfg *config, d *gray.Decision[T]) bool {
	if cfg.metrics != nil {
		cfg.metrics.observe(ctx, snap.Service(), d.Reason, d.Lane)
	}
	if cfg.strict && d.Reason == gray.ReasonFallback {
		if cc != nil {
			cc.refused = &StrictError{Service: snap.Service()}
		}
		return false
	}
	return true
}

// prepared returns the state for nodes, building it when the node set or the other inputs (the
// service's options, the watcher's answer) changed.
func (f *Filter) prepared(nodes []kselector.Node) *state {
	// Without a source or a watcher the inputs are the client's options, fixed for the Filter's
	// life: only the node set can change.
	live := f.live()
	var in inputs
	if live {
		in = f.inputs()
	}
	valued := f.cfg.source != nil
	if st := f.current.Load(); st.matches(nodes) && (!live || st.in.same(&in, valued)) {
		return st
	}
	if st := f.previous.Load(); st.matches(nodes) && (!live || st.in.same(&in, valued)) {
		return st
	}
	if f.watch(nodes[0].ServiceName()) {
		in = f.inputs()
	}
	st := f.build(nodes, in)
	f.previous.Store(f.current.Swap(st))
	return st
}

func (st *state) matches(nodes []kselector.Node) bool {
	return st != nil && len(st.key) == len(nodes) && memoryOf(st.key) == memoryOf(nodes)
}

// memoryOf returns the memory of a node slice, the words of its interface values, as a string:
// comparing two is one vectorised comparison.
func memoryOf(nodes []kselector.Node) string {
	return unsafe.String((*byte)(unsafe.Pointer(unsafe.SliceData(nodes))), uintptr(len(nodes))*unsafe.Sizeof(kselector.Node(nil)))
}

func (f *Filter) build(nodes []kselector.Node, in inputs) *state {
	f.builds.Add(1)
	st := &state{key: slices.Clone(nodes), in: in}
	st.snap = gray.NewSnapshot(nodes[0].ServiceName(), instancesOf(nodes, &f.cfg, in.instances), f.options(in), gray.WithSegments(in.segments))
	if f.cfg.problems != nil {
		for _, p := range st.snap.Problems() {
			f.cfg.problems(p)
		}
	}
	return st
}

var viewPool = sync.Pool{New: func() any { return new(call) }}
