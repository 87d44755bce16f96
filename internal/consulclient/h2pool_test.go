package consulclient_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
)

// httpsConfig is the configuration of a client of a's HTTPS port, whose dials are counted.
func httpsConfig(a *consultest.Agent, dials *atomic.Int64) *api.Config {
	cfg := consulclient.Config(a.HTTPSAddr)
	cfg.Scheme = "https"
	cfg.TLSConfig = api.TLSConfig{CAPem: a.CAPEM}
	dial := cfg.Transport.DialContext
	cfg.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	return cfg
}

func newPooled(t *testing.T, cfg *api.Config) *consulclient.Pooled {
	t.Helper()
	c, err := consulclient.NewPooled(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkNoConnGoroutines fails if goroutines of HTTP/2 connections are still running shortly after
// the client closed.
func checkNoConnGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "x/net/http2.(*ClientConn)") && !strings.Contains(stacks, "x/net/http2.(*clientStream)") &&
			!strings.Contains(stacks, "consulclient.(*h2Pool)") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection goroutines outlived Close:\n%s", stacks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPooledSharesConnections: 600 blocking queries started together over HTTPS share 3 HTTP/2
// connections (250 streams each), dialled one at a time, and every one of them wakes at the change
// it waits for. Closing the client closes the connections and ends their goroutines.
func TestPooledSharesConnections(t *testing.T) {
	a := consultest.StartTLS(t)
	var dials atomic.Int64
	c := newPooled(t, httpsConfig(a, &dials))
	if !c.Multiplexed() {
		t.Fatal("a client of an HTTPS address is not multiplexed")
	}
	kv := c.Client.KV()
	if _, err := kv.Put(&api.KVPair{Key: "k", Value: []byte("0")}, nil); err != nil {
		t.Fatal(err)
	}
	_, meta, err := kv.Get("k", nil)
	if err != nil {
		t.Fatal(err)
	}

	const queries = 600
	var wg sync.WaitGroup
	var woke atomic.Int64
	errs := make(chan error, queries)
	for range queries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pair, _, err := kv.Get("k", &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
			if err != nil {
				errs <- err
				return
			}
			if string(pair.Value) == "1" {
				woke.Add(1)
			}
		}()
	}
	eventually.Wait(t, 10*time.Second, "3 connections", func() bool { return c.Conns() == 3 })
	time.Sleep(500 * time.Millisecond) // any further dial would come now
	if _, err := kv.Put(&api.KVPair{Key: "k", Value: []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if woke.Load() != queries {
		t.Fatalf("%d of %d blocking queries woke with the change", woke.Load(), queries)
	}
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d blocking queries dialled %d connections, want 3", queries, n)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := c.Conns(); n != 0 {
		t.Fatalf("%d connections open after Close", n)
	}
	if _, _, err := kv.Get("k", nil); err == nil {
		t.Fatal("a closed client still answers")
	}
	checkNoConnGoroutines(t)
}

// TestPooledSurvivesAgentRestart: the connections die with the agent, and a blocking query in flight
// ends; the requests made while it is away fail, and the first ones after it is back open a new
// connection.
func TestPooledSurvivesAgentRestart(t *testing.T) {
	a := consultest.StartTLS(t)
	var dials atomic.Int64
	c := newPooled(t, httpsConfig(a, &dials))
	if _, err := c.Client.Status().Leader(); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, meta, err := c.Client.KV().Get("k", nil)
		if err == nil {
			_, _, err = c.Client.KV().Get("k", &api.QueryOptions{WaitIndex: meta.LastIndex + 1000, WaitTime: time.Minute})
		}
		blocked <- err
	}()
	time.Sleep(200 * time.Millisecond)
	a.Stop()
	select {
	case <-blocked: // an error, or the answer of an agent that ends its blocking queries as it leaves
	case <-time.After(10 * time.Second):
		t.Fatal("a blocking query in flight when the agent stopped hangs")
	}
	if _, err := c.Client.Status().Leader(); err == nil {
		t.Fatal("a request succeeded while the agent is down")
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually.Wait(t, 10*time.Second, "an answer from the restarted agent", func() bool {
		_, err := c.Client.Status().Leader()
		return err == nil
	})
	if n := c.Conns(); n != 1 {
		t.Fatalf("%d connections after the restart, want 1", n)
	}
}

// TestPooledRefusedIsAConnLimit: an agent that already holds limits.http_max_conns_per_client
// connections from this address answers a new one with an HTTP/1.1 429; the client reports it as
// such (IsConnLimit), so that a watcher says which setting to raise.
func TestPooledRefusedIsAConnLimit(t *testing.T) {
	var dials atomic.Int64
	expectConnLimit(t, func(a *consultest.Agent) error {
		c := newPooled(t, httpsConfig(a, &dials))
		defer c.Close()
		_, err := c.Client.Status().Leader()
		return err
	})
}

// expectConnLimit starts an agent at limits.http_max_conns_per_client = 2, fills both slots
// (holdConnSlots), and requires that request, made with a fresh client, fails with an error for
// which IsConnLimit reports true. An attempt that got through anyway (the agent's count trailing
// on a loaded machine) is made again, up to 30 times. Any other error fails at once.
func expectConnLimit(t *testing.T, request func(a *consultest.Agent) error) {
	t.Helper()
	a := consultest.StartTLS(t, "-hcl", "limits { http_max_conns_per_client = 2 }")
	holdConnSlots(t, a, 2)
	for attempt := 1; ; attempt++ {
		time.Sleep(100 * time.Millisecond)
		err := request(a)
		switch {
		case consulclient.IsConnLimit(err):
			t.Logf("refused (attempt %d): %v", attempt, err)
			return
		case err != nil:
			t.Fatalf("a refused connection: %v, want a connection limit error", err)
		case attempt == 30:
			t.Fatal("the agent at its limit never refused a connection in 30 attempts")
		}
	}
}

// TestPooledFallsBackToHTTP1: an HTTPS server that does not negotiate HTTP/2 is reached over
// HTTP/1.1, as New's clients reach it.
func TestPooledFallsBackToHTTP1(t *testing.T) {
	var protos sync.Map
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos.Store(r.Proto, true)
		fmt.Fprint(w, `"127.0.0.1:8300"`)
	}))
	srv.StartTLS() // HTTP/1.1 only: EnableHTTP2 is not set
	defer srv.Close()
	cfg := consulclient.Config(srv.Listener.Addr().String())
	cfg.Scheme = "https"
	cfg.Transport.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	c := newPooled(t, cfg)
	for range 2 {
		leader, err := c.Client.Status().Leader()
		if err != nil || leader != "127.0.0.1:8300" {
			t.Fatalf("leader through an HTTP/1.1 server: %q, %v", leader, err)
		}
	}
	if c.Multiplexed() {
		t.Fatal("the client says it is multiplexed over an HTTP/1.1 server")
	}
	if _, ok := protos.Load("HTTP/1.1"); !ok {
		t.Fatal("the server saw no HTTP/1.1 request")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPooledOverPlainHTTP: a client of a plain HTTP address uses the configuration's transport, as
// New's clients do, and holds no HTTP/2 connection.
func TestPooledOverPlainHTTP(t *testing.T) {
	a := consultest.Start(t)
	c := newPooled(t, consulclient.Config(a.HTTPAddr))
	if _, err := c.Client.Status().Leader(); err != nil {
		t.Fatal(err)
	}
	if c.Multiplexed() || c.Conns() != 0 {
		t.Fatalf("a plain HTTP client: multiplexed %v, %d HTTP/2 connections", c.Multiplexed(), c.Conns())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// holdConnSlots takes n of the agent's connection slots for the rest of the test: n HTTP/1.1
// connections over its HTTPS port, each answered once (so that the agent has accepted and counted
// it) and then held by a blocking query in flight, which the agent can neither finish nor close
// as idle before the test ends. A connection that only finished its handshake was seen to free
// its slot early.
func holdConnSlots(t *testing.T, a *consultest.Agent, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxConnsPerHost: 1,
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}} // no HTTP/2: one request, one connection
		t.Cleanup(tr.CloseIdleConnections)
		hc := &http.Client{Transport: tr}
		get := func(ctx context.Context, path string) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+a.HTTPSAddr+path, nil)
			if err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.Copy(io.Discard, resp.Body)
			return err
		}
		if err := get(ctx, "/v1/status/leader"); err != nil {
			t.Fatalf("holding slot %d: %v", i+1, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			get(ctx, fmt.Sprintf("/v1/kv/held-%d?index=1000000000&wait=10m", i)) // ends with the test
		}()
	}
	time.Sleep(200 * time.Millisecond) // the blocking queries are sent on the answered connections
}
