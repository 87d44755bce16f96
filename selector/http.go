package selector

import (
	"context"

	"github.com/go-kratos/kratos/v2/middleware"
	kselector "github.com/go-kratos/kratos/v2/selector"
	khttp "github.com/go-kratos/kratos/v2/transport/http"
)

// HTTP returns the one option a Kratos HTTP client needs:
//
//	client, err := http.NewClient(ctx,
//		http.WithEndpoint("discovery:///bservice"),
//		http.WithDiscovery(r),
//		selector.HTTP(),
//	)
//
// It turns Kratos' subsetting off and installs the Filter as the node filter. For Client.Invoke the
// filter sets the lane tag on the outgoing request itself. Client.Do skips Kratos' client transport
// and middleware: the filter sees only the context of the request given to Do (the incoming request
// when it is a handler's), and the caller sets the tag header when it must travel.
//
// A node filter cannot return an error: a call refused in strict mode fails with Kratos' 503
// NODE_NOT_FOUND unless the client also has the StrictErrors middleware.
func HTTP(opts ...Option) khttp.ClientOption { return New(opts...).HTTP() }

// HTTP returns the HTTP client option for this Filter (see the package function HTTP).
func (f *Filter) HTTP() khttp.ClientOption {
	filters := append(append([]kselector.NodeFilter(nil), f.cfg.filters...), f.filter)
	return chain(khttp.WithSubset(0), khttp.WithNodeFilter(filters...))
}

// StrictErrors returns a Kratos client middleware that makes an HTTP Invoke refused in strict mode
// (WithStrict) fail with *StrictError rather than Kratos' 503 NODE_NOT_FOUND, which does not tell a
// refusal from a service without instances. Kratos' http.WithMiddleware replaces the middleware
// list, so give it there together with the client's other middleware:
//
//	http.WithMiddleware(selector.StrictErrors(), metadata.Client())
//
// gRPC clients need nothing: GRPC's interceptor returns *StrictError already.
func StrictErrors() middleware.Middleware {
	return func(next middleware.Handler) middleware.Handler {
		return func(ctx context.Context, req any) (any, error) {
			c := &callCtx{Context: ctx}
			c.begin(ctx, false)
			reply, err := next(c, req)
			if err != nil && c.refused != nil {
				return reply, c.refused
			}
			return reply, err
		}
	}
}
