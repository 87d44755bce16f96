package selector

// The gRPC balancer. Kratos' own gRPC balancer builds its picker from the ready connections only,
// so a node filter cannot tell a lane that has no instance from a lane whose connections are still
// being made: at a client's start, or while stable's connections come back, a weight-0 canary that
// connected first looked like the only instance and took production calls. graylane's balancer is
// Kratos' with one difference: the picker's selector is given every instance the resolver names,
// the ones without a ready connection marked pending. The core counts a pending instance for its
// lane but never chooses it, and a call whose lane has only pending instances tells the picker to
// wait; the picker answers gRPC with balancer.ErrNoSubConnAvailable, and gRPC holds the call until
// the next picker, within the call's deadline.

import (
	"encoding/json"
	"fmt"

	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/wrr"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/resolver"
)

// BalancerName is the name graylane's gRPC balancer is registered under. GRPC and Propagation
// select it through the client's default service config.
const BalancerName = "graylane"

// rawInstanceAttribute is the resolver address attribute under which Kratos' discovery resolver
// keeps the registry's instance.
const rawInstanceAttribute = "rawServiceInstance"

func init() {
	balancer.Register(balancerBuilder{})
}

// serviceConfig selects graylane's balancer with the health checking Kratos' clients ask for by
// default.
var serviceConfig = func() string {
	b, _ := json.Marshal(map[string]any{
		"loadBalancingConfig": []map[string]any{{BalancerName: map[string]any{}}},
		"healthCheckConfig":   map[string]any{"serviceName": ""},
	})
	return string(b)
}()

// balancerOption is the dial option that selects graylane's balancer.
func balancerOption() grpc.DialOption { return grpc.WithDefaultServiceConfig(serviceConfig) }

type balancerBuilder struct{}

func (balancerBuilder) Name() string { return BalancerName }

// Build returns grpc-go's base balancer, which keeps one connection per address and rebuilds the
// picker on every change, with a picker builder that also knows the resolver's addresses.
func (balancerBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &grayBalancer{}
	b.Balancer = base.NewBalancerBuilder(BalancerName, (*pickerBuilder)(b), base.Config{HealthCheck: true}).Build(cc, opts)
	return b
}

// grayBalancer records the resolver's addresses before the base balancer, which builds the picker
// within the same call. gRPC calls a balancer from one goroutine at a time.
type grayBalancer struct {
	balancer.Balancer
	addresses []resolver.Address
}

func (b *grayBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	b.addresses = s.ResolverState.Addresses
	return b.Balancer.UpdateClientConnState(s)
}

type pickerBuilder grayBalancer

// Build hands the selector a node for every address the resolver named, a pending one (no
// connection) for those whose connection is not ready, then one for any ready connection the
// resolver no longer names (it is being shut down).
func (pb *pickerBuilder) Build(info base.PickerBuildInfo) balancer.Picker {
	if len(info.ReadySCs) == 0 {
		return base.NewErrPicker(balancer.ErrNoSubConnAvailable) // gRPC holds calls until a connection is ready
	}
	ready := make(map[string]balancer.SubConn, len(info.ReadySCs))
	readyInfo := make(map[string]resolver.Address, len(info.ReadySCs))
	for sc, sci := range info.ReadySCs {
		ready[sci.Address.Addr] = sc
		readyInfo[sci.Address.Addr] = sci.Address
	}
	nodes := make([]kselector.Node, 0, max(len(pb.addresses), len(ready)))
	named := make(map[string]bool, len(pb.addresses))
	for _, a := range pb.addresses {
		if named[a.Addr] {
			continue
		}
		named[a.Addr] = true
		nodes = append(nodes, newConnNode(a, ready[a.Addr]))
	}
	for addr, sc := range ready {
		if !named[addr] {
			nodes = append(nodes, newConnNode(readyInfo[addr], sc))
		}
	}
	builder := kselector.GlobalSelector()
	if builder == nil {
		builder = wrr.NewBuilder()
	}
	p := &picker{selector: builder.Build()}
	p.selector.Apply(nodes)
	return p
}

// connNode is a Kratos node with the gRPC connection it stands for; subConn is nil while the
// instance is pending.
type connNode struct {
	kselector.Node
	subConn balancer.SubConn
}

func newConnNode(a resolver.Address, sc balancer.SubConn) *connNode {
	ins, _ := a.Attributes.Value(rawInstanceAttribute).(*registry.ServiceInstance)
	return &connNode{Node: kselector.NewNode("grpc", a.Addr, ins), subConn: sc}
}

// isPending reports whether a node stands for an instance whose connection is not ready. Kratos'
// selectors hand filters their weighted wrappers; Raw is the node they wrap.
func isPending(n kselector.Node) bool {
	if w, ok := n.(interface{ Raw() kselector.Node }); ok {
		n = w.Raw()
	}
	c, ok := n.(*connNode)
	return ok && c.subConn == nil
}

// picker is Kratos' gRPC picker, which waits where a lane's instances are pending.
type picker struct {
	selector kselector.Selector
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	var filters []kselector.NodeFilter
	if tr, ok := transport.FromClientContext(info.Ctx); ok {
		if gtr, ok := tr.(*kgrpc.Transport); ok {
			filters = gtr.NodeFilters()
		}
	}
	cc, _ := info.Ctx.Value(callKey).(*callCtx)
	if cc != nil {
		cc.waitLane = "" // this pick decides anew: an earlier node filter may leave graylane's nothing to decide over
	}
	n, done, err := p.selector.Select(info.Ctx, kselector.WithNodeFilter(filters...))
	if err != nil {
		if cc != nil && cc.waitLane != "" {
			return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
		}
		return balancer.PickResult{}, err
	}
	c, ok := n.(*connNode)
	if !ok {
		return balancer.PickResult{}, fmt.Errorf("graylane: the selector chose a node of type %T, not one of this picker's", n)
	}
	if c.subConn == nil {
		// A selector without graylane's decision chose a pending instance: wait for it.
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	return balancer.PickResult{
		SubConn: c.subConn,
		Done: func(di balancer.DoneInfo) {
			if done != nil {
				done(info.Ctx, kselector.DoneInfo{Err: di.Err, BytesSent: di.BytesSent, BytesReceived: di.BytesReceived,
					ReplyMD: kgrpc.Trailer(di.Trailer)})
			}
		},
	}, nil
}
