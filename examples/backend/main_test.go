package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
)

// TestBackend registers a canary backend in a real Consul, asks it who it is, and checks that it
// deregisters when stopped.
func TestBackend(t *testing.T) {
	agent := consultest.Start(t)
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	t.Setenv("GRAY_SERVICE", "bservice")
	t.Setenv("GRAY_ID", "bservice-canary-1")
	t.Setenv("GRAY_META", `{"canary":"true","weight":"10"}`)
	t.Setenv("LISTEN", "127.0.0.1:0")
	t.Setenv("ADVERTISE", "127.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan int, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, ready) }()
	var port int
	select {
	case port = <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(20 * time.Second):
		t.Fatal("backend did not register")
	}
	client, _ := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	svcs, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if s := svcs["bservice-canary-1"]; s == nil || s.Meta["canary"] != "true" || s.Port != port {
		t.Fatalf("registered %+v", s)
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/api/x", port), nil)
	req.Header.Set("x-md-global-gray-lane", "canary")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var r Reply
	json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if r != (Reply{Service: "bservice", Instance: "bservice-canary-1", Path: "/api/x", Lane: "canary"}) {
		t.Errorf("reply %+v", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	svcs, _ = client.Agent().Services()
	if _, ok := svcs["bservice-canary-1"]; ok {
		t.Errorf("still registered after stop")
	}
}
