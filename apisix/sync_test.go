package apisix

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/internal/apisixtest"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/watch"
)

type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logRecorder) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

type consulEnv struct {
	client  *api.Client
	watcher *watch.Watcher
}

func startConsul(t *testing.T) *consulEnv {
	t.Helper()
	agent := consultest.Start(t)
	client, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	w, err := watch.New(&api.Config{Address: agent.HTTPAddr}, watch.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return &consulEnv{client: client, watcher: w}
}

func (e *consulEnv) register(t *testing.T, id string, port int, meta map[string]string) {
	t.Helper()
	if err := e.client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "bservice", Address: "127.0.0.1", Port: port, Meta: meta}); err != nil {
		t.Fatal(err)
	}
}

func (e *consulEnv) deregister(t *testing.T, id string) {
	t.Helper()
	if err := e.client.Agent().ServiceDeregister(id); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it returns "" (nothing wrong) or the timeout passes.
func eventually(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nodesOf returns an upstream's node addresses, sorted; nil when the upstream does not exist.
func nodesOf(ups map[string]map[string]any, id string) []string {
	u, ok := ups[id]
	if !ok {
		return nil
	}
	var out []string
	for addr := range u["nodes"].(map[string]any) {
		out = append(out, addr)
	}
	slices.Sort(out)
	if out == nil {
		out = []string{}
	}
	return out
}

func wantUpstreams(s *apisixtest.AdminAPI, want map[string][]string) func() string {
	return func() string {
		ups, _, _ := s.State()
		for id, nodes := range want {
			got := nodesOf(ups, id)
			if nodes == nil && got != nil {
				return fmt.Sprintf("upstream %s still exists with %v", id, got)
			}
			if nodes != nil && !slices.Equal(got, nodes) {
				return fmt.Sprintf("upstream %s nodes %v, want %v (all: %v; rejected: %v)", id, got, nodes, keys(ups), s.Rejected())
			}
		}
		return ""
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// routeLanes returns the lanes a route's traffic-split rules send to their upstreams, as
// "lane->upstream".
func routeLanes(route map[string]any) []string {
	var out []string
	plugins, _ := route["plugins"].(map[string]any)
	ts, _ := plugins["traffic-split"].(map[string]any)
	rules, _ := ts["rules"].([]any)
	for _, r := range rules {
		rule := r.(map[string]any)
		vars := rule["match"].([]any)[0].(map[string]any)["vars"].([]any)[0].([]any)
		up := rule["weighted_upstreams"].([]any)[0].(map[string]any)["upstream_id"]
		out = append(out, fmt.Sprintf("%v%v%v->%v", vars[0], vars[1], vars[2], up))
	}
	return out
}

func TestSyncKeepsLaneUpstreams(t *testing.T) {
	env := startConsul(t)
	env.register(t, "s1", 9001, nil)
	env.register(t, "c1", 9002, map[string]string{"canary": "true", "weight": "10"})
	s := apisixtest.NewAdminAPI(t)
	admin := newAdmin(t, s)
	logs := &logRecorder{}

	// The route job: upstreams first, then the route.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := RouteSpec{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice", TrustedCIDRs: []string{"10.0.0.0/8"}}}
	if _, err := ApplyRoute(ctx, admin, env.watcher, spec); err != nil {
		t.Fatalf("apply route: %v (rejected: %v)", err, s.Rejected())
	}
	_, routes, _ := s.State()
	if got, want := routeLanes(routes["graylane-bservice"]), []string{
		"http_x_md_global_gray_lane==canary->graylane-bservice-canary",
		"http_x_md_global_gray_lane==stable->graylane-bservice-stable",
	}; !slices.Equal(got, want) {
		t.Fatalf("route rules %v, want %v", got, want)
	}

	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sync := NewSync(&AdminTarget{Admin: admin, Logf: logs.logf}, env.watcher, []string{"bservice"},
		WithSyncBackoff(5*time.Millisecond, 50*time.Millisecond), WithResync(20*time.Millisecond), WithSyncLogger(logs.logf))
	go func() { done <- sync.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	eventually(t, "initial lanes", wantUpstreams(s, map[string][]string{
		"graylane-bservice":        {"127.0.0.1:9001"},
		"graylane-bservice-stable": {"127.0.0.1:9001"},
		"graylane-bservice-canary": {"127.0.0.1:9002"},
	}))

	t.Run("nothing written when nothing changed", func(t *testing.T) {
		_, _, before := s.State()
		time.Sleep(300 * time.Millisecond) // about 15 resyncs
		if _, _, after := s.State(); after != before {
			t.Errorf("%d writes while nothing changed", after-before)
		}
	})

	t.Run("a lane appears: upstream first, then its rule", func(t *testing.T) {
		env.register(t, "g1", 9003, map[string]string{"bluegreen": "green", "weight": "5"})
		eventually(t, "green lane", func() string {
			if msg := wantUpstreams(s, map[string][]string{"graylane-bservice-green": {"127.0.0.1:9003"}})(); msg != "" {
				return msg
			}
			_, routes, _ := s.State()
			if got := routeLanes(routes["graylane-bservice"]); !slices.Contains(got, "http_x_md_global_gray_lane==green->graylane-bservice-green") {
				return fmt.Sprintf("route rules %v", got)
			}
			return ""
		})
	})

	t.Run("a lane changes", func(t *testing.T) {
		env.register(t, "c2", 9012, map[string]string{"canary": "true", "weight": "10"})
		env.deregister(t, "c1")
		eventually(t, "canary nodes", wantUpstreams(s, map[string][]string{"graylane-bservice-canary": {"127.0.0.1:9012"}}))
	})

	t.Run("5xx from the Admin API is retried and nothing is lost", func(t *testing.T) {
		s.FailNextWrites(3)
		env.register(t, "s2", 9004, nil)
		env.register(t, "g2", 9005, map[string]string{"bluegreen": "green", "weight": "5"})
		eventually(t, "after the failures", wantUpstreams(s, map[string][]string{
			"graylane-bservice":        {"127.0.0.1:9001", "127.0.0.1:9004"},
			"graylane-bservice-stable": {"127.0.0.1:9001", "127.0.0.1:9004"},
			"graylane-bservice-green":  {"127.0.0.1:9003", "127.0.0.1:9005"},
		}))
		if failed := s.FailedWrites(); failed != 3 {
			t.Errorf("%d writes failed, want 3", failed)
		}
		if !logs.contains("retrying in") {
			t.Errorf("no retry logged: %v", logs.lines)
		}
	})

	t.Run("a lane disappears: rule first, then upstream", func(t *testing.T) {
		env.deregister(t, "c2")
		eventually(t, "canary gone", func() string {
			if msg := wantUpstreams(s, map[string][]string{"graylane-bservice-canary": nil})(); msg != "" {
				return msg
			}
			_, routes, _ := s.State()
			for _, r := range routeLanes(routes["graylane-bservice"]) {
				if strings.Contains(r, "canary") {
					return fmt.Sprintf("route still routes canary: %v", r)
				}
			}
			return ""
		})
	})

	t.Run("an upstream another route references is kept, and the sync says so", func(t *testing.T) {
		other := map[string]any{"id": "other", "uri": "/other", "upstream_id": "graylane-bservice-green"}
		if err := admin.PutRoute(ctx, other); err != nil {
			t.Fatal(err)
		}
		env.deregister(t, "g1")
		env.deregister(t, "g2")
		eventually(t, "green rule removed", func() string {
			_, routes, _ := s.State()
			for _, r := range routeLanes(routes["graylane-bservice"]) {
				if strings.Contains(r, "green") {
					return fmt.Sprintf("route still routes green: %v", r)
				}
			}
			if !logs.contains("keeping upstream graylane-bservice-green") || !logs.contains("route other still references it") {
				return "no log about the kept upstream"
			}
			return ""
		})
		ups, _, _ := s.State()
		if _, ok := ups["graylane-bservice-green"]; !ok {
			t.Errorf("upstream deleted while route other references it")
		}
	})

	if r := s.Rejected(); len(r) > 0 {
		t.Errorf("the stand-in refused requests: %v", r)
	}
	if d := s.Dangling(); len(d) > 0 {
		t.Errorf("routes named upstreams before they existed: %v", d)
	}
}

func TestAdminErrors(t *testing.T) {
	s := apisixtest.NewAdminAPI(t)
	bad, _ := NewAdmin(s.URL, "wrong")
	err := bad.PutUpstream(context.Background(), &Upstream{ID: "x", Type: "roundrobin", Nodes: map[string]int{"127.0.0.1:80": 1}})
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "failed to check token") {
		t.Errorf("wrong key: %v", err)
	}
	a := newAdmin(t, s)
	err = a.PutUpstream(context.Background(), &Upstream{ID: "x", Type: "roundrobin", Nodes: map[string]int{"127.0.0.1:99999": 1}})
	if err == nil || !strings.Contains(err.Error(), "invalid port 99999") {
		t.Errorf("bad port: %v", err)
	}
	if err := a.PutRoute(context.Background(), map[string]any{"id": "r", "uri": "/", "upstream_id": "missing"}); err == nil ||
		!strings.Contains(err.Error(), "failed to fetch upstream info") {
		t.Errorf("route naming a missing upstream: %v", err)
	}
}

func TestStandaloneFile(t *testing.T) {
	env := startConsul(t)
	env.register(t, "s1", 9001, nil)
	env.register(t, "c1", 9002, map[string]string{"canary": "true", "match": `[{"header":[{"key":"userid","value_match":"123"}]}]`})
	path := filepath.Join(t.TempDir(), "apisix.yaml")
	target := &FileTarget{Path: path, Routes: []RouteSpec{{URI: "/api/*", Conf: extplugin.Conf{Service: "bservice"}}}}
	sync := NewSync(target, env.watcher, []string{"bservice"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch, err := sync.Once(ctx)
	if err != nil || len(ch.Written) != 1 {
		t.Fatalf("first write: %+v %v", ch, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(data), "#END\n") {
		t.Errorf("no #END line:\n%s", data)
	}
	var doc struct {
		Upstreams []Upstream       `yaml:"upstreams"`
		Routes    []map[string]any `yaml:"routes"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, u := range doc.Upstreams {
		ids = append(ids, u.ID)
	}
	if want := []string{"graylane-bservice", "graylane-bservice-canary", "graylane-bservice-stable"}; !slices.Equal(ids, want) {
		t.Errorf("upstreams %v, want %v", ids, want)
	}
	if len(doc.Routes) != 1 || doc.Routes[0]["upstream_id"] != "graylane-bservice" {
		t.Errorf("routes %v", doc.Routes)
	}
	ch, err = sync.Once(ctx)
	if err != nil || !ch.Empty() {
		t.Errorf("second write with nothing changed: %+v %v", ch, err)
	}
}

func newAdmin(t *testing.T, s *apisixtest.AdminAPI) *Admin {
	t.Helper()
	a, err := NewAdmin(s.URL, s.Key)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// clone copies a JSON object through JSON, as APISIX would read it back.
func clone(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	json.Unmarshal(b, &out)
	return out
}

// TestSyncWritesNothingBeforeConsulAnswers: a sync restarted against a Consul that takes a second
// to answer finds the gateway as the last sync left it. Until Consul has answered for the service
// it writes nothing (no empty or partial upstream, no pruned lane), however often it resyncs; then
// it writes the lanes Consul holds.
func TestSyncWritesNothingBeforeConsulAnswers(t *testing.T) {
	agent := consultest.Start(t)
	client, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	env := &consulEnv{client: client}
	env.register(t, "s1", 9001, nil)
	env.register(t, "s2", 9004, nil)
	env.register(t, "c1", 9002, map[string]string{"canary": "true", "weight": "10"})

	s := apisixtest.NewAdminAPI(t)
	admin := newAdmin(t, s)
	ctx := context.Background()
	// What the last sync wrote, before s2 was registered.
	for _, u := range []Upstream{
		{ID: "graylane-bservice", Nodes: map[string]int{"127.0.0.1:9001": 1}},
		{ID: "graylane-bservice-stable", Nodes: map[string]int{"127.0.0.1:9001": 1}},
		{ID: "graylane-bservice-canary", Nodes: map[string]int{"127.0.0.1:9002": 1}},
	} {
		lane := strings.TrimPrefix(strings.TrimPrefix(u.ID, "graylane-bservice"), "-")
		u.Name, u.Type = u.ID, "roundrobin"
		u.Labels = map[string]string{LabelManagedBy: "graylane", LabelService: "bservice", LabelLane: cmp.Or(lane, BaseLabel)}
		if err := admin.PutUpstream(ctx, &u); err != nil {
			t.Fatal(err)
		}
	}
	_, _, before := s.State()

	slow := consultest.Slow(t, agent.HTTPAddr, time.Second)
	w, err := watch.New(&api.Config{Address: slow})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	sync := NewSync(&AdminTarget{Admin: admin}, w, []string{"bservice"},
		WithSyncBackoff(5*time.Millisecond, 50*time.Millisecond), WithResync(10*time.Millisecond))
	go func() { done <- sync.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	time.Sleep(800 * time.Millisecond) // about 80 resyncs, none with Consul's answer
	if _, _, after := s.State(); after != before {
		ups, _, _ := s.State()
		t.Fatalf("%d writes before Consul answered; upstreams now %v", after-before, ups)
	}
	eventually(t, "the lanes Consul holds", wantUpstreams(s, map[string][]string{
		"graylane-bservice":        {"127.0.0.1:9001", "127.0.0.1:9004"},
		"graylane-bservice-stable": {"127.0.0.1:9001", "127.0.0.1:9004"},
		"graylane-bservice-canary": {"127.0.0.1:9002"},
	}))
}

// TestWrongAdminKeyFailsAtOnce: an Admin API that refuses the key is not retried like a 5xx: Once
// and Run return the refusal at once, naming the flag and the variable that set the key.
func TestWrongAdminKeyFailsAtOnce(t *testing.T) {
	env := startConsul(t)
	env.register(t, "s1", 9001, nil)
	s := apisixtest.NewAdminAPI(t)
	admin, err := NewAdmin(s.URL, "not-the-key")
	if err != nil {
		t.Fatal(err)
	}
	sync := NewSync(&AdminTarget{Admin: admin}, env.watcher, []string{"bservice"}, WithSyncBackoff(time.Second, time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for name, f := range map[string]func() error{
		"Once": func() error { _, err := sync.Once(ctx); return err },
		"Run":  func() error { return sync.Run(ctx) },
	} {
		err := f()
		var ae *AdminError
		if !errors.As(err, &ae) || ae.Status != 401 || !strings.Contains(err.Error(), "APISIX_ADMIN_KEY") || ctx.Err() != nil {
			t.Fatalf("%s with a wrong key: %v; want the 401 at once, naming APISIX_ADMIN_KEY", name, err)
		}
	}
}
