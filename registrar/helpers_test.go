package registrar_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/registrar"
)

func newRegistrar(t *testing.T, a *consultest.Agent, who string) *registrar.Registrar {
	t.Helper()
	r, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator(who))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// aclToken creates a token with the given ACL rules, through admin's management token.
func aclToken(t *testing.T, admin *registrar.Registrar, rules string) *api.ACLToken {
	t.Helper()
	acl := admin.Client().ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: fmt.Sprintf("p-%d", rand.Int()), Rules: rules}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := acl.TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// aclAdmin returns a registrar with the management token of an agent started with StartACL.
func aclAdmin(t *testing.T, a *consultest.Agent) *registrar.Registrar {
	t.Helper()
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = a.Token
	admin, err := registrar.New(cfg, registrar.WithOperator("admin"))
	if err != nil {
		t.Fatal(err)
	}
	return admin
}

func applyFile(t *testing.T, r *registrar.Registrar, path string) []registrar.Applied {
	t.Helper()
	specs, err := registrar.LoadSpecs(path)
	if err != nil {
		t.Fatal(err)
	}
	applied, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return applied
}

// grayOf returns the decoded gray meta of every instance of a service, from the catalog.
func grayOf(t *testing.T, r *registrar.Registrar, service string) map[string]gray.Meta {
	t.Helper()
	instances, _, err := r.Instances(context.Background(), service)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]gray.Meta{}
	for _, inst := range instances {
		if inst.GrayErr != nil {
			t.Fatalf("%s: %v", inst.ID, inst.GrayErr)
		}
		out[inst.ID] = inst.Gray
	}
	return out
}

func do(t *testing.T, r *registrar.Registrar, service string, op registrar.Op) *registrar.Result {
	t.Helper()
	res, err := r.Do(context.Background(), service, op)
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	return res
}

// waitFor polls cond until it holds or the timeout passes.
var waitFor = eventually.Wait

// checkNoLeak fails if goroutines of the registrar package are still running shortly after Close.
func checkNoLeak(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "graylane/registrar.(*") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("registrar goroutines outlived Close:\n%s", stacks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func registerRaw(t *testing.T, a *consultest.Agent, reg *api.AgentServiceRegistration) {
	t.Helper()
	client, err := api.NewClient(registrar.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
}
