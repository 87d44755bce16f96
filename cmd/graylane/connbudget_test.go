package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// TestConnBudget: the connections one process that follows every service needs, against the
// agent's limit: one per service and one for the options over plain HTTP, 250 services to a
// connection and one more over HTTPS; no warning at the limit, none for an agent without one.
func TestConnBudget(t *testing.T) {
	for _, tc := range []struct {
		b      connBudget
		needed int
		want   []string // empty: no warning
		unwant []string
	}{
		{connBudget{Agent: "a:8500", Services: 199, Limit: 200}, 200, nil, nil},
		{connBudget{Agent: "a:8500", Services: 200, Limit: 200}, 201,
			[]string{"all 200 services with gray meta or a graylane record over plain HTTP", "needs about 201 connections to the agent at a:8500, which allows 200",
				"limits.http_max_conns_per_client", "serve the agent over HTTPS"}, nil},
		{connBudget{Agent: "https://a:8501", HTTPS: true, Services: 2000, Limit: 9}, 9, nil, nil},
		{connBudget{Agent: "https://a:8501", HTTPS: true, Services: 2000, Limit: 8}, 9,
			[]string{"over HTTPS", "needs about 9 connections", "allows 8", "raise the limit"}, []string{"serve the agent over HTTPS"}},
		{connBudget{Agent: "a:8500", Services: 5000, Limit: 0}, 5001, nil, nil},
	} {
		name := fmt.Sprintf("%d services, https %v, limit %d", tc.b.Services, tc.b.HTTPS, tc.b.Limit)
		if got := tc.b.Needed(); got != tc.needed {
			t.Errorf("%s: needed %d, want %d", name, got, tc.needed)
		}
		w := tc.b.Warning()
		if len(tc.want) == 0 && w != "" {
			t.Errorf("%s: warns: %s", name, w)
		}
		for _, s := range tc.want {
			if !strings.Contains(w, s) {
				t.Errorf("%s: the warning lacks %q: %s", name, s, w)
			}
		}
		for _, s := range tc.unwant {
			if strings.Contains(w, s) {
				t.Errorf("%s: the warning holds %q: %s", name, s, w)
			}
		}
		if n := strings.Count(w, "\n"); n > 2 {
			t.Errorf("%s: the warning takes %d lines, want at most 2: %s", name, n, w)
		}
	}
}

// TestStatusWarnsBeforeTheConnectionLimitBites: against a real agent at limits
// http_max_conns_per_client = 12, graylane status counts the services a process would follow
// (gray meta in the catalog, or a graylane record of a service still registered) and warns over
// plain HTTP once they and the options' query need more connections than that; not at the limit,
// and not over HTTPS, where 250 queries share a connection.
func TestStatusWarnsBeforeTheConnectionLimitBites(t *testing.T) {
	a := consultest.StartTLS(t, "-hcl", "limits { http_max_conns_per_client = 12 }")
	cfg := registrar.NewConfig(a.HTTPAddr)
	r, err := registrar.New(cfg, registrar.WithOperator("setup"))
	if err != nil {
		t.Fatal(err)
	}
	// The setup's connection is given back before each status: the agent counts idle connections
	// against the limit too. (It is reused meanwhile: one closed after each request would leave the
	// agent freeing slots behind the test.)
	defer cfg.Transport.CloseIdleConnections()
	var spec strings.Builder
	for i := range 5 { // recorded by graylane, two of them with gray meta
		meta := ""
		if i < 2 {
			meta = ", meta: {canary: true}"
		}
		fmt.Fprintf(&spec, "- {name: rec-%d, id: rec-%d-1, port: %d%s}\n", i, i, 9000+i, meta)
	}
	specs, err := registrar.ParseSpecs("rec.yaml", []byte(spec.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	register := func(name string, meta map[string]string) {
		t.Helper()
		if err := r.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: name + "-1", Name: name, Port: 9100, Meta: meta}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 { // gray meta, no record
		register(fmt.Sprintf("meta-%d", i), map[string]string{"weight": "0", "lane": "blue"})
	}
	for i := range 3 { // neither: not followed
		register(fmt.Sprintf("plain-%d", i), map[string]string{"version": "v1"})
	}
	// The record of a service that is gone: no process follows it.
	if _, err := r.Client().KV().Put(&api.KVPair{Key: "graylane/services/gone/state", Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}

	status := func(consul string) string {
		t.Helper()
		cfg.Transport.CloseIdleConnections()
		var out, errOut strings.Builder
		if code := run(context.Background(), []string{"status", "rec-0", "--consul", consul}, &out, &errOut); code != 0 {
			t.Fatalf("status: exit %d: %s%s", code, errOut.String(), out.String())
		}
		return errOut.String()
	}
	// 10 services followed: 11 connections of 12.
	if got := status(a.HTTPAddr); got != "" {
		t.Fatalf("status with 10 services and a limit of 12 says:\n%s", got)
	}
	// 11 services: 12 connections, the limit itself.
	register("meta-5", map[string]string{"canary": "true"})
	if got := status(a.HTTPAddr); got != "" {
		t.Fatalf("status with 11 services and a limit of 12 says:\n%s", got)
	}
	// 12 services: 13 connections, one past the limit.
	register("meta-6", map[string]string{"bluegreen": "green"})
	got := status(a.HTTPAddr)
	for _, want := range []string{"graylane: warning: one process that follows all 12 services with gray meta or a graylane record over plain HTTP",
		"needs about 13 connections to the agent at " + a.HTTPAddr + ", which allows 12", "(limits.http_max_conns_per_client)",
		"serve the agent over HTTPS"} {
		if !strings.Contains(got, want) {
			t.Fatalf("status with 12 services and a limit of 12 does not say %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n"); n != 2 {
		t.Fatalf("the warning takes %d lines, want 2:\n%s", n, got)
	}
	// Over HTTPS the 12 services' queries share one connection.
	t.Setenv("CONSUL_CACERT", a.CAFile)
	if got := status("https://" + a.HTTPSAddr); got != "" {
		t.Fatalf("status over HTTPS with 12 services and a limit of 12 says:\n%s", got)
	}
}

// TestStatusSaysNothingOfALimitItCannotRead: a token that may not read the agent (agent read on its
// node, for /v1/agent/self) cannot learn the limit: status then says nothing of it, neither a
// warning nor that all is well, while the management token on the same agent and services is
// warned.
func TestStatusSaysNothingOfALimitItCannotRead(t *testing.T) {
	a := consultest.StartACL(t)
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = a.Token
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Transport.CloseIdleConnections()
	// 200 services with gray meta on a node of their own (the agent would take services on its own
	// node that it did not register out of the catalog): 201 connections over plain HTTP, one past
	// the default limit of 200.
	const services = 200
	node := &api.Node{Node: "elsewhere", Address: "127.0.0.2"}
	for first := 0; first < services; first += 100 {
		ops := api.TxnOps{{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: *node}}}
		for i := first; i < first+100; i++ {
			ops = append(ops, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node.Node,
				Service: api.AgentService{ID: fmt.Sprintf("many-%d-1", i), Service: fmt.Sprintf("many-%d", i), Port: 9000, Meta: map[string]string{"weight": "0", "lane": "blue"}}}})
		}
		ok, resp, _, err := client.Txn().Txn(ops, nil)
		if err != nil || !ok {
			t.Fatalf("registering services %d to %d: %v %+v", first, first+99, err, resp)
		}
	}
	pol, _, err := client.ACL().PolicyCreate(&api.ACLPolicy{Name: "status-read",
		Rules: `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" } key_prefix "graylane/" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reader, _, err := client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The reason for the silence below: the agent refuses the reader its configuration.
	readerCfg := registrar.NewConfig(a.HTTPAddr)
	readerCfg.Token = reader.SecretID
	readerClient, err := api.NewClient(readerCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentConnLimit(context.Background(), readerClient); !consulclient.IsPermissionDenied(err) {
		t.Fatalf("the reader token reading /v1/agent/self: %v, want a permission error", err)
	}
	readerCfg.Transport.CloseIdleConnections()
	cfg.Transport.CloseIdleConnections()

	for _, tc := range []struct {
		token string
		warns bool
	}{
		{a.Token, true},
		{reader.SecretID, false},
	} {
		t.Setenv("CONSUL_HTTP_TOKEN", tc.token)
		var out, errOut strings.Builder
		code := run(context.Background(), []string{"status", "many-0", "--consul", a.HTTPAddr}, &out, &errOut)
		if code != 0 || !strings.Contains(out.String(), "many-0-1") {
			t.Fatalf("status (warned: %v): exit %d: %s%s", tc.warns, code, errOut.String(), out.String())
		}
		warned := strings.Contains(errOut.String(), "all 200 services") && strings.Contains(errOut.String(), "needs about 201 connections")
		if warned != tc.warns || (!tc.warns && errOut.String() != "") {
			t.Fatalf("status with the token that may read the agent: %v; stderr:\n%s", tc.warns, errOut.String())
		}
	}
}
