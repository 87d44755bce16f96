package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/e2e"
	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/apisixtest"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/watch"
)

// TestEndToEndThroughStandIns runs the end-to-end check (package e2e, which make e2e-apisix runs
// against a real APISIX) here, where no APISIX runs: the gateway and its Admin API are stand-ins
// (internal/apisixtest) that route as APISIX was seen to; the runner, its plugin, Consul, the
// sync and the backends are real. It keeps the check itself correct and exercises the whole chain:
// route strip, runner, traffic-split, lane upstreams.
func TestEndToEndThroughStandIns(t *testing.T) {
	agent := consultest.Start(t)
	client, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	for id, meta := range map[string]map[string]string{
		"bservice-stable-1": {"version": "v1"},
		"bservice-stable-2": {"version": "v1"},
		"bservice-canary-1": {"version": "v2", "canary": "true", "weight": "10", "match": canaryMatch},
		"bservice-green-1":  {"version": "v3", "bluegreen": "green"},
	} {
		srv := httptest.NewServer(backend(id))
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		port, _ := strconv.Atoi(u.Port())
		register(t, client, id, port, meta)
	}
	sock := filepath.Join(t.TempDir(), "runner.sock")
	runner := apisixtest.StartRunner(t, sock, []string{runnerBinary(t), "run"}, "CONSUL_HTTP_ADDR="+agent.HTTPAddr)
	admin := apisixtest.NewAdminAPI(t)
	gw := apisixtest.NewGateway(t, admin, sock)
	e2e.Run(t, e2e.Config{Gateway: gw.URL, Admin: admin.URL, AdminKey: admin.Key, Consul: agent.HTTPAddr, Service: "bservice",
		RunnerCalls: gw.RunnerCalls})

	t.Run("runner down: degradation serves the base, spoofing still fails", func(t *testing.T) {
		w, err := watch.New(&api.Config{Address: agent.HTTPAddr})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		a, err := apisix.NewAdmin(admin.URL, admin.Key)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		spec := apisix.RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice", TrustedCIDRs: []string{"192.0.2.0/24"}}}
		if _, err := apisix.ApplyRoute(ctx, a, w, spec); err != nil {
			t.Fatal(err)
		}
		if err := runner.Stop(); err != nil {
			t.Fatalf("runner exit: %v", err)
		}
		stable := map[string]bool{"bservice-stable-1": true, "bservice-stable-2": true}
		for _, lane := range []string{"canary", "green"} {
			req, _ := http.NewRequest(http.MethodGet, gw.URL+"/api/order", nil)
			req.Header.Set(gray.DefaultTagKey, lane)
			req.Header.Set("userid", "123")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var r e2e.Reply
			json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !stable[r.Instance] || r.Lane != "" {
				t.Errorf("spoofed %s with the runner down: status %d, served by %q with lane header %q", lane, resp.StatusCode, r.Instance, r.Lane)
			}
		}
	})

	if r := admin.Rejected(); len(r) > 0 {
		t.Errorf("the Admin API stand-in refused: %v", r)
	}
	if d := admin.Dangling(); len(d) > 0 {
		t.Errorf("routes named upstreams before they existed: %v", d)
	}
}

// backend answers like examples/backend: who it is and the lane header it received.
func backend(id string) http.Handler {
	key := gray.NewHeaderKey(gray.DefaultTagKey)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(e2e.Reply{Instance: id, Lane: r.Header.Get(key.Canonical())})
	})
}
