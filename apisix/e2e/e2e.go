// Package e2e is graylane's end-to-end check of the gateway side, run through a running APISIX 3.x
// (traditional mode, etcd) whose plugin runner is graylane's, such as the compose stack at the
// repository root:
//
//	docker compose up -d --build
//	make e2e-apisix
//
// Run applies two routes for the service (one trusting no client, one trusting every client), runs
// the lane upstream sync, sends requests through the gateway and asserts the lane of each: matched
// requests, sticky users under the canary's weight, a spoofed lane header, a trusted one, a weight
// change and a rollback. It restores the canary's weight and removes its routes at the end.
//
// The test (build tag e2e, so that make test leaves it out) reads the environment (defaults: the
// compose stack on this host):
//
//	GRAYLANE_E2E_GATEWAY  http://127.0.0.1:9080
//	APISIX_ADMIN_ADDR     http://127.0.0.1:9180
//	APISIX_ADMIN_KEY      graylane-demo-admin-key
//	CONSUL_HTTP_ADDR      http://127.0.0.1:8500
//	GRAYLANE_E2E_SERVICE  bservice (needs a stable lane and a canary lane with a match on the
//	                      header userid=123, as the compose stack registers; a green lane is used
//	                      when present)
//
// The repository's own tests run Run through stand-ins for APISIX (internal/apisixtest), with the
// real runner, Consul and sync, to keep this check itself correct.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

// Config says where the gateway, its Admin API and Consul are.
type Config struct {
	Gateway  string // http://host:9080
	Admin    string // http://host:9180
	AdminKey string
	Consul   string // the agent the service's instances belong to
	Service  string
	// RunnerCalls, when set, counts the requests the gateway has sent to the runner (a stand-in
	// gateway can; a real APISIX does not say), to check that a request the route's hop filter
	// keeps from the runner does not reach it.
	RunnerCalls func() int64
}

// FromEnv returns the Config from the environment, with the compose stack's defaults.
func FromEnv() Config {
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	return Config{
		Gateway:  env("GRAYLANE_E2E_GATEWAY", "http://127.0.0.1:9080"),
		Admin:    env("APISIX_ADMIN_ADDR", "http://127.0.0.1:9180"),
		AdminKey: env("APISIX_ADMIN_KEY", "graylane-demo-admin-key"),
		Consul:   env("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"),
		Service:  env("GRAYLANE_E2E_SERVICE", "bservice"),
	}
}

// Reply is what the example backend answers (examples/backend); backends of other tests of Run
// answer the same JSON.
type Reply struct {
	Instance string `json:"instance"`
	Lane     string `json:"lane"` // the lane header the backend received
	Echo     string `json:"-"`    // the lane the gateway echoed to the client
}

func get(t *testing.T, gateway, path string, headers map[string]string) Reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, gateway+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s %v: status %d", path, headers, resp.StatusCode)
	}
	var r Reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	r.Echo = resp.Header.Get("X-Gray-Lane")
	return r
}

// Run runs the check; see the package documentation.
func Run(t *testing.T, cfg Config) {
	gateway := strings.TrimRight(cfg.Gateway, "/")
	consul, service := cfg.Consul, cfg.Service
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	consulHost := consul
	if u, err := url.Parse(consul); err == nil && u.Host != "" {
		consulHost = u.Host
	}
	w, err := watch.New(watch.NewConfig(consul))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// The instances belong to the stack's one Consul agent, which this host reaches at consulHost.
	reg, err := registrar.New(registrar.NewConfig(consul), registrar.WithOperator("graylane-e2e"),
		registrar.WithAgentAddress(func(*api.Node) string { return consulHost }))
	if err != nil {
		t.Fatal(err)
	}
	view := w.Service(service)
	select {
	case <-view.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("no answer from Consul at %s for %s within 30s: is the stack up (docker compose up -d --build)? %+v",
			consul, service, view.State())
	}
	laneOf := func() map[string]string { // instance -> lane
		out := map[string]string{}
		for _, l := range view.Snapshot().Lanes() {
			for _, id := range l.Instances {
				out[id] = l.Name
			}
		}
		return out
	}
	var canaryWeight gray.Weight
	hasGreen := false
	for _, l := range view.Snapshot().Lanes() {
		switch l.Name {
		case "canary":
			canaryWeight = l.Weight
		case "green":
			hasGreen = true
		}
	}
	if !slices.Contains(slices.Collect(maps.Values(laneOf())), "canary") {
		t.Fatalf("%s has no canary lane in Consul: %v", service, laneOf())
	}

	admin, err := apisix.NewAdmin(cfg.Admin, cfg.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	logf := func(format string, args ...any) { t.Logf(format, args...) }
	untrusted := apisix.RouteSpec{ID: "graylane-e2e-" + service, URI: "/e2e/*",
		Conf: extplugin.Conf{Service: service, Options: gray.Options{StickyHeader: "x-user-id"}, EchoHeader: "x-gray-lane"}}
	trusted := apisix.RouteSpec{ID: "graylane-e2e-trusted-" + service, URI: "/e2e-trusted/*",
		Conf: extplugin.Conf{Service: service, Options: gray.Options{StickyHeader: "x-user-id"}, EchoHeader: "x-gray-lane",
			TrustedCIDRs: []string{"0.0.0.0/0", "::/0"}}}
	for _, spec := range []apisix.RouteSpec{untrusted, trusted} {
		if _, err := apisix.ApplyRoute(ctx, admin, w, spec, apisix.WithSyncLogger(logf)); err != nil {
			t.Fatalf("apply route %s: %v", spec.RouteID(), err)
		}
		defer admin.DeleteRoute(context.Background(), spec.RouteID())
	}
	syncCtx, stopSync := context.WithCancel(ctx)
	syncDone := make(chan error, 1)
	go func() {
		s := apisix.NewSync(&apisix.AdminTarget{Admin: admin, Logf: logf}, w, []string{service},
			apisix.WithResync(2*time.Second), apisix.WithSyncLogger(logf))
		syncDone <- s.Run(syncCtx)
	}()
	defer func() { stopSync(); <-syncDone }()
	defer func() {
		if _, err := reg.Do(context.Background(), service, registrar.SetWeight{Lane: "canary", Weight: canaryWeight}); err != nil {
			t.Errorf("restoring the canary's weight %s: %v", canaryWeight, err)
		}
	}()

	// check asserts which lane served a request and which lane header reached the backend.
	check := func(t *testing.T, path string, headers map[string]string, wantLane string, propagated bool) {
		t.Helper()
		r := get(t, gateway, path, headers)
		lanes := laneOf()
		if got := lanes[r.Instance]; got != wantLane {
			t.Errorf("%s %v: served by %s (lane %s), want lane %s", path, headers, r.Instance, got, wantLane)
		}
		wantHeader := ""
		if propagated {
			wantHeader = wantLane
		}
		if r.Lane != wantHeader {
			t.Errorf("%s %v: backend got lane header %q, want %q", path, headers, r.Lane, wantHeader)
		}
	}
	// eventually retries check until it passes (a change travels Consul -> plugin and -> sync ->
	// etcd -> gateway) and returns how long that took.
	eventually := func(t *testing.T, what string, f func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !f() {
			if time.Since(start) > time.Minute {
				t.Fatalf("%s: not seen after a minute", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
		return time.Since(start)
	}
	servedBy := func(path string, headers map[string]string) string {
		r := get(t, gateway, path, headers)
		return laneOf()[r.Instance]
	}

	t.Run("matched request reaches the canary", func(t *testing.T) {
		eventually(t, "route in place", func() bool { return servedBy("/e2e/api/user", map[string]string{"userid": "123"}) == "canary" })
		check(t, "/e2e/api/user", map[string]string{"userid": "123"}, "canary", true)
	})

	t.Run("sticky users follow the canary's weight", func(t *testing.T) {
		for i := range 200 {
			user := fmt.Sprintf("e2e-user-%d", i)
			want, propagated := "stable", false
			if gray.Bucket(service, user) < int(canaryWeight) {
				want, propagated = "canary", true
			}
			check(t, "/e2e/api/order", map[string]string{"x-user-id": user}, want, propagated)
		}
	})

	t.Run("spoofed lane header from an untrusted client is ignored", func(t *testing.T) {
		user := stableUser(service, 0)
		check(t, "/e2e/api/order", map[string]string{"x-user-id": user, gray.DefaultTagKey: "canary"}, "stable", false)
		if hasGreen {
			check(t, "/e2e/api/order", map[string]string{"x-user-id": user, gray.DefaultTagKey: "green"}, "stable", false)
		}
	})

	t.Run("lane header from a trusted client is honoured", func(t *testing.T) {
		lane := "canary"
		if hasGreen {
			lane = "green"
		}
		check(t, "/e2e-trusted/api/order", map[string]string{"x-user-id": stableUser(service, 0), gray.DefaultTagKey: lane}, lane, true)
	})

	mover := ""
	for i := 0; mover == ""; i++ {
		u := fmt.Sprintf("e2e-mover-%d", i)
		if b := gray.Bucket(service, u); b >= int(canaryWeight) && b < 5000 {
			mover = u
		}
	}

	t.Run("weight change", func(t *testing.T) {
		if _, err := reg.Do(ctx, service, registrar.SetWeight{Lane: "canary", Weight: 5000}); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, "weight 50", func() bool { return servedBy("/e2e/api/order", map[string]string{"x-user-id": mover}) == "canary" })
		t.Logf("weight 50 %% reached the gateway after %v", took)
		check(t, "/e2e/api/order", map[string]string{"x-user-id": mover}, "canary", true)
	})

	t.Run("rollback", func(t *testing.T) {
		if _, err := reg.Do(ctx, service, registrar.Rollback{Lane: "canary"}); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, "rollback", func() bool { return servedBy("/e2e/api/order", map[string]string{"x-user-id": mover}) == "stable" })
		t.Logf("rollback reached the gateway after %v", took)
		for i := range 50 {
			check(t, "/e2e/api/order", map[string]string{"x-user-id": fmt.Sprintf("e2e-user-%d", i)}, "stable", false)
		}
		check(t, "/e2e/api/user", map[string]string{"userid": "123"}, "canary", true)
	})

	t.Run("a service without a gray lane takes no hop", func(t *testing.T) {
		key := view.Snapshot().TagKey().Lower()
		pick := func(lane string) watch.Endpoint {
			d := view.Snapshot().Decide(&gray.StaticRequest{Headers: map[string]string{key: lane}})
			if len(d.Instances) == 0 {
				t.Fatalf("%s has no %s instance", service, lane)
			}
			return d.Instances[0]
		}
		plainRoute(t, ctx, cfg, w, reg, admin, pick("stable"), pick("canary"), logf)
	})
}

// plainRoute checks a service without a gray lane: its route takes no hop to the runner (the
// ext-plugin is disabled, there is no traffic-split) and strips a spoofed lane header; a canary
// registered with a match rule turns the hop on and gets the matched requests, and only them, and
// on a route without an echo header only the requests that carry the rule's header ask the
// runner (the hop filter, which follows the rule when it changes); when
// the canary's rule is changed to a user segment, whose members reach it, a user added to the
// segment following within a moment; when the canary goes, the route is plain again. The service's instances reuse the addresses of the
// main service's stable and canary instances, so that the gateway reaches them wherever it runs.
func plainRoute(t *testing.T, ctx context.Context, cfg Config, w *watch.Watcher, reg *registrar.Registrar, admin *apisix.Admin,
	stableEP, canaryEP watch.Endpoint, logf func(string, ...any)) {
	gateway := strings.TrimRight(cfg.Gateway, "/")
	client, err := api.NewClient(registrar.NewConfig(cfg.Consul))
	if err != nil {
		t.Fatal(err)
	}
	plain := cfg.Service + "-e2e-plain"
	register := func(id string, ep watch.Endpoint, meta map[string]string) {
		t.Helper()
		if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: plain, Address: ep.Address, Port: ep.Port, Meta: meta}); err != nil {
			t.Fatal(err)
		}
	}
	stableID, canaryID := plain+"-stable", plain+"-canary"
	register(stableID, stableEP, map[string]string{"version": "v1"})
	defer client.Agent().ServiceDeregister(stableID)
	defer client.Agent().ServiceDeregister(canaryID)
	select {
	case <-w.Service(plain).Ready():
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	for deadline := time.Now().Add(30 * time.Second); len(w.Service(plain).Snapshot().Lanes()) == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%s has no instance in the watcher after 30s", plain)
		}
		time.Sleep(50 * time.Millisecond)
	}
	spec := apisix.RouteSpec{ID: "graylane-e2e-" + plain, URI: "/e2e-plain/*",
		Conf: extplugin.Conf{Service: plain, Options: gray.Options{StickyHeader: "x-user-id"}, EchoHeader: "x-gray-lane"}}
	// The same service on a route without an echo header: it asks the runner only for requests
	// that carry what the canary's rules read (the hop filter).
	filtered := apisix.RouteSpec{ID: "graylane-e2e-filtered-" + plain, URI: "/e2e-filtered/*",
		Conf: extplugin.Conf{Service: plain, Options: gray.Options{StickyHeader: "x-user-id"}}}
	for _, s := range []apisix.RouteSpec{spec, filtered} {
		if _, err := apisix.ApplyRoute(ctx, admin, w, s, apisix.WithSyncLogger(logf)); err != nil {
			t.Fatalf("apply route %s: %v", s.RouteID(), err)
		}
	}
	defer func() {
		admin.DeleteRoute(context.Background(), spec.RouteID())
		admin.DeleteRoute(context.Background(), filtered.RouteID())
		for _, lane := range []string{"stable", "canary"} {
			admin.DeleteUpstream(context.Background(), apisix.LaneUpstreamID(plain, lane))
		}
	}()
	syncCtx, stopSync := context.WithCancel(ctx)
	syncDone := make(chan error, 1)
	go func() {
		s := apisix.NewSync(&apisix.AdminTarget{Admin: admin, Logf: logf}, w, []string{plain},
			apisix.WithResync(2*time.Second), apisix.WithSyncLogger(logf))
		syncDone <- s.Run(syncCtx)
	}()
	defer func() { stopSync(); <-syncDone }()

	// route returns the route with id as the gateway holds it.
	route := func(id string) map[string]any {
		routes, err := admin.Routes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r["id"] != id {
				continue
			}
			if plugins, _ := r["plugins"].(map[string]any); plugins["proxy-rewrite"] == nil {
				t.Fatalf("route %s lost its header strip: %v", id, plugins)
			}
			return r
		}
		t.Fatalf("route %s is gone", id)
		return nil
	}
	// hop reports whether the route's runner hop is on and the lanes its traffic-split names.
	hop := func() (bool, []string) { return apisix.RouteHop(route(spec.RouteID())) }
	// servedAt sends a request through the gateway and says which of the service's lanes answered.
	servedAt := func(path string, headers map[string]string) (string, Reply) {
		r := get(t, gateway, path, headers)
		switch r.Instance {
		case stableEP.ID:
			return "stable", r
		case canaryEP.ID:
			return "canary", r
		}
		return "?" + r.Instance, r
	}
	served := func(headers map[string]string) (string, Reply) { return servedAt("/e2e-plain/api/order", headers) }
	noHop := func(t *testing.T, state string) {
		t.Helper()
		if on, ups := hop(); on || len(ups) > 0 {
			t.Fatalf("%s: the route takes the runner's hop (%v) or splits traffic (%v)", state, on, ups)
		}
		for _, lane := range []string{"canary", "green", "stable"} {
			if got, r := served(map[string]string{gray.DefaultTagKey: lane, "x-user-id": "e2e-plain-user"}); got != "stable" || r.Lane != "" || r.Echo != "" {
				t.Errorf("%s: spoofed lane %s: served by %s with lane header %q, echo %q", state, lane, got, r.Lane, r.Echo)
			}
		}
	}
	waitFor := func(what string, f func() bool) time.Duration {
		start := time.Now()
		for !f() {
			if time.Since(start) > time.Minute {
				t.Fatalf("%s: not seen after a minute", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(start)
	}

	noHop(t, "no gray lane")
	register(canaryID, canaryEP, map[string]string{"version": "v2", "canary": "true",
		"match": `[{"header":[{"key":"userid","value_match":"123"}]}]`})
	took := waitFor("the canary's matched traffic", func() bool {
		got, _ := served(map[string]string{"userid": "123"})
		return got == "canary"
	})
	t.Logf("a canary registered with a match rule took matched traffic %v after its registration", took.Round(time.Millisecond))
	if on, ups := hop(); !on || !slices.Contains(ups, apisix.LaneUpstreamID(plain, "canary")) {
		t.Fatalf("with a canary: hop %v, traffic-split to %v", on, ups)
	}
	if got, r := served(map[string]string{"userid": "123"}); got != "canary" || r.Lane != "canary" {
		t.Errorf("matched request: served by %s with lane header %q", got, r.Lane)
	}
	// The filtered route asks the runner only for requests with a userid header.
	filterReads := func(variable string) bool {
		f, _ := json.Marshal(apisix.RouteHopFilter(route(filtered.RouteID())))
		return strings.Contains(string(f), `"`+variable+`"`)
	}
	waitFor("the filtered route's hop filter on userid", func() bool { return filterReads("http_userid") })
	if got, r := servedAt("/e2e-filtered/api/order", map[string]string{"userid": "123"}); got != "canary" || r.Lane != "canary" {
		t.Errorf("filtered route, matched request: served by %s with lane header %q", got, r.Lane)
	}
	calls := func() int64 { return 0 }
	if cfg.RunnerCalls != nil {
		calls = cfg.RunnerCalls
	}
	before := calls()
	for i := range 20 {
		headers := map[string]string{"x-user-id": fmt.Sprintf("e2e-filtered-%d", i), gray.DefaultTagKey: "canary"}
		if i%2 == 1 {
			headers["userid"] = "7" // a userid that does not match: asks the runner, which says stable
		}
		if got, r := servedAt("/e2e-filtered/api/order", headers); got != "stable" || r.Lane != "" {
			t.Errorf("filtered route, unmatched request %v: served by %s with lane header %q", headers, got, r.Lane)
		}
	}
	if asked := calls() - before; cfg.RunnerCalls != nil && asked != 10 {
		t.Errorf("filtered route: %d of 20 unmatched requests reached the runner, want the 10 with a userid header", asked)
	}
	for i := range 50 {
		if got, r := served(map[string]string{"x-user-id": fmt.Sprintf("e2e-plain-%d", i), gray.DefaultTagKey: "canary"}); got != "stable" || r.Lane != "" {
			t.Errorf("unmatched request with a spoofed header: served by %s with lane header %q", got, r.Lane)
		}
	}
	// A user segment decides at the gateway: its members reach the canary, the others do not, and a
	// user added to it follows.
	segment := plain + "-beta"
	if _, err := reg.ImportSegment(ctx, segment, []string{"e2e-member-1"}, registrar.ImportOptions{Create: true}); err != nil {
		t.Fatal(err)
	}
	defer reg.DeleteSegment(context.Background(), segment)
	register(canaryID, canaryEP, map[string]string{"version": "v2", "canary": "true",
		"match": `[{"header":[{"key":"x-user-id","in_segment":"` + segment + `"}]}]`})
	waitFor("a segment member in the canary", func() bool {
		got, _ := served(map[string]string{"x-user-id": "e2e-member-1"})
		return got == "canary"
	})
	waitFor("the filtered route's hop filter on x-user-id", func() bool { return filterReads("http_x_user_id") && !filterReads("http_userid") })
	if got, _ := servedAt("/e2e-filtered/api/order", map[string]string{"x-user-id": "e2e-member-1"}); got != "canary" {
		t.Errorf("filtered route, a segment member: served by %s", got)
	}
	if got, _ := served(map[string]string{"x-user-id": "e2e-outsider", "userid": "123"}); got != "stable" {
		t.Errorf("a user outside the segment: served by %s", got)
	}
	start := time.Now()
	if _, err := reg.AddToSegment(ctx, segment, []string{"e2e-outsider"}); err != nil {
		t.Fatal(err)
	}
	waitFor("a user added to the segment", func() bool {
		got, _ := served(map[string]string{"x-user-id": "e2e-outsider"})
		return got == "canary"
	})
	t.Logf("a user added to segment %s reached the canary %v after the change began", segment, time.Since(start).Round(time.Millisecond))

	if err := client.Agent().ServiceDeregister(canaryID); err != nil {
		t.Fatal(err)
	}
	took = waitFor("the plain route again", func() bool {
		on, ups := hop()
		fon, fups := apisix.RouteHop(route(filtered.RouteID()))
		return !on && len(ups) == 0 && !fon && len(fups) == 0
	})
	t.Logf("the last gray lane gone: the route was plain again after %v", took.Round(time.Millisecond))
	noHop(t, "the last gray lane removed")
	waitFor("the canary's upstream deleted", func() bool {
		ups, err := admin.Upstreams(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return !slices.ContainsFunc(ups, func(u apisix.Upstream) bool { return u.ID == apisix.LaneUpstreamID(plain, "canary") })
	})
}

// stableUser returns the n-th user whose bucket is above 50 %: stable under every weight set here.
func stableUser(service string, n int) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("e2e-stable-%d", i)
		if gray.Bucket(service, u) >= 5000 {
			if n == 0 {
				return u
			}
			n--
		}
	}
}
