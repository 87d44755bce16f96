package selector_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kerrors "github.com/go-kratos/kratos/v2/errors"
	"github.com/go-kratos/kratos/v2/middleware"
	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/selector"
)

var matchUser123 = []gray.Rule{{Header: []gray.HeaderMatch{{Key: "userid", ValueMatch: gray.ValueMatch{Exact: "123"}}}}}

// userIn returns a user key of service whose bucket is in [lo, hi).
func userIn(service string, lo, hi int) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("user-%d", i)
		if b := gray.Bucket(service, k); b >= lo && b < hi {
			return k
		}
	}
}

// TestCanaryRelease runs a canary release against real Consul, real Kratos servers and a real
// Kratos gRPC client: matched traffic only, a 10 % weight set with the registrar (no client
// restart), stickiness, rollback.
func TestCanaryRelease(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "s2", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Match: matchUser123}, nil)
	f := selector.New(selector.WithStickyHeader("x-user-id"))
	conn := e.dialFilter("bservice", f)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "all three instances", func() bool {
		got := count(t, 30, func(int) (string, error) { return who(ctx, conn) })
		return got["s1"] > 0 && got["s2"] > 0
	})

	t.Run("matched header reaches only the canary", func(t *testing.T) {
		got := count(t, 200, func(int) (string, error) { return who(ctx, conn, "userid", "123") })
		if got["c1"] != 200 {
			t.Fatalf("matched calls: %v, want all on c1", got)
		}
		got = count(t, 200, func(int) (string, error) { return who(ctx, conn, "userid", "124") })
		if got["c1"] != 0 {
			t.Fatalf("unmatched calls: %v, want none on c1", got)
		}
	})

	t.Run("a weight set with the registrar takes effect without a restart", func(t *testing.T) {
		builds := f.Builds()
		do(t, e.r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 1000})
		inside := userIn("bservice", 0, 1000)
		waitFor(t, 10*time.Second, "the client to see the weight", func() bool {
			s, err := who(ctx, conn, "x-user-id", inside)
			return err == nil && s == "c1"
		})
		if f.Builds() == builds {
			t.Fatal("the filter did not prepare the new node set")
		}
	})

	t.Run("10 percent of 10,000 distinct users, within one point", func(t *testing.T) {
		builds := f.Builds()
		got := count(t, 10000, func(i int) (string, error) { return who(ctx, conn, "x-user-id", fmt.Sprintf("u%d", i)) })
		share := float64(got["c1"]) / 100
		if share < 9 || share > 11 {
			t.Fatalf("canary share %.2f %%, want 10 ± 1: %v", share, got)
		}
		if b := f.Builds() - builds; b != 0 {
			t.Fatalf("10,000 calls over an unchanged node set prepared it %d times, want 0", b)
		}
		t.Logf("canary share over 10,000 users: %.2f %%", share)
	})

	t.Run("one user always lands in one lane", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			user := fmt.Sprintf("sticky-%d", i)
			want := "stable"
			if gray.Bucket("bservice", user) < 1000 {
				want = "canary"
			}
			got := count(t, 50, func(int) (string, error) { return who(ctx, conn, "x-user-id", user) })
			lane := "stable"
			if got["c1"] > 0 {
				lane = "canary"
			}
			if (got["c1"] > 0 && got["c1"] != 50) || lane != want {
				t.Fatalf("%s (bucket %d): %v, want every call in %s", user, gray.Bucket("bservice", user), got, want)
			}
		}
	})

	t.Run("rollback stops all unmatched canary traffic", func(t *testing.T) {
		do(t, e.r, "bservice", registrar.Rollback{Lane: "canary"})
		inside := userIn("bservice", 0, 1000)
		waitFor(t, 10*time.Second, "the client to see the rollback", func() bool {
			s, err := who(ctx, conn, "x-user-id", inside)
			return err == nil && s != "c1"
		})
		got := count(t, 2000, func(i int) (string, error) { return who(ctx, conn, "x-user-id", fmt.Sprintf("u%d", i)) })
		if got["c1"] != 0 {
			t.Fatalf("after rollback: %v, want nothing on c1", got)
		}
		if s, err := who(ctx, conn, "userid", "123"); err != nil || s != "c1" {
			t.Fatalf("matched call after rollback: %q, %v; want c1", s, err)
		}
	})

	t.Run("HTTP Invoke follows the same rules", func(t *testing.T) {
		hc := e.httpClient("bservice", selector.WithStickyHeader("x-user-id"))
		got := count(t, 100, func(int) (string, error) { return getWho(ctx, hc, "userid", "123") })
		if got["c1"] != 100 {
			t.Fatalf("matched HTTP calls: %v, want all on c1", got)
		}
		got = count(t, 300, func(i int) (string, error) { return getWho(ctx, hc, "x-user-id", fmt.Sprintf("u%d", i)) })
		if got["c1"] != 0 || got["s1"] == 0 || got["s2"] == 0 {
			t.Fatalf("unmatched HTTP calls: %v, want s1 and s2 only", got)
		}
	})
}

// TestBlueGreen: a green colour deployed beside a live blue takes no production traffic; promote
// switches everything to green, rollback switches back.
func TestBlueGreen(t *testing.T) {
	e := newEnv(t)
	e.start("pay", "blue-1", gray.Meta{BlueGreen: "blue"}, nil)
	e.start("pay", "green-1", gray.Meta{BlueGreen: "green"}, nil)
	conn := e.dial("pay")
	ctx := context.Background()
	lanes := func() map[string]int {
		return count(t, 200, func(int) (string, error) { return who(ctx, conn) })
	}
	waitFor(t, 10*time.Second, "blue", func() bool { s, err := who(ctx, conn); return err == nil && s == "blue-1" })
	if got := lanes(); got["blue-1"] != 200 {
		t.Fatalf("green deployed beside blue: %v, want all on blue", got)
	}
	do(t, e.r, "pay", registrar.Promote{Lane: "green"})
	waitFor(t, 10*time.Second, "the switch to green", func() bool { s, err := who(ctx, conn); return err == nil && s == "green-1" })
	if got := lanes(); got["green-1"] != 200 {
		t.Fatalf("after promote: %v, want all on green", got)
	}
	do(t, e.r, "pay", registrar.Rollback{Lane: "green"})
	waitFor(t, 10*time.Second, "the switch back to blue", func() bool { s, err := who(ctx, conn); return err == nil && s == "blue-1" })
	if got := lanes(); got["blue-1"] != 200 {
		t.Fatalf("after rollback: %v, want all on blue", got)
	}
}

// TestCanariesStopped: every canary instance stops while calls run; the calls go to stable and none
// fails.
func TestCanariesStopped(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	c1 := e.start("bservice", "c1", gray.Meta{Canary: true, Weight: 5000, Match: matchUser123}, nil)
	c2 := e.start("bservice", "c2", gray.Meta{Canary: true, Weight: 5000, Match: matchUser123}, nil)
	conn := e.dial("bservice")
	ctx := context.Background()
	waitFor(t, 10*time.Second, "both canaries", func() bool {
		got := count(t, 20, func(int) (string, error) { return who(ctx, conn, "userid", "123") })
		return got["c1"] > 0 && got["c2"] > 0
	})

	var calls, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	wg := callers(4, stop, func() {
		_, err := who(ctx, conn, "userid", "123")
		calls.Add(1)
		if err != nil {
			failed.Add(1)
			lastErr.Store(err)
		}
	})
	time.Sleep(200 * time.Millisecond)
	c1.stop()
	c2.stop()
	waitFor(t, 10*time.Second, "matched calls on stable", func() bool { s, err := who(ctx, conn, "userid", "123"); return err == nil && s == "s1" })
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed while the canaries stopped; last: %v", failed.Load(), calls.Load(), lastErr.Load())
	}
	t.Logf("%d calls, none failed", calls.Load())
}

// TestBrokenMeta: a meta value broken by hand in Consul leaves that instance out; the client keeps
// working.
func TestBrokenMeta(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	c1 := e.start("bservice", "c1", gray.Meta{Canary: true, Weight: 5000}, nil)
	var problems atomic.Value
	conn := e.dial("bservice", selector.WithProblems(func(err error) { problems.Store(err) }))
	ctx := context.Background()
	waitFor(t, 10*time.Second, "both lanes", func() bool {
		got := count(t, 20, func(int) (string, error) { return who(ctx, conn) })
		return got["c1"] > 0 && got["s1"] > 0
	})

	e.setMetaByHand("c1", "weight", "lots")
	waitFor(t, 10*time.Second, "the broken meta to be reported", func() bool {
		who(ctx, conn)
		p, _ := problems.Load().(error)
		return p != nil && strings.Contains(p.Error(), "weight")
	})
	got := count(t, 300, func(int) (string, error) { return who(ctx, conn) })
	if got["c1"] != 0 || got["s1"] != 300 {
		t.Fatalf("with c1's meta broken: %v, want everything on s1", got)
	}
	t.Logf("reported: %v", problems.Load())
	_ = c1
}

// setMetaByHand sets one meta key of instance id, registering it again through the agent that owns
// it, as an operator editing Consul by hand would.
func (e *env) setMetaByHand(id, key, value string) {
	e.t.Helper()
	svc, _, err := e.client.Agent().Service(id, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	svc.Meta[key] = value
	if err := e.client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: svc.ID, Name: svc.Service, Tags: svc.Tags, Address: svc.Address, Port: svc.Port,
		Meta: svc.Meta, TaggedAddresses: svc.TaggedAddresses,
	}); err != nil {
		e.t.Fatal(err)
	}
}

// TestMoreThan25Instances: Kratos subsets discovery to 25 nodes by default; with the option a
// client sees all 31 instances and reaches the one canary.
func TestMoreThan25Instances(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 30; i++ {
		e.start("bservice", fmt.Sprintf("s%02d", i), gray.Meta{}, nil)
	}
	e.start("bservice", "c1", gray.Meta{Canary: true, Match: matchUser123}, nil)
	ctx := context.Background()
	nodes := func(f *selector.Filter) int {
		n := 0
		for _, l := range f.Snapshot().Lanes() {
			n += len(l.Instances)
		}
		return n
	}

	f := selector.New()
	conn := e.dialFilter("bservice", f)
	waitFor(t, 15*time.Second, "every instance to be connected", func() bool {
		s, err := who(ctx, conn, "userid", "123")
		return err == nil && s == "c1" && nodes(f) == 31
	})

	// Kratos' default, restored after the option, hands the filter 25 of the 31.
	g := selector.New()
	subset, err := kgrpc.DialInsecure(ctx, kgrpc.WithEndpoint("discovery:///bservice"), kgrpc.WithDiscovery(e.discovery()),
		kgrpc.WithPrintDiscoveryDebugLog(false), g.GRPC(), kgrpc.WithSubset(25))
	if err != nil {
		t.Fatal(err)
	}
	defer subset.Close()
	waitFor(t, 15*time.Second, "the subset client to connect", func() bool {
		_, err := who(ctx, subset)
		return err == nil && nodes(g) == 25
	})
}

// TestNeverLanesAndStrict: a client that must never enter the canary never does, not even by tag;
// strict mode fails a call that would fall back, with a typed error.
func TestNeverLanesAndStrict(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "c1", gray.Meta{Canary: true, Weight: 5000, Match: matchUser123}, nil)
	ctx := context.Background()

	batch := e.dial("bservice", selector.WithNeverLanes("canary"))
	if s, err := who(ctx, batch, "userid", "123", gray.DefaultTagKey, "canary"); err == nil {
		t.Fatalf("a client that never enters the canary reached %q", s)
	}
	s1 := e.start("bservice", "s1", gray.Meta{}, nil)
	waitFor(t, 10*time.Second, "stable", func() bool { s, err := who(ctx, batch, "userid", "123"); return err == nil && s == "s1" })
	got := count(t, 200, func(i int) (string, error) {
		return who(ctx, batch, "userid", "123", gray.DefaultTagKey, "canary")
	})
	if got["s1"] != 200 {
		t.Fatalf("never-canary client: %v", got)
	}
	s1.stop()

	strict := e.dial("bservice", selector.WithStrict())
	// Only the canary is left: unmatched calls have no lane (no stable) and would fall back.
	waitFor(t, 10*time.Second, "the strict client to refuse", func() bool {
		_, err := who(ctx, strict, "userid", "999")
		var se *selector.StrictError
		return errors.As(err, &se) && se.Service == "bservice"
	})
	if s, err := who(ctx, strict, "userid", "123"); err != nil || s != "c1" {
		t.Fatalf("matched call in strict mode: %q, %v", s, err)
	}

	// HTTP: a node filter cannot return an error. With the StrictErrors middleware the refusal is
	// a *StrictError; without it, Kratos' 503 NODE_NOT_FOUND. The canary takes half of the
	// unmatched calls by weight; the other half would fall back and is refused.
	typed := e.httpClientWith("bservice", []middleware.Middleware{selector.StrictErrors(), mmd.Client()}, selector.WithStrict())
	var err error
	var se *selector.StrictError
	waitFor(t, 10*time.Second, "the strict HTTP client to refuse with *StrictError", func() bool {
		_, err = getWho(ctx, typed, "userid", "999")
		return errors.As(err, &se) && se.Service == "bservice"
	})
	if s, err := getWho(ctx, typed, "userid", "123"); err != nil || s != "c1" {
		t.Fatalf("matched HTTP call in strict mode: %q, %v", s, err)
	}
	plain := e.httpClient("bservice", selector.WithStrict())
	waitFor(t, 10*time.Second, "the strict HTTP client without StrictErrors to refuse", func() bool {
		_, err = getWho(ctx, plain, "userid", "999")
		if errors.As(err, &se) {
			t.Fatalf("a client without StrictErrors returned %v", err)
		}
		return kerrors.Reason(err) == "NODE_NOT_FOUND"
	})
}

// TestNoGoroutineAfterClose: once a client with the option is closed, none of its goroutines is
// left: graylane starts none, and gRPC's and Kratos' discovery goroutines end with the client.
func TestNoGoroutineAfterClose(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Match: matchUser123}, nil)
	ctx := context.Background()
	client := []string{"graylane/selector.", "grpc.(*ccBalancerWrapper)", "grpc.(*addrConn)", "grpc.(*ccResolverWrapper)",
		"resolver/discovery", "consul/v2.(*Registry).resolve", "transport/http.(*resolver)"}
	waitFor(t, 15*time.Second, "goroutines of earlier clients to end", func() bool { return len(goroutines(client...)) == 0 })

	conn := e.dial("bservice")
	hc := e.httpClient("bservice")
	for i := 0; i < 20; i++ {
		if _, err := who(ctx, conn, "userid", "123"); err != nil {
			t.Fatal(err)
		}
		if _, err := watchStream(ctx, conn, "userid", "123"); err != nil {
			t.Fatal(err)
		}
		if _, err := getWho(ctx, hc, "userid", "123"); err != nil {
			t.Fatal(err)
		}
	}
	if len(goroutines(client...)) == 0 {
		t.Fatal("the check sees no client goroutine while the clients are open")
	}
	conn.Close()
	hc.Close()
	deadline := time.Now().Add(15 * time.Second)
	for left := goroutines(client...); len(left) > 0; left = goroutines(client...) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines outlived the clients' Close:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
