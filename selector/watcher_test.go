package selector_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/node/direct"
	"github.com/go-kratos/kratos/v2/selector/wrr"
	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// metaAsFirstSeen is a resolver for the contrib consul registry that maps Consul's answer as the
// registry's own resolver does, but keeps each instance's meta as it was first seen: a registry
// that is never in time with a meta change, so that only a watcher can show one.
func metaAsFirstSeen() kconsul.ServiceResolver {
	var seen atomic.Pointer[map[string]map[string]string]
	seen.Store(&map[string]map[string]string{})
	return func(_ context.Context, entries []*api.ServiceEntry) []*registry.ServiceInstance {
		known := *seen.Load()
		next := make(map[string]map[string]string, len(entries))
		out := make([]*registry.ServiceInstance, 0, len(entries))
		for _, e := range entries {
			meta, ok := known[e.Service.ID]
			if !ok {
				meta = e.Service.Meta
			}
			next[e.Service.ID] = meta
			var endpoints []string
			for tag, a := range e.Service.TaggedAddresses {
				if !strings.HasPrefix(tag, "lan") && !strings.HasPrefix(tag, "wan") {
					endpoints = append(endpoints, a.Address)
				}
			}
			out = append(out, &registry.ServiceInstance{ID: e.Service.ID, Name: e.Service.Service,
				Version: "v1", Metadata: meta, Endpoints: endpoints})
		}
		seen.Store(&next)
		return out
	}
}

// TestWatcherMeta: with WithWatcher, a client takes its nodes' meta from graylane's watcher. The
// clients discover through a registry that never shows a meta change (metaAsFirstSeen): the client
// without a watcher stays where registration put it, the one with a watcher follows the registrar
// and a meta value broken by hand, and so do an HTTP client (matched by its http endpoints) and a
// Builder with a watcher.
func TestWatcherMeta(t *testing.T) {
	e := newEnv(t)
	e.discOpts = append(e.discOpts, kconsul.WithServiceResolver(metaAsFirstSeen()))
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Match: matchUser123}, nil)
	w, err := watch.New(watch.NewConfig(e.agent.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var problems atomic.Value
	fresh := e.dial("bservice", selector.WithWatcher(w), selector.WithProblems(func(err error) { problems.Store(err) }))
	frozen := e.dial("bservice")
	overHTTP := e.httpClient("bservice", selector.WithWatcher(w)) // its nodes are the instances' http endpoints
	ctx := context.Background()
	for _, conn := range []struct {
		name string
		who  func(h ...string) (string, error)
	}{
		{"with the watcher", func(h ...string) (string, error) { return who(ctx, fresh, h...) }},
		{"without", func(h ...string) (string, error) { return who(ctx, frozen, h...) }},
	} {
		waitFor(t, 10*time.Second, "the canary "+conn.name, func() bool { s, err := conn.who("userid", "123"); return err == nil && s == "c1" })
		// Until gRPC has connected s1 the base lane has no instance, and the decision falls back
		// to every instance: wait for it before counting.
		waitFor(t, 10*time.Second, "stable "+conn.name, func() bool { s, err := conn.who(); return err == nil && s == "s1" })
		if got := count(t, 100, func(int) (string, error) { return conn.who() }); got["s1"] != 100 {
			t.Fatalf("%s, before the raise: %v, want every unmatched call on s1", conn.name, got)
		}
	}

	do(t, e.r, "bservice", registrar.SetWeight{Lane: "canary", Weight: gray.MaxWeight})
	waitFor(t, 10*time.Second, "the raise, with the watcher", func() bool { s, err := who(ctx, fresh); return err == nil && s == "c1" })
	if got := count(t, 100, func(int) (string, error) { return who(ctx, fresh) }); got["c1"] != 100 {
		t.Fatalf("with the watcher, after the raise to 100 %%: %v", got)
	}
	waitFor(t, 10*time.Second, "the raise, over HTTP", func() bool { s, err := getWho(ctx, overHTTP); return err == nil && s == "c1" })
	if got := count(t, 100, func(int) (string, error) { return getWho(ctx, overHTTP) }); got["c1"] != 100 {
		t.Fatalf("over HTTP with the watcher, after the raise to 100 %%: %v", got)
	}
	if got := count(t, 100, func(int) (string, error) { return who(ctx, frozen) }); got["s1"] != 100 {
		t.Fatalf("without the watcher, through a registry that never shows meta changes: %v, want s1 only", got)
	}

	// A weight broken by hand: the watcher shows it, the instance is left out and reported, and
	// calls go on to s1.
	e.setMetaByHand("c1", "weight", "lots")
	waitFor(t, 10*time.Second, "the broken meta to be reported", func() bool {
		s, err := who(ctx, fresh)
		p, _ := problems.Load().(error)
		return err == nil && s == "s1" && p != nil && strings.Contains(p.Error(), "weight")
	})
	if got := count(t, 100, func(int) (string, error) { return who(ctx, fresh, "userid", "123") }); got["s1"] != 100 {
		t.Fatalf("with c1's meta broken: %v, want every call on s1, matched ones too", got)
	}
	e.setMetaByHand("c1", "weight", "100")
	waitFor(t, 10*time.Second, "the mended meta", func() bool { s, err := who(ctx, fresh); return err == nil && s == "c1" })

	// A Builder with the watcher, on a client dialed after it became the global selector. A gRPC
	// client reads Kratos' global selector, unsynchronized, whenever it builds a picker: change it
	// only while no gRPC client of the test is open.
	fresh.Close()
	frozen.Close()
	kselector.SetGlobalSelector(selector.NewBuilder(&wrr.Builder{}, &direct.Builder{}, selector.WithWatcher(w)))
	built := e.dialPlain("bservice", selector.Propagation())
	defer func() {
		built.Close()
		kselector.SetGlobalSelector(wrr.NewBuilder())
	}()
	waitFor(t, 10*time.Second, "the canary, through the Builder", func() bool { s, err := who(ctx, built); return err == nil && s == "c1" })
	do(t, e.r, "bservice", registrar.Rollback{Lane: "canary"})
	waitFor(t, 10*time.Second, "the rollback, through the Builder", func() bool { s, err := who(ctx, built); return err == nil && s == "s1" })
	if got := count(t, 100, func(int) (string, error) { return who(ctx, built) }); got["s1"] != 100 {
		t.Fatalf("through the Builder, after the rollback: %v", got)
	}
}

// TestWatcherUnreachable: a watcher that cannot reach Consul never answers; the client decides on
// the registry's meta and keeps working.
func TestWatcherUnreachable(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Weight: gray.MaxWeight}, nil)
	w, err := watch.New(watch.NewConfig("127.0.0.1:1")) // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	conn := e.dial("bservice", selector.WithWatcher(w))
	ctx := context.Background()
	waitFor(t, 10*time.Second, "the canary", func() bool { s, err := who(ctx, conn); return err == nil && s == "c1" })
	if got := count(t, 100, func(i int) (string, error) { return who(ctx, conn, "x-user-id", fmt.Sprint(i)) }); got["c1"] != 100 {
		t.Fatalf("with the watcher unanswered: %v, want the registry's meta (c1 at 100 %%)", got)
	}
	if st := w.Service("bservice").State(); !st.Stale || st.LastError == nil {
		t.Fatalf("watcher state %+v: want stale, with the error", st)
	}
}

// TestWatcherStale: a watcher that answered and then lost Consul (here its own way to Consul is cut,
// while the registry's goes on) is set aside: a rollback it cannot see still reaches the client
// through the registry.
func TestWatcherStale(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Weight: gray.MaxWeight}, nil)
	way := newCuttable(t, e.agent.HTTPAddr)
	w, err := watch.New(watch.NewConfig(way.addr()), watch.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	view := w.Service("bservice")
	<-view.Ready()
	conn := e.dial("bservice", selector.WithWatcher(w))
	ctx := context.Background()
	waitFor(t, 10*time.Second, "the canary", func() bool { s, err := who(ctx, conn); return err == nil && s == "c1" })

	way.cut()
	waitFor(t, 10*time.Second, "the watcher to turn stale", view.Stale)
	do(t, e.r, "bservice", registrar.Rollback{Lane: "canary"})
	waitFor(t, 10*time.Second, "the rollback, through the registry", func() bool { s, err := who(ctx, conn); return err == nil && s == "s1" })
	if got := count(t, 100, func(i int) (string, error) { return who(ctx, conn, "x-user-id", fmt.Sprint(i)) }); got["s1"] != 100 {
		t.Fatalf("after the rollback, with the watcher stale: %v", got)
	}
	if c1 := view.Instances().Endpoints[0]; c1.ID != "c1" || c1.Meta["weight"] != "100" {
		t.Fatal("the stale watcher's answer changed: the test did not cut it off")
	}
}

// cuttable is an HTTP way to Consul that can be cut: requests in flight are cancelled and later
// ones refused.
type cuttable struct {
	srv *httptest.Server
	mu  sync.Mutex
	off bool
	ctx context.Context
	end context.CancelFunc
}

func newCuttable(t *testing.T, consul string) *cuttable {
	c := &cuttable{}
	c.ctx, c.end = context.WithCancel(context.Background())
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: consul})
	proxy.ErrorLog = log.New(io.Discard, "", 0) // the cut's cancellations are expected
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		off, ctx := c.off, c.ctx
		c.mu.Unlock()
		if off {
			http.Error(w, "cut", http.StatusServiceUnavailable)
			return
		}
		in, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(ctx, cancel)() // the cut ends requests in flight
		proxy.ServeHTTP(w, r.WithContext(in))
	}))
	t.Cleanup(func() { c.end(); c.srv.Close() })
	return c
}

func (c *cuttable) addr() string { return strings.TrimPrefix(c.srv.URL, "http://") }

func (c *cuttable) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off = true
	c.end()
}

// TestWatcherOverHTTPS: a watcher of the agent's HTTPS port (production agents are usually served
// so), whose services' queries wait in the event-driven HTTP/2 client, gives a client its nodes'
// meta as the plain port's does: the canary takes the matched calls, and a raise to 100 % made by
// the registrar reaches the calls.
func TestWatcherOverHTTPS(t *testing.T) {
	e := newEnvOn(t, consultest.StartTLS(t))
	e.discOpts = append(e.discOpts, kconsul.WithServiceResolver(metaAsFirstSeen()))
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Match: matchUser123}, nil)
	cfg := watch.NewConfig("https://" + e.agent.HTTPSAddr)
	cfg.TLSConfig = api.TLSConfig{CAPem: e.agent.CAPEM}
	w, err := watch.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	conn := e.dial("bservice", selector.WithWatcher(w))
	ctx := context.Background()
	waitFor(t, 10*time.Second, "the canary", func() bool { s, err := who(ctx, conn, "userid", "123"); return err == nil && s == "c1" })
	waitFor(t, 10*time.Second, "stable", func() bool { s, err := who(ctx, conn); return err == nil && s == "s1" })
	do(t, e.r, "bservice", registrar.SetWeight{Lane: "canary", Weight: gray.MaxWeight})
	waitFor(t, 10*time.Second, "the raise", func() bool { s, err := who(ctx, conn); return err == nil && s == "c1" })
	if got := count(t, 100, func(int) (string, error) { return who(ctx, conn) }); got["c1"] != 100 {
		t.Fatalf("over HTTPS, after the raise to 100 %%: %v", got)
	}
}
