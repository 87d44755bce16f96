package selector_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/middleware"
	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/filter"
	"github.com/go-kratos/kratos/v2/selector/node/direct"
	"github.com/go-kratos/kratos/v2/selector/wrr"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// benchNodes returns n instances of bservice as the Kratos consul registry maps them: one in ten a
// canary (version v2, weight 10 %, a header rule), the others stable (v1).
func benchNodes(n int) []kselector.Node {
	canary, err := (&gray.Meta{Canary: true, Weight: 1000, Match: matchUser123}).Encode()
	if err != nil {
		panic(err)
	}
	nodes := make([]kselector.Node, n)
	for i := range nodes {
		ins := &registry.ServiceInstance{ID: fmt.Sprint(i), Name: "bservice", Version: "v1", Metadata: map[string]string{}}
		if i%10 == 0 {
			ins.Version, ins.Metadata = "v2", canary
		}
		nodes[i] = kselector.NewNode("grpc", fmt.Sprintf("10.0.%d.%d:9000", i/250, i%250), ins)
	}
	return nodes
}

// benchServer runs a Kratos gRPC server on loopback (no discovery) and returns its address.
func benchServer(b testing.TB) string {
	return serveEcho(b, &instance{id: "s", tags: make(chan string, 1)})
}

// serveEcho runs a Kratos gRPC server for in on loopback (no discovery) and returns its address.
func serveEcho(t testing.TB, in *instance) string {
	t.Helper()
	srv := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"), kgrpc.Middleware(mmd.Server()))
	srv.RegisterService(&echoDesc, in)
	u, err := srv.Endpoint()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Start(context.Background()) }()
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	return u.Host
}

// callContext returns the context a node filter sees in a real unary Kratos gRPC call with the
// option: the client transport whose request header holds a sticky user key and a userid that does
// not match the canary's rule. It is captured by a filter placed before graylane's.
func callContext(b testing.TB, addr string) context.Context {
	b.Helper()
	var captured context.Context
	capture := func(ctx context.Context, nodes []kselector.Node) []kselector.Node {
		captured = ctx
		return nodes
	}
	conn, err := kgrpc.DialInsecure(context.Background(), kgrpc.WithEndpoint(addr),
		kgrpc.WithMiddleware(func(next middleware.Handler) middleware.Handler {
			return func(ctx context.Context, req any) (any, error) {
				if tr, ok := transport.FromClientContext(ctx); ok {
					tr.RequestHeader().Set("x-user-id", "user-42")
					tr.RequestHeader().Set("userid", "7")
				}
				return next(ctx, req)
			}
		}),
		selector.GRPC(selector.WithNodeFilters(capture)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Invoke(context.Background(), whoMethod, wrapperspb.String(""), new(wrapperspb.StringValue)); err != nil {
		b.Fatal(err)
	}
	return captured
}

// BenchmarkSelect: Select through Kratos' default selector with the wrr balancer, side by side: no
// filter, Kratos' filter.Version, graylane's filter (header rule and sticky key), and graylane's
// Builder over the same wrr balancer (the same decision, without the default selector's copies);
// graylane+metrics counts each decision (WithMetrics), to show the instrumentation's cost.
// The default selector copies the node list twice per call when any filter is set.
func BenchmarkSelect(b *testing.B) {
	ctx := callContext(b, benchServer(b))
	for _, n := range []int{10, 100, 1000} {
		nodes := benchNodes(n)
		f := selector.New(selector.WithStickyHeader("x-user-id"))
		m, err := selector.NewMetrics(prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		measured := selector.New(selector.WithStickyHeader("x-user-id"), selector.WithMetrics(m))
		for _, bc := range []struct {
			name string
			opts []kselector.SelectOption
		}{
			{"none", nil},
			{"version", []kselector.SelectOption{kselector.WithNodeFilter(filter.Version("v1"))}},
			{"graylane", []kselector.SelectOption{kselector.WithNodeFilter(f.NodeFilter())}},
			{"graylane+metrics", []kselector.SelectOption{kselector.WithNodeFilter(measured.NodeFilter())}},
			{"builder", nil},
		} {
			b.Run(fmt.Sprintf("nodes=%d/%s", n, bc.name), func(b *testing.B) {
				sel := wrr.NewBuilder().Build()
				if bc.name == "builder" {
					sel = selector.NewBuilder(&wrr.Builder{}, &direct.Builder{}, selector.WithStickyHeader("x-user-id")).Build()
				}
				sel.Apply(nodes)
				b.ReportAllocs()
				defer reportCPU(b)()
				for i := 0; i < b.N; i++ {
					if _, _, err := sel.Select(ctx, bc.opts...); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkFilter: the filters alone, called as the default selector calls them, on the wrapped
// nodes it passes. graylane's own work allocates nothing. graylane+call adds what GRPC's
// interceptor does once per call before the pick: the call record (one allocation) and the
// transport lookups the filter then reads from it. graylane+watcher reads the service's options
// and instances through a watcher on a real Consul (WithWatcher), which adds a comparison per call.
// cpu-ns/op counts the collector's work on other CPUs too: filter.Version allocates a slice per call.
func BenchmarkFilter(b *testing.B) {
	ctx := callContext(b, benchServer(b))
	w, err := watch.New(watch.NewConfig(consultest.Start(b).HTTPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	<-w.Service("bservice").Ready()
	for _, n := range []int{10, 100, 1000} {
		sel := wrr.NewBuilder().Build()
		var wrapped []kselector.Node
		sel.Apply(benchNodes(n))
		sel.Select(ctx, kselector.WithNodeFilter(func(_ context.Context, ns []kselector.Node) []kselector.Node {
			wrapped = append([]kselector.Node(nil), ns...)
			return ns
		}))
		f := selector.New(selector.WithStickyHeader("x-user-id"))
		watching := selector.New(selector.WithStickyHeader("x-user-id"), selector.WithWatcher(w))
		start := selector.CallStarter(ctx)
		same := func() context.Context { return ctx }
		for _, bc := range []struct {
			name string
			f    kselector.NodeFilter
			ctx  func() context.Context
		}{
			{"version", filter.Version("v1"), same},
			{"graylane", f.NodeFilter(), same},
			{"graylane+call", f.NodeFilter(), start},
			{"graylane+watcher", watching.NodeFilter(), same},
		} {
			b.Run(fmt.Sprintf("nodes=%d/%s", n, bc.name), func(b *testing.B) {
				b.ReportAllocs()
				defer reportCPU(b)()
				for i := 0; i < b.N; i++ {
					if len(bc.f(bc.ctx(), wrapped)) == 0 {
						b.Fatal("empty")
					}
				}
			})
		}
	}
}

// reportCPU reports the CPU time the process spent per operation (cpu-ns/op) beside the wall time:
// with more than one CPU the garbage collector runs beside the benchmark, and an allocating filter's
// collection costs CPU time that ns/op does not show. Use: defer reportCPU(b)().
func reportCPU(b *testing.B) func() {
	start := processCPU(b)
	b.ResetTimer()
	return func() {
		b.StopTimer()
		b.ReportMetric(float64(processCPU(b)-start)/float64(b.N), "cpu-ns/op")
	}
}

// processCPU returns the CPU time of the whole process (every thread), user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecisionReads: what any decision of the benchmarked rules must do on a real unary call's
// headers, done as plainly as Go allows: three reads of a map holding the client transport's
// headers (the lane tag, the rule's userid, the sticky x-user-id), one string comparison, and the
// sticky key's bucket. No implementation of this decision can skip it; set beside BenchmarkFilter's
// graylane case at 10 nodes, it shows how little of that case is the filter's own.
func BenchmarkDecisionReads(b *testing.B) {
	tr, ok := transport.FromClientContext(callContext(b, benchServer(b)))
	if !ok {
		b.Fatal("no client transport")
	}
	headers := map[string][]string{}
	for _, k := range tr.RequestHeader().Keys() {
		headers[k] = tr.RequestHeader().Values(k)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if len(headers[gray.DefaultTagKey]) > 0 || headers["userid"][0] == "123" {
			b.Fatal("unexpected headers")
		}
		if gray.Bucket("bservice", headers["x-user-id"][0]) < 0 {
			b.Fatal("no bucket")
		}
	}
}

// BenchmarkUnaryCall: a whole unary Kratos gRPC call on loopback, without and with the option.
func BenchmarkUnaryCall(b *testing.B) {
	addr := benchServer(b)
	for _, bc := range []struct {
		name string
		opts []kgrpc.ClientOption
	}{
		{"plain", nil},
		{"graylane", []kgrpc.ClientOption{selector.GRPC(selector.WithStickyHeader("x-user-id"))}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			conn, err := kgrpc.DialInsecure(context.Background(),
				append([]kgrpc.ClientOption{kgrpc.WithEndpoint(addr), kgrpc.WithMiddleware(mmd.Client())}, bc.opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ctx := withHeaders(context.Background(), "x-user-id", "user-42")
			call := func() {
				if err := conn.Invoke(ctx, whoMethod, wrapperspb.String(""), new(wrapperspb.StringValue), grpc.WaitForReady(true)); err != nil {
					b.Fatal(err)
				}
			}
			call()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				call()
			}
		})
	}
}

// TestFilterAllocatesNothing: the filter's own work on a real unary call's context allocates
// nothing, for a production call (sticky weight), a matched call and a tagged call.
func TestFilterAllocatesNothing(t *testing.T) {
	ctx := callContext(t, benchServer(t))
	nodes := benchNodes(100)
	f := selector.New(selector.WithStickyHeader("x-user-id"))
	tr, _ := transport.FromClientContext(ctx)
	for _, tc := range []struct{ name, key, value, lane string }{
		{"production", "userid", "7", "stable"},
		{"matched", "userid", "123", "canary"},
		{"tagged", gray.DefaultTagKey, "canary", "canary"},
	} {
		tr.RequestHeader().Set("userid", "7")
		tr.RequestHeader().Set(tc.key, tc.value)
		if d := f.Decide(ctx, nodes); d.Lane != tc.lane {
			t.Fatalf("%s: lane %q, want %q", tc.name, d.Lane, tc.lane)
		}
		if n := testing.AllocsPerRun(1000, func() { f.NodeFilter()(ctx, nodes) }); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tc.name, n)
		}
		tr.RequestHeader().Set(gray.DefaultTagKey, "")
	}
}
