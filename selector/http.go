package selector

import (
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
func HTTP(opts ...Option) khttp.ClientOption { return New(opts...).HTTP() }

// HTTP returns the HTTP client option for this Filter (see the package function HTTP).
func (f *Filter) HTTP() khttp.ClientOption {
	filters := append(append([]kselector.NodeFilter(nil), f.cfg.filters...), f.filter)
	return chain(khttp.WithSubset(0), khttp.WithNodeFilter(filters...))
}
