package selector

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	kselector "github.com/go-kratos/kratos/v2/selector"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
)

// Builder is a Kratos selector.Builder that decides the lane inside Select and hands the lane's
// nodes to any Kratos balancer, without the default selector's two copies of the node list per
// call. Kratos takes one selector builder for the whole process:
//
//	kselector.SetGlobalSelector(selector.NewBuilder(&wrr.Builder{}, &direct.Builder{}, selector.WithStickyHeader("x-user-id")))
//
// then give each gRPC client Propagation() (subsetting off, and the lane tag carried on) and each
// HTTP client http.WithSubset(0). The snapshot is prepared in Apply, once per node set. Node
// filters a client gives still run first, on a copy as in Kratos' default selector, and the lane is
// then decided over their result.
type Builder struct {
	balancer kselector.BalancerBuilder
	node     kselector.WeightedNodeBuilder
	opts     []Option
}

var _ kselector.Builder = (*Builder)(nil)

// NewBuilder returns a Builder over a Kratos balancer (wrr, p2c, random) and its node builder
// (direct for wrr and random, ewma for p2c).
func NewBuilder(balancer kselector.BalancerBuilder, node kselector.WeightedNodeBuilder, opts ...Option) *Builder {
	return &Builder{balancer: balancer, node: node, opts: slices.Clone(opts)}
}

// Build implements selector.Builder.
func (b *Builder) Build() kselector.Selector {
	return &graySelector{balancer: b.balancer.Build(), node: b.node, filter: New(b.opts...)}
}

// graySelector is the selector a Builder builds: one per client (per gRPC picker). Apply and Select
// may be called concurrently.
type graySelector struct {
	balancer kselector.Balancer
	node     kselector.WeightedNodeBuilder
	filter   *Filter // configuration, and the decision over the result of other node filters
	state    atomic.Pointer[builtState]
	mu       sync.Mutex // serializes preparing
	warn     sync.Once
}

type builtState struct {
	nodes []kselector.WeightedNode
	in    inputs
	snap  *gray.Snapshot[kselector.WeightedNode]
}

func (s *graySelector) Apply(nodes []kselector.Node) {
	weighted := make([]kselector.WeightedNode, len(nodes))
	for i, n := range nodes {
		weighted[i] = s.node.Build(n)
	}
	if len(nodes) > 0 {
		s.filter.watch(nodes[0].ServiceName())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.Store(s.prepare(weighted, s.filter.inputs()))
}

func (s *graySelector) prepare(nodes []kselector.WeightedNode, in inputs) *builtState {
	st := &builtState{nodes: nodes, in: in}
	service := ""
	if len(nodes) > 0 {
		service = nodes[0].ServiceName()
	}
	st.snap = gray.NewSnapshot(service, instancesOf(nodes, &s.filter.cfg, in.instances), s.filter.options(in), gray.WithSegments(in.segments))
	if s.filter.cfg.problems != nil {
		for _, p := range st.snap.Problems() {
			s.filter.cfg.problems(p)
		}
	}
	return st
}

func (s *graySelector) Select(ctx context.Context, opts ...kselector.SelectOption) (kselector.Node, kselector.DoneFunc, error) {
	st := s.state.Load()
	if st == nil || len(st.nodes) == 0 {
		return nil, nil, kselector.ErrNoAvailable
	}
	if s.filter.live() {
		valued := s.filter.cfg.source != nil
		if in := s.filter.inputs(); !st.in.same(&in, valued) { // the service's options or the watcher's answer changed
			s.mu.Lock()
			if st = s.state.Load(); !st.in.same(&in, valued) {
				st = s.prepare(st.nodes, in)
				s.state.Store(st)
			}
			s.mu.Unlock()
		}
	}
	var options kselector.SelectOptions
	for _, o := range opts {
		o(&options)
	}
	var candidates []kselector.WeightedNode
	if len(options.NodeFilters) == 0 {
		if d := decide(ctx, st.snap, &s.filter.cfg, &s.warn); d != nil {
			candidates = d.Instances
		}
	} else {
		candidates = s.filtered(ctx, st.nodes, options.NodeFilters)
	}
	if len(candidates) == 0 {
		return nil, nil, kselector.ErrNoAvailable
	}
	wn, done, err := s.balancer.Pick(ctx, candidates)
	if err != nil {
		return nil, nil, err
	}
	if p, ok := kselector.FromPeerContext(ctx); ok {
		p.Node = wn.Raw()
	}
	return wn.Raw(), done, nil
}

// filtered runs the client's node filters on a copy, as Kratos' default selector does, and decides
// over their result.
func (s *graySelector) filtered(ctx context.Context, all []kselector.WeightedNode, filters []kselector.NodeFilter) []kselector.WeightedNode {
	nodes := make([]kselector.Node, len(all))
	for i, n := range all {
		nodes[i] = n
	}
	for _, f := range filters {
		nodes = f(ctx, nodes)
	}
	nodes = s.filter.Decide(ctx, nodes).Instances
	out := make([]kselector.WeightedNode, len(nodes))
	for i, n := range nodes {
		out[i] = n.(kselector.WeightedNode)
	}
	return out
}

// Propagation returns the gRPC client option for clients whose selector comes from a Builder:
// subsetting off, graylane's gRPC balancer (a call waits for its lane's connections, see GRPC), and
// the interceptors and per-RPC metadata that carry the lane tag on. It installs no node filter.
func Propagation() kgrpc.ClientOption {
	f := New()
	return chain(kgrpc.WithSubset(0), kgrpc.WithOptions(
		balancerOption(),
		grpc.WithChainUnaryInterceptor(f.unaryInterceptor),
		grpc.WithChainStreamInterceptor(f.streamInterceptor),
		grpc.WithPerRPCCredentials(tagCredentials{}),
	))
}
