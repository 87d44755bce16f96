package selector_test

import (
	"context"
	"log"

	"github.com/go-kratos/kratos/contrib/registry/consul/v2"
	"github.com/go-kratos/kratos/v2/middleware/metadata"
	"github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/go-kratos/kratos/v2/transport/http"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// A Kratos gRPC client of bservice that follows bservice's gray rules and carries the lane on.
// The same code is in the README.
func ExampleGRPC() {
	ctx := context.Background()
	client, err := api.NewClient(api.DefaultConfig()) // CONSUL_HTTP_ADDR and friends
	if err != nil {
		log.Fatal(err)
	}
	r := consul.New(client)

	conn, err := grpc.DialInsecure(ctx,
		grpc.WithEndpoint("discovery:///bservice"),
		grpc.WithDiscovery(r),
		grpc.WithMiddleware(metadata.Client()), // carries x-md-global- keys, the lane tag among them
		selector.GRPC(selector.WithStickyHeader("x-user-id")),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}

// The same for a Kratos HTTP client. Kratos watches discovery with the context given to NewClient:
// cancel it when the client is closed.
func ExampleHTTP() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	r := consul.New(client)

	hc, err := http.NewClient(ctx,
		http.WithEndpoint("discovery:///bservice"),
		http.WithDiscovery(r),
		http.WithMiddleware(metadata.Client()),
		selector.HTTP(selector.WithStickyHeader("x-user-id")),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer hc.Close()
}

// A client that takes the meta of bservice's instances from graylane's watcher, which shows a change
// as soon as Consul commits it rather than at the registry's next 1 s tick. The watcher also
// supplies the decision options bservice keeps in Consul (graylane options), so the client needs
// none of its own. One watcher serves every client of a process: close it after them.
func ExampleWithWatcher() {
	ctx := context.Background()
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	w, err := watch.New(nil) // the same CONSUL_HTTP_ADDR and friends
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	conn, err := grpc.DialInsecure(ctx,
		grpc.WithEndpoint("discovery:///bservice"),
		grpc.WithDiscovery(consul.New(client)),
		grpc.WithMiddleware(metadata.Client()),
		selector.GRPC(selector.WithWatcher(w)),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}

// A client that counts its decisions and records its calls by the callee's lane, for the rollout
// gates and the dashboards.
func ExampleWithMetrics() {
	ctx := context.Background()
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	r := consul.New(client)

	m, _ := selector.NewMetrics(prometheus.DefaultRegisterer)
	conn, _ := grpc.DialInsecure(ctx, grpc.WithEndpoint("discovery:///bservice"), grpc.WithDiscovery(r),
		grpc.WithMiddleware(m.Middleware()), selector.GRPC(selector.WithMetrics(m)))
	defer conn.Close()
}
