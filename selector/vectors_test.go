package selector_test

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/go-kratos/kratos/v2/middleware"
	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/node/direct"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	khttp "github.com/go-kratos/kratos/v2/transport/http"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/vectors"
	"github.com/graylane/graylane/selector"
)

// caseNodes returns a case's instances as the nodes Kratos' default selector hands a filter: each
// Consul instance as the consul registry maps it, built by selector.NewNode and wrapped by the wrr
// balancer's direct node builder. A node's address is the instance ID.
func caseNodes(c *vectors.Case) []kselector.Node {
	var b direct.Builder
	nodes := make([]kselector.Node, len(c.Instances))
	for i, inst := range c.Instances {
		nodes[i] = b.Build(kselector.NewNode("http", inst.ID, &registry.ServiceInstance{
			ID: inst.ID, Name: c.Service, Version: "v1", Metadata: inst.Meta,
		}))
	}
	return nodes
}

type outcome struct {
	Lane   string
	Reason string
	Rule   int
	IDs    []string
}

func outcomeOf(d *gray.Decision[kselector.Node]) outcome {
	o := outcome{Lane: d.Lane, Reason: d.Reason.String(), Rule: d.Rule, IDs: []string{}}
	for _, n := range d.Instances {
		o.IDs = append(o.IDs, n.Address())
	}
	return o
}

func check(t *testing.T, c *vectors.Case, o outcome) {
	t.Helper()
	var reason gray.Reason
	for r := gray.ReasonBase; r <= gray.ReasonFallback; r++ {
		if r.String() == o.Reason {
			reason = r
		}
	}
	for _, diff := range c.Check(o.Lane, reason, o.Rule, o.IDs) {
		t.Error(diff)
	}
}

// TestVectors runs the shared vectors through the filter's own request view, on two paths:
//   - inside a handler: a real Kratos HTTP server receives the case's request (its headers, path,
//     query, method; the client address as X-Forwarded-For) and the filter decides for a call made
//     with the handler's context;
//   - an HTTP Invoke: a real Kratos HTTP client sends the case's request and the filter decides with
//     the call's client context (as client.do does). An outgoing call made outside a handler has
//     no client address, so cases on the client address run on the first path only.
func TestVectors(t *testing.T) {
	cases, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var current *vectors.Case

	decide := func(ctx context.Context) outcome {
		mu.Lock()
		c := current
		mu.Unlock()
		f := selector.New(selector.WithOptions(c.Options))
		return outcomeOf(f.Decide(ctx, caseNodes(c)))
	}
	srv := khttp.NewServer(khttp.Address("127.0.0.1:0"))
	srv.HandlePrefix("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(decide(r.Context()))
	}))
	u, err := srv.Endpoint()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Start(context.Background()) }()
	defer srv.Stop(context.Background())

	var invoked outcome
	client, err := khttp.NewClient(context.Background(), khttp.WithEndpoint(u.Host),
		khttp.WithMiddleware(func(next middleware.Handler) middleware.Handler {
			return func(ctx context.Context, req any) (any, error) {
				invoked = decide(ctx)
				return next(ctx, req)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	for i := range cases {
		c := &cases[i]
		mu.Lock()
		current = c
		mu.Unlock()
		method := c.Request.Method
		if method == "" {
			method = http.MethodGet
		}
		path := c.Request.Path
		if path == "" {
			path = "/"
		}
		target := path
		if c.Request.Query != "" {
			target += "?" + c.Request.Query
		}
		header := http.Header{}
		for k, v := range c.Request.Headers {
			header.Set(k, v)
		}

		t.Run("handler/"+c.Name, func(t *testing.T) {
			req, err := http.NewRequest(method, "http://"+u.Host+target, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = header.Clone()
			if c.Request.IP != "" {
				req.Header.Set("X-Forwarded-For", c.Request.IP)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var o outcome
			if err := json.NewDecoder(res.Body).Decode(&o); err != nil {
				t.Fatal(err)
			}
			check(t, c, o)
		})
		if c.Request.IP != "" {
			continue
		}
		t.Run("invoke/"+c.Name, func(t *testing.T) {
			hdr := header.Clone()
			var reply json.RawMessage
			if _, err := url.ParseRequestURI(target); err != nil {
				t.Fatal(err)
			}
			if err := client.Invoke(context.Background(), method, target, nil, &reply, khttp.Header(&hdr)); err != nil && !strings.Contains(err.Error(), "json") {
				t.Fatal(err)
			}
			check(t, c, invoked)
		})
	}
}

// TestVectorsGRPC runs the shared vectors through the path most calls take: a unary gRPC call made
// outside a handler, with the case's headers on Kratos' client transport. Such a call shows its
// headers, the gRPC method as its path, POST as its method, and no query or client address. Every
// case must decide as the core does on that request; a case whose request is headers alone must
// decide as the vectors expect. The callee must receive the lane tag the call came with, else the
// lane of a decision to be propagated, else none.
func TestVectorsGRPC(t *testing.T) {
	cases, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var current *vectors.Case
	var got, want outcome
	decide := func(ctx context.Context, nodes []kselector.Node) []kselector.Node {
		mu.Lock()
		defer mu.Unlock()
		f := selector.New(selector.WithOptions(current.Options))
		got = outcomeOf(f.Decide(ctx, caseNodes(current)))
		shown := &gray.StaticRequest{Headers: current.Request.Headers, URLPath: whoMethod, HTTPMethod: http.MethodPost}
		if snap := f.Snapshot(); snap != nil {
			want = outcomeOf(snap.Decide(shown))
		} else { // no nodes: nothing was prepared
			want = outcomeOf(&gray.Decision[kselector.Node]{Reason: gray.ReasonFallback, Rule: -1})
		}
		return nodes
	}
	setHeaders := func(next middleware.Handler) middleware.Handler {
		return func(ctx context.Context, req any) (any, error) {
			if tr, ok := transport.FromClientContext(ctx); ok {
				mu.Lock()
				for k, v := range current.Request.Headers {
					tr.RequestHeader().Set(k, v)
				}
				mu.Unlock()
			}
			return next(ctx, req)
		}
	}
	callee := &instance{id: "s", tags: make(chan string, 1)}
	// GRPC's interceptors carry the tag; its node filter is replaced by decide, which decides the
	// call over the case's instances with the case's options.
	conn, err := kgrpc.DialInsecure(context.Background(), kgrpc.WithEndpoint(serveEcho(t, callee)),
		kgrpc.WithMiddleware(setHeaders), selector.GRPC(), kgrpc.WithNodeFilter(decide))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	for i := range cases {
		c := &cases[i]
		t.Run(c.Name, func(t *testing.T) {
			mu.Lock()
			current, got, want = c, outcome{}, outcome{}
			mu.Unlock()
			if _, err := who(context.Background(), conn); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("the call decided %+v, the core on the request it shows %+v", got, want)
			}
			if r := c.Request; r.Path == "" && r.Query == "" && r.Method == "" && r.IP == "" {
				check(t, c, got)
			}

			tagKey := cmp.Or(c.Options.TagKey, gray.DefaultTagKey)
			sent, tagged := c.Request.Headers[tagKey]
			if !tagged && (got.Reason == "tag" || got.Reason == "match" || got.Reason == "weight") {
				sent = got.Lane
			}
			received := <-callee.tags // read with the default tag key
			if tagKey == gray.DefaultTagKey && received != sent {
				t.Errorf("the callee received lane tag %q, want %q", received, sent)
			}
		})
	}
}
