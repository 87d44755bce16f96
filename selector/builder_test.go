package selector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/node/direct"
	"github.com/go-kratos/kratos/v2/selector/wrr"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/selector"
)

// TestBuilder: with graylane's Builder as Kratos' global selector, a plain Kratos gRPC client with
// Propagation() follows the rules and carries the lane on.
func TestBuilder(t *testing.T) {
	kselector.SetGlobalSelector(selector.NewBuilder(&wrr.Builder{}, &direct.Builder{}, selector.WithStickyHeader("x-user-id")))
	// Restored after the test's clients are closed (cleanups run last registered first): a gRPC
	// client reads the global selector, unsynchronized, whenever it builds a picker.
	t.Cleanup(func() { kselector.SetGlobalSelector(wrr.NewBuilder()) })

	e := newEnv(t)
	e.start("cservice", "c-stable", gray.Meta{}, nil)
	e.start("cservice", "c-canary", gray.Meta{Canary: true}, nil)
	toC := e.dialPlain("cservice", selector.Propagation())
	e.start("bservice", "b-stable", gray.Meta{}, nextHop(&toC))
	e.start("bservice", "b-canary", gray.Meta{Canary: true, Weight: 1000, Match: matchUser123}, nextHop(&toC))
	toB := e.dialPlain("bservice", selector.Propagation())
	ctx := context.Background()
	waitFor(t, 10*time.Second, "both lanes", func() bool {
		s, err := who(ctx, toB, "userid", "123")
		return err == nil && s == "b-canary>c-canary"
	})
	for _, call := range []func(ctx context.Context, h ...string) (string, error){
		func(ctx context.Context, h ...string) (string, error) { return who(ctx, toB, h...) },
		func(ctx context.Context, h ...string) (string, error) { return watchStream(ctx, toB, h...) },
	} {
		got := count(t, 50, func(int) (string, error) { return call(ctx, "userid", "123") })
		if got["b-canary>c-canary"] != 50 {
			t.Fatalf("matched calls: %v", got)
		}
	}
	got := count(t, 4000, func(i int) (string, error) { return who(ctx, toB, "x-user-id", fmt.Sprintf("u%d", i)) })
	if share := float64(got["b-canary>c-canary"]) / 40; share < 8 || share > 12 || got["b-stable>c-stable"]+got["b-canary>c-canary"] != 4000 {
		t.Fatalf("10 %% weight over 4,000 users: %v", got)
	}
}

// dialPlain returns a Kratos gRPC client of service with the given options and no filter.
func (e *env) dialPlain(service string, opts ...kgrpc.ClientOption) *grpc.ClientConn {
	e.t.Helper()
	conn, err := kgrpc.DialInsecure(context.Background(), append([]kgrpc.ClientOption{
		kgrpc.WithEndpoint("discovery:///" + service),
		kgrpc.WithDiscovery(e.discovery()),
		kgrpc.WithMiddleware(mmd.Client()),
		kgrpc.WithPrintDiscoveryDebugLog(false),
	}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}
