package watch_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/watch"
)

// httpsWatcher returns a watcher of a's HTTPS port whose dials are counted.
func httpsWatcher(t *testing.T, a *consultest.Agent, dials *atomic.Int64, opts ...watch.Option) *watch.Watcher {
	t.Helper()
	cfg := watch.NewConfig("https://" + a.HTTPSAddr)
	cfg.TLSConfig = api.TLSConfig{CAPem: a.CAPEM}
	dial := cfg.Transport.DialContext
	cfg.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	w, err := watch.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// registerCatalog registers an instance of service on a node of its own through the catalog, with
// meta.
func registerCatalog(t *testing.T, c *api.Client, service string, meta map[string]string) {
	t.Helper()
	_, err := c.Catalog().Register(&api.CatalogRegistration{Node: "node-" + service, Address: "127.0.0.1",
		Service: &api.AgentService{ID: service + "-1", Service: service, Address: "127.0.0.1", Port: 9000, Meta: meta}}, nil)
	if err != nil {
		t.Fatal(err)
	}
}

// checkNoConnLeak fails if goroutines of HTTP/2 connections (net/http's or graylane's own
// event-driven client's) outlive a watcher's Close.
func checkNoConnLeak(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "x/net/http2.(*ClientConn)") && !strings.Contains(stacks, "x/net/http2.(*clientStream)") &&
			!strings.Contains(stacks, "graylane/internal/consulclient.") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP/2 connection goroutines outlived Close:\n%s", stacks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWatcherOverHTTPS: a watcher of an agent's HTTPS port follows 300 services, each with its own
// blocking query, on 2 HTTP/2 connections (250 streams each), and their options with one more
// query, on a connection of its own; a change reaches its view; Close closes the connections and
// leaves no goroutine behind.
func TestWatcherOverHTTPS(t *testing.T) {
	a := consultest.StartTLS(t)
	client, err := api.NewClient(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	const services = 300
	for i := range services {
		registerCatalog(t, client, fmt.Sprintf("tls-%d", i), nil)
	}
	var dials atomic.Int64
	w := httpsWatcher(t, a, &dials)
	views := make([]*watch.ServiceView, services)
	for i := range views {
		views[i] = w.Service(fmt.Sprintf("tls-%d", i))
	}
	for _, v := range views {
		select {
		case <-v.Ready():
		case <-time.After(20 * time.Second):
			t.Fatalf("not ready: %+v", v.State())
		}
	}
	registerCatalog(t, client, "tls-7", map[string]string{"canary": "true", "weight": "5000"})
	waitFor(t, 10*time.Second, "the change of tls-7", func() bool {
		in := views[7].Instances()
		return in != nil && len(in.Endpoints) == 1 && in.Endpoints[0].Meta["weight"] == "5000"
	})
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d services and their options over HTTPS dialled %d connections, want 3", services, n)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t)
	checkNoConnLeak(t)
}

// TestWatcherOverHTTPSSurvivesAgentRestart: the agent behind a watcher's HTTP/2 connections stops;
// the view turns stale and keeps its snapshot; the agent comes back (a dev agent, empty) and the
// service is registered again: the view recovers on a new connection.
func TestWatcherOverHTTPSSurvivesAgentRestart(t *testing.T) {
	a := consultest.StartTLS(t)
	client, err := api.NewClient(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	registerCatalog(t, client, "tls-r", map[string]string{"version": "v1"})
	var dials atomic.Int64
	w := httpsWatcher(t, a, &dials, watch.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	v := w.Service("tls-r")
	<-v.Ready()

	a.Stop()
	waitFor(t, 10*time.Second, "the view to turn stale", func() bool { return v.State().Stale })
	if in := v.Instances(); in == nil || len(in.Endpoints) != 1 {
		t.Fatalf("while the agent is down the view lost its instances: %+v", in)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	registerCatalog(t, client, "tls-r", map[string]string{"version": "v2"})
	waitFor(t, 30*time.Second, "the view to recover", func() bool {
		in := v.Instances()
		return !v.State().Stale && in != nil && len(in.Endpoints) == 1 && in.Endpoints[0].Meta["version"] == "v2"
	})
	w.Close()
	checkNoLeak(t)
	checkNoConnLeak(t)
}

// TestWatcherOverHTTPSHoldsNoGoroutinePerService: over HTTPS the services' blocking queries wait
// in the event-driven HTTP/2 client, not in goroutines: following 600 services adds a fixed number
// of goroutines (the client's readers and workers, the options watch), not one or two per service;
// a change still reaches its view, and Close, with a query of every service in flight, ends them
// all.
func TestWatcherOverHTTPSHoldsNoGoroutinePerService(t *testing.T) {
	a := consultest.StartTLS(t)
	client, err := api.NewClient(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	const services = 600
	for i := range services {
		registerCatalog(t, client, fmt.Sprintf("gr-%d", i), nil)
	}
	before := runtime.NumGoroutine()
	var dials atomic.Int64
	w := httpsWatcher(t, a, &dials)
	views := make([]*watch.ServiceView, services)
	for i := range views {
		views[i] = w.Service(fmt.Sprintf("gr-%d", i))
	}
	for _, v := range views {
		select {
		case <-v.Ready():
		case <-time.After(30 * time.Second):
			t.Fatalf("not ready: %+v", v.State())
		}
	}
	// Every service's query is back in flight once each view has taken its first answer.
	time.Sleep(200 * time.Millisecond)
	added := runtime.NumGoroutine() - before
	t.Logf("%d services over HTTPS: %d goroutines added (%.3f per service), %d connections dialled", services, added, float64(added)/services, dials.Load())
	if added > 60 {
		t.Fatalf("%d services over HTTPS added %d goroutines: more than a fixed pool", services, added)
	}
	registerCatalog(t, client, "gr-42", map[string]string{"canary": "true", "weight": "5000"})
	waitFor(t, 10*time.Second, "the change of gr-42", func() bool {
		in := views[42].Instances()
		return in != nil && len(in.Endpoints) == 1 && in.Endpoints[0].Meta["weight"] == "5000"
	})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t)
	checkNoConnLeak(t)
}

// TestCloseDoesNotWaitForABackoff: a service whose queries fail waits between them on a timer, not
// in a goroutine; Close ends that wait at once instead of after it.
func TestCloseDoesNotWaitForABackoff(t *testing.T) {
	a := consultest.StartTLS(t)
	var dials atomic.Int64
	w := httpsWatcher(t, a, &dials, watch.WithBackoff(time.Minute, time.Minute))
	v := w.Service("backoff")
	<-v.Ready()
	a.Stop()
	waitFor(t, 10*time.Second, "the query to fail", func() bool { return v.State().LastError != nil })
	done := make(chan struct{})
	go func() {
		w.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Close waited for the minute-long pause before the next query")
	}
	checkNoLeak(t)
	checkNoConnLeak(t)
}
