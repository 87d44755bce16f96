package selector_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/node/direct"
	"github.com/go-kratos/kratos/v2/selector/wrr"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// slowProxy is a TCP proxy that waits before it connects each new connection to its target: an
// instance whose connections take longer to become ready than its neighbours'.
type slowProxy struct {
	ln     net.Listener
	delay  time.Duration
	target atomic.Value // string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newSlowProxy(t testing.TB, delay time.Duration) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, delay: delay}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// front registers the proxy in place of the server's own address.
func (p *slowProxy) front(hostport string) string {
	p.target.Store(hostport)
	return p.ln.Addr().String()
}

func (p *slowProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			time.Sleep(p.delay)
			up, err := net.Dial("tcp", p.target.Load().(string))
			if err != nil {
				c.Close()
				return
			}
			p.track(up)
			p.wg.Add(1)
			go func() { defer p.wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
			_, _ = io.Copy(c, up)
			c.Close()
		}()
	}
}

func (p *slowProxy) track(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = append(p.conns, c)
}

func (p *slowProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// waitRegistered waits until Consul lists n passing instances of service.
func (e *env) waitRegistered(service string, n int) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, service+" registered", func() bool {
		entries, _, err := e.client.Health().Service(service, "", true, nil)
		return err == nil && len(entries) == n
	})
}

// TestFreshClientsNeverSendProductionToATestOnlyCanary is the mesh's cold start. Stable's
// connections take 200 ms longer to become ready than a weight-0 canary's, so every new client sees
// the canary ready first. Kratos' own balancer hands the node filter the ready nodes only: the base
// lane looked empty and production calls fell back to the canary. With graylane's balancer stable
// is registered, merely pending: the first call waits for it.
func TestFreshClientsNeverSendProductionToATestOnlyCanary(t *testing.T) {
	e := newEnv(t)
	proxy := newSlowProxy(t, 200*time.Millisecond)
	e.startVia("coldsvc", "s1", gray.Meta{}, nil, proxy.front)
	e.start("coldsvc", "c1", gray.Meta{Canary: true}, nil)
	e.waitRegistered("coldsvc", 2)

	w, err := watch.New(watch.NewConfig(e.agent.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })

	ctx := context.Background()
	onCanary := 0
	for i := range 30 {
		var opts []selector.Option
		if i%2 == 1 {
			opts = append(opts, selector.WithWatcher(w))
		}
		conn := e.dial("coldsvc", opts...)
		got, err := who(ctx, conn)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if got != "s1" {
			onCanary++
		}
		conn.Close()
	}
	for run := range 3 {
		conn := e.dial("coldsvc")
		for i := range 100 {
			got, err := who(ctx, conn)
			if err != nil {
				t.Fatalf("run %d call %d: %v", run, i, err)
			}
			if got != "s1" {
				onCanary++
			}
		}
		conn.Close()
	}
	if onCanary > 0 {
		t.Fatalf("%d of 330 production calls reached the weight-0 canary", onCanary)
	}
}

// TestStableRestartWhileCallsRun: stable's process goes away and comes back on the same address
// while calls run, its registration left in Consul as after a crash. The calls wait for it; none
// reaches the weight-0 canary, none fails.
func TestStableRestartWhileCallsRun(t *testing.T) {
	e := newEnv(t)
	stable := e.start("restartsvc", "s1", gray.Meta{}, nil)
	e.start("restartsvc", "c1", gray.Meta{Canary: true}, nil)
	e.waitRegistered("restartsvc", 2)
	hostport := grpcHostport(t, stable.svc)

	// Kratos' own deadline for a call is 2 s unless the client says otherwise; a restart with gRPC's
	// reconnect back-off can take longer, and the calls are to wait through it.
	conn := e.dialFilter("restartsvc", selector.New(), kgrpc.WithTimeout(10*time.Second))
	if got, err := who(context.Background(), conn); err != nil || got != "s1" {
		t.Fatalf("first call: %q, %v", got, err)
	}
	stop := make(chan struct{})
	var calls, onCanary, failed atomic.Int64
	var firstErr atomic.Value
	wg := callers(4, stop, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := who(ctx, conn)
		cancel()
		calls.Add(1)
		switch {
		case err != nil:
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		case got != "s1":
			onCanary.Add(1)
		}
	})
	for range 2 {
		time.Sleep(300 * time.Millisecond)
		stable.restartGRPC(t, hostport, 500*time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d calls across two restarts of stable", calls.Load())
	if onCanary.Load() > 0 || failed.Load() > 0 {
		t.Fatalf("of %d calls, %d reached the weight-0 canary and %d failed (first: %v)",
			calls.Load(), onCanary.Load(), failed.Load(), firstErr.Load())
	}
}

// TestCallWaitingForItsLaneFailsUnavailableAtItsDeadline: stable is registered but never reachable;
// a call waits for it until its deadline and then fails with Unavailable naming the lane, never
// reaching the canary.
func TestCallWaitingForItsLaneFailsUnavailableAtItsDeadline(t *testing.T) {
	e := newEnv(t)
	stable := e.start("deadsvc", "s1", gray.Meta{}, nil)
	e.start("deadsvc", "c1", gray.Meta{Canary: true}, nil)
	e.waitRegistered("deadsvc", 2)
	stable.gmu.Lock()
	_ = stable.g.Stop(context.Background()) // gone, still registered
	stable.gmu.Unlock()

	conn := e.dial("deadsvc")
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	got, err := who(ctx, conn)
	if err == nil {
		t.Fatalf("the call succeeded on %q; want it to wait for stable and fail", got)
	}
	var lane *selector.LaneUnavailableError
	if !errors.As(err, &lane) || lane.Lane != gray.StableLane || lane.Service != "deadsvc" {
		t.Fatalf("error %v (%T), want a LaneUnavailableError for stable of deadsvc", err, err)
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("code %v, want Unavailable", code)
	}
	// The canary still takes its own traffic meanwhile.
	if got, err := who(context.Background(), conn, gray.DefaultTagKey, "canary"); err != nil || got != "c1" {
		t.Fatalf("tagged call: %q, %v; want c1", got, err)
	}
}

// grpcHostport returns the host:port of an instance's gRPC endpoint.
func grpcHostport(t testing.TB, svc *registry.ServiceInstance) string {
	t.Helper()
	for _, ep := range svc.Endpoints {
		if u, err := url.Parse(ep); err == nil && u.Scheme == "grpc" {
			return u.Host
		}
	}
	t.Fatalf("no grpc endpoint in %v", svc.Endpoints)
	return ""
}

// TestBuilderFreshClientsWaitForStable is the cold start with the selector as Kratos' global
// selector (NewBuilder) and Propagation on the client: the same balancer, so the same wait.
func TestBuilderFreshClientsWaitForStable(t *testing.T) {
	kselector.SetGlobalSelector(selector.NewBuilder(&wrr.Builder{}, &direct.Builder{}))
	defer kselector.SetGlobalSelector(wrr.NewBuilder())
	e := newEnv(t)
	proxy := newSlowProxy(t, 200*time.Millisecond)
	e.startVia("coldbuilder", "s1", gray.Meta{}, nil, proxy.front)
	e.start("coldbuilder", "c1", gray.Meta{Canary: true}, nil)
	e.waitRegistered("coldbuilder", 2)
	for i := range 10 {
		conn := e.dialPlain("coldbuilder", selector.Propagation())
		if got, err := who(context.Background(), conn); err != nil || got != "s1" {
			t.Fatalf("client %d: %q, %v; want stable's s1", i, got, err)
		}
		conn.Close()
	}
}
