package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/examples/echo"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// TestChain runs bservice (stable) calling cservice (stable and canary) on a real Consul, with real
// Kratos servers and the selector on the call: a request that carries the canary lane header is
// served by bservice's stable (it has no canary) and handed on to cservice's canary; one without
// stays stable. Each instance deregisters when stopped.
func TestChain(t *testing.T) {
	agent := consultest.Start(t)
	start := func(service, id, meta, next string) int {
		t.Helper()
		var m map[string]string
		json.Unmarshal([]byte(meta), &m)
		cfg := Config{Service: service, ID: id, Meta: m, Listen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0",
			Advertise: "127.0.0.1", Next: next, StickyHeader: "x-user-id", Consul: registrar.NewConfig(agent.HTTPAddr)}
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan [2]int, 1)
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg, ready) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", id, err)
			}
		})
		select {
		case p := <-ready:
			return p[0]
		case err := <-done:
			t.Fatal(err)
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not register", id)
		}
		return 0
	}
	start("cservice", "cservice-1", `{"version":"v1"}`, "")
	canaryPort := start("cservice", "cservice-canary-1", `{"version":"v2","canary":"true"}`, "")
	port := start("bservice", "bservice-1", `{"version":"v1"}`, "cservice")

	client, _ := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	svc, _, err := client.Agent().Service("cservice-canary-1", nil)
	if err != nil || svc.Meta["canary"] != "true" || svc.TaggedAddresses["grpc"].Address == "" {
		t.Fatalf("cservice-canary-1 registered as %+v, %v", svc, err)
	}
	try := func(lane string) (echo.Reply, error) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/api/user", port), nil)
		if lane != "" {
			req.Header.Set("x-md-global-gray-lane", lane)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return echo.Reply{}, err
		}
		defer resp.Body.Close()
		var r echo.Reply
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 || r.Next == nil {
			return r, fmt.Errorf("status %d: %v", resp.StatusCode, err)
		}
		return r, nil
	}
	get := func(lane string) echo.Reply {
		t.Helper()
		r, err := try(lane)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Until cservice's instances pass their checks the call to it times out (Kratos answers 504).
	// Until both are connected, the one that is takes every call: with the stable instance not
	// there yet, production falls back to the canary, as the core's fallback wants.
	deadline := time.Now().Add(20 * time.Second)
	for _, want := range []struct{ lane, instance string }{{"canary", "cservice-canary-1"}, {"", "cservice-1"}} {
		for r, err := try(want.lane); err != nil || r.Next.Instance != want.instance; r, err = try(want.lane) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never answered a request with lane %q", want.instance, want.lane)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := 0; i < 20; i++ {
		r := get("canary")
		want := echo.Reply{Service: "bservice", Instance: "bservice-1", Version: "v1", Serves: "stable", Lane: "canary", Path: "/api/user",
			Next: &echo.Reply{Service: "cservice", Instance: "cservice-canary-1", Version: "v2", Serves: "canary", Lane: "canary", Path: echo.Method}}
		if r.String() != want.String() || *r.Next != *want.Next || r.Lane != "canary" {
			t.Fatalf("canary request: %+v > %+v", r, r.Next)
		}
		if r := get(""); r.Next.Instance != "cservice-1" || r.Next.Lane != "" {
			t.Fatalf("production request went to %s", r.String())
		}
	}
	// The canary's server metrics count its gRPC requests under its lane.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", canaryPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`graylane_server_requests_total\{code="200",lane="canary",operation="/graylane.example.Echo/Who",service="cservice"\} (2[1-9]|[3-9]\d|\d{3,})\n`).Match(body) {
		t.Errorf("metrics of cservice-canary-1:\n%s", body)
	}
}
