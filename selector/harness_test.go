package selector_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/middleware"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	klog "github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/metadata"
	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	khttp "github.com/go-kratos/kratos/v2/transport/http"
	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/selector"
)

// The test service: a unary Who and a server stream Watch (one message), both answering with the
// serving instance's ID and, when the instance has a next hop, the next hop's answer after a '>'.
const (
	whoMethod   = "/graylane.test.Echo/Who"
	watchMethod = "/graylane.test.Echo/Watch"
)

type echoServer interface{}

type instance struct {
	id   string
	next func(ctx context.Context) (string, error) // the next hop, called inside the handler
	tags chan string                               // the lane tag each request arrived with
}

func (in *instance) answer(ctx context.Context) (string, error) {
	tag := ""
	if tr, ok := transport.FromServerContext(ctx); ok {
		tag = tr.RequestHeader().Get(gray.DefaultTagKey)
	}
	select {
	case in.tags <- tag:
	default:
	}
	if in.next == nil {
		return in.id, nil
	}
	rest, err := in.next(ctx)
	if err != nil {
		return "", err
	}
	return in.id + ">" + rest, nil
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "graylane.test.Echo",
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Who",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) {
				s, err := srv.(*instance).answer(ctx)
				return wrapperspb.String(s), err
			}
			if icpt == nil {
				return h(ctx, in)
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: whoMethod}, h)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Watch",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := stream.RecvMsg(in); err != nil {
				return err
			}
			s, err := srv.(*instance).answer(stream.Context())
			if err != nil {
				return err
			}
			return stream.SendMsg(wrapperspb.String(s))
		},
	}},
}

func TestMain(m *testing.M) {
	klog.SetLogger(klog.NewStdLogger(io.Discard))
	os.Exit(m.Run())
}

// env is one real Consul agent with the Kratos consul registry on it.
type env struct {
	t      testing.TB
	agent  *consultest.Agent
	client *api.Client
	// discOpts configure the registry each client discovers through. Each client gets its own:
	// Kratos' ServiceInstance.Equal sorts an instance's endpoints in place, and the consul
	// registry hands the same instances to every client of a service, so two clients of one
	// service on one registry race (in Kratos, not in graylane).
	discOpts []kconsul.Option
	r        *registrar.Registrar
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvOn(t, consultest.Start(t))
}

// newEnvOn is newEnv on agent a; its registry and registrar use a's plain HTTP port.
func newEnvOn(t testing.TB, a *consultest.Agent) *env {
	t.Helper()
	client, err := api.NewClient(registrar.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	r, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator("test"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		t: t, agent: a, client: client, r: r,
		discOpts: []kconsul.Option{kconsul.WithTimeout(3 * time.Second)},
	}
}

// discovery returns a new Kratos consul registry for one client.
func (e *env) discovery() *kconsul.Registry { return kconsul.New(e.client, e.discOpts...) }

// server is one running instance: a Kratos gRPC and a Kratos HTTP server registered as one
// ServiceInstance with both endpoints.
type server struct {
	inst *instance
	svc  *registry.ServiceInstance
	g    *kgrpc.Server
	h    *khttp.Server
	reg  *kconsul.Registry
	once sync.Once
	gmu  sync.Mutex // guards g across a restart
}

// start runs an instance of service with gray meta m; next, if set, is its next hop.
func (e *env) start(service, id string, m gray.Meta, next func(ctx context.Context) (string, error)) *server {
	e.t.Helper()
	return e.startVia(service, id, m, next, nil)
}

// startVia is start with the gRPC endpoint that is registered made by via from the server's own
// host:port (a proxy in front of it, say); nil registers the server's own.
func (e *env) startVia(service, id string, m gray.Meta, next func(ctx context.Context) (string, error), via func(hostport string) string) *server {
	e.t.Helper()
	meta, err := m.Encode()
	if err != nil {
		e.t.Fatal(err)
	}
	inst := &instance{id: id, next: next, tags: make(chan string, 1)}
	g := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"), kgrpc.Middleware(mmd.Server()))
	g.RegisterService(&echoDesc, inst)
	h := khttp.NewServer(khttp.Address("127.0.0.1:0"), khttp.Middleware(mmd.Server()))
	h.HandleFunc("/who", func(w http.ResponseWriter, r *http.Request) {
		s, err := inst.answer(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "%q", s)
	})
	gu, err := g.Endpoint()
	if err != nil {
		e.t.Fatal(err)
	}
	hu, err := h.Endpoint()
	if err != nil {
		e.t.Fatal(err)
	}
	if via != nil {
		gu.Host = via(gu.Host)
	}
	go func() { _ = g.Start(context.Background()) }()
	go func() { _ = h.Start(context.Background()) }()
	// One registry per instance, as one per Kratos app: the registry's Deregister cancels every
	// registration it made. No TTL heartbeat: the registrar's meta changes are not undone by it.
	reg := kconsul.New(e.client, kconsul.WithHealthCheck(false), kconsul.WithHeartbeat(false))
	s := &server{inst: inst, g: g, h: h, reg: reg, svc: &registry.ServiceInstance{
		ID: id, Name: service, Version: "v1", Metadata: meta,
		Endpoints: []string{gu.String(), hu.String()},
	}}
	if err := reg.Register(context.Background(), s.svc); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.stop)
	return s
}

// stop deregisters the instance and stops its servers, as a Kratos app does on shutdown.
func (s *server) stop() {
	s.once.Do(func() {
		_ = s.reg.Deregister(context.Background(), s.svc)
		s.gmu.Lock()
		_ = s.g.Stop(context.Background())
		s.gmu.Unlock()
		_ = s.h.Stop(context.Background())
	})
}

// restartGRPC stops the instance's gRPC server, leaving its registration in Consul as a crashed
// process does, and after down starts a new one on the same address.
func (s *server) restartGRPC(t testing.TB, hostport string, down time.Duration) {
	t.Helper()
	s.gmu.Lock()
	defer s.gmu.Unlock()
	_ = s.g.Stop(context.Background())
	time.Sleep(down)
	g := kgrpc.NewServer(kgrpc.Address(hostport), kgrpc.Middleware(mmd.Server()))
	g.RegisterService(&echoDesc, s.inst)
	if _, err := g.Endpoint(); err != nil { // listens
		t.Fatalf("restart on %s: %v", hostport, err)
	}
	go func() { _ = g.Start(context.Background()) }()
	s.g = g
}

// dial returns a Kratos gRPC client of service with the graylane option.
func (e *env) dial(service string, opts ...selector.Option) *grpc.ClientConn {
	e.t.Helper()
	return e.dialFilter(service, selector.New(opts...))
}

// dialFilter returns a Kratos gRPC client of service with f's option, and the Kratos options in
// extra after the test's own.
func (e *env) dialFilter(service string, f *selector.Filter, extra ...kgrpc.ClientOption) *grpc.ClientConn {
	e.t.Helper()
	conn, err := kgrpc.DialInsecure(context.Background(), append([]kgrpc.ClientOption{
		kgrpc.WithEndpoint("discovery:///" + service),
		kgrpc.WithDiscovery(e.discovery()),
		kgrpc.WithMiddleware(mmd.Client()),
		kgrpc.WithPrintDiscoveryDebugLog(false),
		f.GRPC(),
	}, extra...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// httpClient returns a Kratos HTTP client of service with the graylane option. Kratos' HTTP client
// watches discovery with the context given to NewClient, so closing the client cancels it too.
func (e *env) httpClient(service string, opts ...selector.Option) *httpClient {
	e.t.Helper()
	return e.httpClientWith(service, []middleware.Middleware{mmd.Client()}, opts...)
}

// httpClientWith is httpClient with the given client middleware.
func (e *env) httpClientWith(service string, mw []middleware.Middleware, opts ...selector.Option) *httpClient {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := khttp.NewClient(ctx,
		khttp.WithEndpoint("discovery:///"+service),
		khttp.WithDiscovery(e.discovery()),
		khttp.WithMiddleware(mw...),
		khttp.WithBlock(),
		selector.HTTP(opts...),
	)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	hc := &httpClient{Client: c, cancel: cancel}
	e.t.Cleanup(func() { hc.Close() })
	return hc
}

type httpClient struct {
	*khttp.Client
	cancel context.CancelFunc
}

func (c *httpClient) Close() error {
	err := c.Client.Close()
	c.cancel()
	return err
}

// who makes a unary call with the given headers (name, value pairs) and returns the answer.
func who(ctx context.Context, conn *grpc.ClientConn, headers ...string) (string, error) {
	out := new(wrapperspb.StringValue)
	ctx = withHeaders(ctx, headers...)
	err := conn.Invoke(ctx, whoMethod, wrapperspb.String(""), out)
	return out.GetValue(), err
}

// watchStream opens a server stream with the given headers and returns its one answer.
func watchStream(ctx context.Context, conn *grpc.ClientConn, headers ...string) (string, error) {
	ctx = grpcmd.AppendToOutgoingContext(ctx, headers...)
	s, err := conn.NewStream(ctx, &echoDesc.Streams[0], watchMethod)
	if err != nil {
		return "", err
	}
	if err := s.SendMsg(wrapperspb.String("")); err != nil {
		return "", err
	}
	if err := s.CloseSend(); err != nil {
		return "", err
	}
	out := new(wrapperspb.StringValue)
	if err := s.RecvMsg(out); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

// withHeaders sets request headers in Kratos client metadata, as Kratos code does.
func withHeaders(ctx context.Context, headers ...string) context.Context {
	if len(headers) == 0 {
		return ctx
	}
	return metadata.AppendToClientContext(ctx, headers...)
}

// getWho makes an HTTP Invoke of /who with the given headers.
func getWho(ctx context.Context, c *httpClient, headers ...string) (string, error) {
	var out wrapperspb.StringValue
	hdr := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		hdr.Set(headers[i], headers[i+1])
	}
	err := c.Invoke(ctx, http.MethodGet, "/who", nil, &out, khttp.Header(&hdr))
	return out.GetValue(), err
}

// callers runs call on n goroutines, over and over, until stop is closed; Wait on the result.
func callers(n int, stop <-chan struct{}, call func()) *sync.WaitGroup {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				call()
			}
		}()
	}
	return &wg
}

// waitFor polls cond until it holds or the timeout passes.
var waitFor = eventually.Wait

// count makes n calls and counts the answers.
func count(t testing.TB, n int, call func(i int) (string, error)) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		s, err := call(i)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		got[s]++
	}
	return got
}

func do(t testing.TB, r *registrar.Registrar, service string, op registrar.Op) {
	t.Helper()
	if _, err := r.Do(context.Background(), service, op); err != nil {
		t.Fatalf("%s: %v", op, err)
	}
}

// goroutines returns the stacks of running goroutines that mention one of the given substrings.
func goroutines(subs ...string) []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, s := range subs {
			if strings.Contains(g, s) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
