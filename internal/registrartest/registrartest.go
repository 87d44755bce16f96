// Package registrartest drives graylane's control plane in tests: a registrar on a test agent,
// specs applied from a file, changes made, ACL tokens created, and instances registered straight
// through the agent, past the registrar. Every helper fails the test on an error.
package registrartest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// New returns a registrar on agent a whose changes the history names who made.
func New(tb testing.TB, a *consultest.Agent, who string) *registrar.Registrar {
	tb.Helper()
	r, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator(who))
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// ACLAdmin returns a registrar with the management token of an agent started with StartACL.
func ACLAdmin(tb testing.TB, a *consultest.Agent) *registrar.Registrar {
	tb.Helper()
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = a.Token
	admin, err := registrar.New(cfg, registrar.WithOperator("admin"))
	if err != nil {
		tb.Fatal(err)
	}
	return admin
}

// ACLToken creates a token with the given ACL rules, through admin's management token.
func ACLToken(tb testing.TB, admin *registrar.Registrar, rules string) *api.ACLToken {
	tb.Helper()
	acl := admin.Client().ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: fmt.Sprintf("p-%d", rand.Int()), Rules: rules}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tok, _, err := acl.TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// ApplyFile applies the specs of a YAML file.
func ApplyFile(tb testing.TB, r *registrar.Registrar, path string) []registrar.Applied {
	tb.Helper()
	specs, err := registrar.LoadSpecs(path)
	if err != nil {
		tb.Fatal(err)
	}
	applied, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return applied
}

// Do makes a change to a service.
func Do(tb testing.TB, r *registrar.Registrar, service string, op registrar.Op) *registrar.Result {
	tb.Helper()
	res, err := r.Do(context.Background(), service, op)
	if err != nil {
		tb.Fatalf("%s: %v", op, err)
	}
	return res
}

// RegisterRaw registers an instance through agent a as it is given, without the registrar.
func RegisterRaw(tb testing.TB, a *consultest.Agent, reg *api.AgentServiceRegistration) {
	tb.Helper()
	client, err := api.NewClient(registrar.NewConfig(a.HTTPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		tb.Fatal(err)
	}
}
