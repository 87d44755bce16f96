package selector

import (
	"cmp"
	"context"

	kselector "github.com/go-kratos/kratos/v2/selector"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"google.golang.org/grpc"
	grpcmd "google.golang.org/grpc/metadata"
)

// GRPC returns the one option a Kratos gRPC client needs:
//
//	conn, err := grpc.DialInsecure(ctx,
//		grpc.WithEndpoint("discovery:///bservice"),
//		grpc.WithDiscovery(r),
//		selector.GRPC(),
//	)
//
// It turns Kratos' subsetting off (grpc.WithSubset(0): with the default of 25 nodes a client may
// never see the canary), installs the Filter as the node filter, and adds, through grpc.WithOptions,
// a unary and a stream interceptor and per-RPC metadata that carry the lane tag to the callee.
// Kratos' WithNodeFilter, WithOptions and WithSubset replace what GRPC set when given after it: pass
// other filters and dial options with WithNodeFilters and WithDialOptions.
func GRPC(opts ...Option) kgrpc.ClientOption { return New(opts...).GRPC() }

// GRPC returns the gRPC client option for this Filter (see the package function GRPC).
func (f *Filter) GRPC() kgrpc.ClientOption {
	filters := append(append([]kselector.NodeFilter(nil), f.cfg.filters...), f.filter)
	dial := append(append([]grpc.DialOption(nil), f.cfg.dial...),
		balancerOption(),
		grpc.WithChainUnaryInterceptor(f.unaryInterceptor),
		grpc.WithChainStreamInterceptor(f.streamInterceptor),
		grpc.WithPerRPCCredentials(tagCredentials{}),
	)
	return chain(kgrpc.WithSubset(0), kgrpc.WithNodeFilter(filters...), kgrpc.WithOptions(dial...))
}

// chain combines client options into one. Kratos' option types are functions of an unexported
// options struct; inference finds it from the arguments.
func chain[O any](opts ...func(O)) func(O) {
	return func(o O) {
		for _, f := range opts {
			f(o)
		}
	}
}

// callKey finds a call's callCtx. It is a pointer so that each context level the lookup passes
// compares two words; a zero-size struct key calls its type's equality function at each level.
var callKey = &callKeyType{}

type callKeyType struct{ _ byte }

// callCtx carries one call: the request view the filter reads and what it decided the call must
// carry. For gRPC the interceptor creates it; the filter, run by the picker, writes the tag; the
// per-RPC metadata, asked for after the pick when the stream's headers are built, reads it. All
// three run one after another on the call's goroutine. For HTTP the StrictErrors middleware creates
// it, and only a strict refusal is read back.
type callCtx struct {
	context.Context
	call
	sendKey string
	sendTag string
	refused *StrictError
	// waitLane and waitService name the lane the last pick waits for: its instances are registered
	// but none is connected. The picker then tells gRPC to hold the call for the next picker.
	waitLane, waitService string
}

// forgetPick forgets what an earlier pick of the call decided: a retried pick decides again.
func (c *callCtx) forgetPick() {
	if c.sendTag != "" || c.refused != nil || c.waitLane != "" { // written only when set: most picks are the first
		c.sendTag, c.refused, c.waitLane = "", nil, ""
	}
}

// waitFor records that the call waits for a lane of service ("" for the fallback's lanes).
func (c *callCtx) waitFor(service, lane string) {
	c.waitLane, c.waitService = cmp.Or(lane, "(fallback)"), service
}

// failed returns the error a call ends with: a strict refusal, or, for a call that was still
// waiting for its lane when gRPC gave up (its deadline), a *LaneUnavailableError.
func (c *callCtx) failed(err error) error {
	switch {
	case c.refused != nil:
		return c.refused
	case c.waitLane != "":
		return &LaneUnavailableError{Service: c.waitService, Lane: c.waitLane, Err: err}
	}
	return err
}

func (c *callCtx) Value(key any) any {
	if key == any(callKey) {
		return c
	}
	return c.Context.Value(key)
}

func (f *Filter) unaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c := &callCtx{Context: ctx}
	c.begin(ctx, false)
	if err := invoker(c, method, req, reply, cc, opts...); err != nil {
		return c.failed(err)
	}
	return nil
}

func (f *Filter) streamInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c := &callCtx{Context: ctx}
	c.begin(ctx, true)
	s, err := streamer(c, desc, cc, method, opts...)
	if err != nil {
		return nil, c.failed(err)
	}
	return s, nil
}

// tagCredentials adds the lane tag the filter decided to the call's metadata. gRPC asks for it
// after the pick, while it builds the stream's headers.
type tagCredentials struct{}

func (tagCredentials) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	c, _ := ctx.Value(callKey).(*callCtx)
	if c == nil || c.sendTag == "" {
		return nil, nil
	}
	// Metadata the caller set with gRPC's AppendToOutgoingContext is read only here, when a tag
	// is to be sent (reading it copies it): a tag already there is never replaced.
	if md, ok := grpcmd.FromOutgoingContext(ctx); ok && len(md[c.sendKey]) > 0 {
		return nil, nil
	}
	return map[string]string{c.sendKey: c.sendTag}, nil
}

func (tagCredentials) RequireTransportSecurity() bool { return false }
