package registrar_test

import (
	"context"
	"testing"
	"time"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	"github.com/go-kratos/kratos/v2/registry"
	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// TestKratosRegistryKeepsGrayMeta: a Kratos app registers itself through the Kratos consul registry
// (TTL heartbeat every second) with gray meta from graylane. A weight set with graylane leaves its
// heartbeat passing; when the agent loses the instance, the registry re-registers its original meta
// and the keeper writes the recorded weight back; a restart starts from the recorded state.
func TestKratosRegistryKeepsGrayMeta(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	ctx := context.Background()
	spec := gray.Meta{Canary: true, Match: []gray.Rule{{Header: []gray.HeaderMatch{{Key: "canary", ValueMatch: gray.ValueMatch{Exact: "true"}}}}}}

	desired, err := r.DesiredMeta(ctx, "kapp", "kapp-1", spec)
	if err != nil {
		t.Fatal(err)
	}
	md, err := registrar.KratosMetadata(desired, map[string]string{"owner": "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := api.NewClient(registrar.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	kreg := kconsul.New(client, kconsul.WithHealthCheck(false), kconsul.WithHeartbeat(true), kconsul.WithHealthCheckInterval(1))
	svc := &registry.ServiceInstance{ID: "kapp-1", Name: "kapp", Version: "v2", Metadata: md, Endpoints: []string{"http://127.0.0.1:18000"}}
	if err := kreg.Register(ctx, svc); err != nil {
		t.Fatal(err)
	}
	defer kreg.Deregister(ctx, svc)
	keeper := r.Keep("kapp", "kapp-1", spec)
	defer keeper.Close()

	health := func() string {
		checks, _ := client.Agent().Checks()
		if c := checks["service:kapp-1"]; c != nil {
			return c.Status
		}
		return "missing"
	}
	waitFor(t, 10*time.Second, "the Kratos heartbeat to pass", func() bool { return health() == api.HealthPassing })

	do(t, r, "kapp", registrar.SetWeight{Lane: "canary", Weight: 2500})
	time.Sleep(2500 * time.Millisecond) // two heartbeats
	if got := grayOf(t, r, "kapp")["kapp-1"].Weight; got != 2500 || health() != api.HealthPassing {
		t.Fatalf("after the weight change: weight %s, heartbeat %s", got, health())
	}

	// The agent loses the instance: the next heartbeat fails and the registry re-registers its
	// original meta (no weight); the keeper restores 25 %.
	if err := client.Agent().ServiceDeregister("kapp-1"); err != nil {
		t.Fatal(err)
	}
	weight := func() gray.Weight {
		svc, _, err := client.Agent().Service("kapp-1", nil)
		if err != nil {
			return 0
		}
		m, _ := gray.ParseMeta(svc.Meta)
		return m.Weight
	}
	waitFor(t, 20*time.Second, "the registry to re-register and the keeper to repair", func() bool {
		return keeper.Repairs() > 0 && weight() == 2500
	})

	// A restarted app starts from the recorded state.
	again, err := r.DesiredMeta(ctx, "kapp", "kapp-1", spec)
	if err != nil || again.Weight != 2500 || len(again.Match) != 1 {
		t.Fatalf("desired meta after restart: %+v, %v", again, err)
	}
}

// TestKeeperNeverUndrains: with a keeper running, an instance drained by an operator is never seen
// without its drain mark before it leaves, and is not brought back after.
func TestKeeperNeverUndrains(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	spec := grayOf(t, r, "bservice")["bservice-canary-1"]
	keeper := r.Keep("bservice", "bservice-canary-1", spec)
	defer keeper.Close()

	done := make(chan error, 1)
	go func() {
		_, err := r.Drain(context.Background(), "bservice-canary-1", registrar.DrainOptions{Grace: 200 * time.Millisecond})
		done <- err
	}()
	agent := r.Client().Agent()
	drained, finished := false, false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		svc, _, err := agent.Service("bservice-canary-1", nil)
		if err == nil {
			m, _ := gray.ParseMeta(svc.Meta)
			if drained && !m.Drain {
				t.Fatalf("the instance was un-drained: %v", svc.Meta)
			}
			drained = drained || m.Drain
		} else if finished {
			break
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !drained || !finished {
		t.Fatalf("drained %v, finished %v", drained, finished)
	}
	time.Sleep(time.Second)
	if _, _, err := agent.Service("bservice-canary-1", nil); err == nil {
		t.Fatal("the keeper brought the deregistered instance back")
	}
}
