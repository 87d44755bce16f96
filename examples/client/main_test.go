package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
)

// TestClient runs the example service (stable, and a canary at weight 30) as processes on a real
// Consul and the client against them: about 30 % of users reach the canary.
func TestClient(t *testing.T) {
	agent := consultest.Start(t)
	bin := filepath.Join(t.TempDir(), "backend")
	if out, err := exec.Command("go", "build", "-o", bin, "../backend").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for id, meta := range map[string]string{"bservice-1": `{"version":"v1"}`, "bservice-canary-1": `{"version":"v2","canary":"true","weight":"30"}`} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+agent.HTTPAddr, "GRAY_SERVICE=bservice", "GRAY_ID="+id,
			"GRAY_META="+meta, "LISTEN=127.0.0.1:0", "GRPC_LISTEN=127.0.0.1:0", "ADVERTISE=127.0.0.1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	}
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr)
	client, _ := api.NewClient(api.DefaultConfig())
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if e, _, _ := client.Health().Service("bservice", "", true, nil); len(e) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the instances did not pass their checks")
		}
	}

	var out bytes.Buffer
	if err := run(context.Background(), &out, "bservice", 1000, nil); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`canary\s+(\d+)\s+[\d.]+%  e.g. bservice-canary-1 \(canary\)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("output:\n%s", out.String())
	}
	if n, _ := strconv.Atoi(m[1]); n < 250 || n > 350 {
		t.Errorf("%d of 1000 users in the canary at weight 30:\n%s", n, out.String())
	}
}
