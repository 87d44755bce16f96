// Package apisix holds the APISIX material of the examples: the route graylane generates for
// bservice (route.json), checked here against the command's output.
package apisix

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

var update = flag.Bool("update", false, "rewrite route.json from the command's output")

// TestRoute registers bservice.yaml in a real Consul, runs `graylane apisix route` as the compose
// stack's route job does (without --apply) and compares what it prints with route.json.
func TestRoute(t *testing.T) {
	agent := consultest.Start(t)
	specs, err := registrar.LoadSpecs("bservice.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := registrar.New(registrar.NewConfig(agent.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "graylane")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/graylane").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "apisix", "route", "--service", "bservice", "--uri", "/api/*",
		"--sticky-header", "x-user-id", "--echo-header", "x-gray-lane")
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+agent.HTTPAddr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("graylane apisix route: %v\n%s", err, stderr.String())
	}
	if *update {
		if err := os.WriteFile("route.json", out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("route.json")
	if err != nil {
		t.Fatal(err)
	}
	var got, exp any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if err := json.Unmarshal(want, &exp); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, exp) {
		t.Errorf("graylane apisix route printed\n%s\nroute.json holds\n%s", out, want)
	}
}
