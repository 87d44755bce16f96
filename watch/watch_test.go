package watch_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

func newWatcher(t *testing.T, a *consultest.Agent, opts ...watch.Option) *watch.Watcher {
	t.Helper()
	w, err := watch.New(watch.NewConfig(a.HTTPAddr), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// watchedBService applies the registrar's testdata/bservice.yaml to a dev agent and watches it.
func watchedBService(t *testing.T) (*consultest.Agent, *registrar.Registrar, *watch.Watcher, *watch.ServiceView) {
	t.Helper()
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, bserviceYAML)
	w := newWatcher(t, a)
	t.Cleanup(func() { w.Close() })
	v := w.Service("bservice")
	<-v.Ready()
	return a, r, w, v
}

func canaryWeight(v *watch.ServiceView) gray.Weight {
	for _, l := range v.Snapshot().Lanes() {
		if l.Name == "canary" {
			return l.Weight
		}
	}
	return 0
}

// TestWatchLatency measures the time from a committed weight change to the watcher's new snapshot,
// over 100 changes, and checks that every change is seen.
func TestWatchLatency(t *testing.T) {
	_, r, w, v := watchedBService(t)

	const changes = 100
	latencies := make([]time.Duration, 0, changes)
	for i := 1; i <= changes; i++ {
		weight := gray.Weight(i * 10)
		changed := v.Changed()
		plan, err := r.Plan(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: weight})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := r.Commit(context.Background(), plan); err != nil {
			t.Fatal(err)
		}
		for canaryWeight(v) != weight {
			select {
			case <-changed:
				changed = v.Changed()
			case <-time.After(10 * time.Second):
				t.Fatalf("change %d (weight %s) not seen; snapshot has %s", i, weight, canaryWeight(v))
			}
		}
		latencies = append(latencies, time.Since(start))
	}
	slices.Sort(latencies)
	t.Logf("commit-to-snapshot latency over %d changes: median %v, p99 %v, max %v",
		changes, latencies[changes/2], latencies[changes*99/100-1], latencies[changes-1])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t)
}

// TestWatchedInstances: the view's Instances is Consul's answer with each instance's own tagged
// addresses (not Consul's lan and wan ones), replaced, never modified, on each change.
func TestWatchedInstances(t *testing.T) {
	a, r, w, v := watchedBService(t)
	before := v.Instances()
	if before == nil || len(before.Endpoints) != 2 || before.Index == 0 {
		t.Fatalf("instances: %+v, want the two passing ones of testdata/bservice.yaml with an index", before)
	}
	canary := before.Endpoints[1]
	if canary.ID != "bservice-canary-1" || canary.Meta["weight"] != "10" || canary.TaggedAddresses != nil {
		t.Fatalf("canary %+v: want its meta and no tagged address of its own", canary)
	}

	// An instance registered the way Kratos' consul registry does it: endpoint URLs as tagged
	// addresses.
	client, err := api.NewClient(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	changed := v.Changed()
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "bservice-kratos", Name: "bservice", Address: "127.0.0.1", Port: 9004,
		TaggedAddresses: map[string]api.ServiceAddress{
			"grpc":     {Address: "grpc://127.0.0.1:9004", Port: 9004},
			"http":     {Address: "http://127.0.0.1:8004", Port: 8004},
			"lan_ipv4": {Address: "127.0.0.1", Port: 9004},
		},
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the new instance not seen")
	}
	after := v.Instances()
	if after == before || len(before.Endpoints) != 2 || len(after.Endpoints) != 3 {
		t.Fatalf("before %d instances, after %d (same list: %v)", len(before.Endpoints), len(after.Endpoints), after == before)
	}
	want := map[string]string{"grpc": "grpc://127.0.0.1:9004", "http": "http://127.0.0.1:8004"}
	if got := after.Endpoints[2].TaggedAddresses; !maps.Equal(got, want) {
		t.Fatalf("tagged addresses %v, want %v", got, want)
	}

	if _, err := r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new weight", func() bool { return v.Instances().Endpoints[1].Meta["weight"] == "25" })
	if before.Endpoints[1].Meta["weight"] != "10" {
		t.Fatal("an earlier answer was modified")
	}

	// Closed, the watcher follows nothing: its views say so and keep their last answer.
	if v.Stale() {
		t.Fatal("stale before Close")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if st := v.State(); !v.Stale() || !errors.Is(st.LastError, watch.ErrClosed) || v.Instances() == nil {
		t.Fatalf("after Close: stale %v, state %+v", v.Stale(), st)
	}
}

// TestWatcherSurvivesConsulRestart: Consul stops under a running watcher; the view turns stale and
// keeps its last snapshot; Consul comes back; the view recovers and sees new changes; Close leaves no
// goroutine behind.
func TestWatcherSurvivesConsulRestart(t *testing.T) {
	a := consultest.StartPersistent(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, bserviceYAML)
	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
	w := newWatcher(t, a, watch.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	v := w.Service("bservice")
	<-v.Ready()
	if canaryWeight(v) != 2500 {
		t.Fatalf("weight %s", canaryWeight(v))
	}

	a.Stop()
	waitFor(t, 10*time.Second, "the view to turn stale", func() bool { return v.State().Stale })
	if st := v.State(); st.LastError == nil || canaryWeight(v) != 2500 {
		t.Fatalf("while Consul is down: state %+v, weight %s", st, canaryWeight(v))
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the view to recover", func() bool { return !v.State().Stale })
	r2 := newRegistrar(t, a, "alice")
	var err error
	for i := 0; i < 100; i++ { // the restarted server may need a moment before it takes writes
		if _, err = r2.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 5000}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the change after the restart", func() bool { return canaryWeight(v) == 5000 })
	w.Close()
	checkNoLeak(t)
}

// TestWatcherFollowsNewLeader: in a three-server cluster the leader is killed while weights change;
// the watcher (on a surviving server) follows the new leader and ends with the last committed weight.
func TestWatcherFollowsNewLeader(t *testing.T) {
	agents := consultest.StartCluster(t, 3)
	leader := func(a *consultest.Agent) string {
		c, _ := api.NewClient(watch.NewConfig(a.HTTPAddr))
		l, _ := c.Status().Leader()
		return l
	}
	old := leader(agents[0])
	var killed *consultest.Agent
	var alive []*consultest.Agent
	for _, a := range agents {
		c, _ := api.NewClient(watch.NewConfig(a.HTTPAddr))
		self, err := c.Agent().Self()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(old, fmt.Sprintf(":%v", self["DebugConfig"]["ServerPort"])) {
			killed = a
		} else {
			alive = append(alive, a)
		}
	}
	if killed == nil || len(alive) != 2 {
		t.Fatalf("leader %s not found among the agents", old)
	}
	owner, watcherAgent := alive[0], alive[1]
	r := newRegistrar(t, owner, "alice")
	applyFile(t, r, bserviceYAML)
	w := newWatcher(t, watcherAgent, watch.WithBackoff(20*time.Millisecond, 200*time.Millisecond))
	defer w.Close()
	v := w.Service("bservice")
	<-v.Ready()

	var last gray.Weight
	var slowest time.Duration
	for i := 1; i <= 20; i++ {
		if i == 5 {
			killed.Kill()
		}
		weight := gray.Weight(i * 100)
		start := time.Now()
		deadline := start.Add(30 * time.Second)
		for {
			_, err := r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: weight})
			if err == nil {
				last = weight
				slowest = max(slowest, time.Since(start))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("weight %s never committed: %v", weight, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(t, 20*time.Second, "the last weight", func() bool { return canaryWeight(v) == last })
	t.Logf("leader killed during 20 weight changes: the slowest change took %v to commit (retrying through the election)", slowest.Round(time.Millisecond))
	if l := leader(watcherAgent); l == "" || l == old {
		t.Fatalf("leader after the kill: %q (was %q)", l, old)
	}
	hist, err := r.History(context.Background(), "bservice")
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 21 { // apply + 20 weights: no update lost, none doubled
		t.Fatalf("history has %d entries, want 21", len(hist))
	}
}

// TestMalformedMetaInConsul: meta written straight into Consul that does not decode is reported with
// the instance and key, the instance is left out, and nothing crashes.
func TestMalformedMetaInConsul(t *testing.T) {
	a, r, _, v := watchedBService(t)
	changed := v.Changed()
	registerRaw(t, a, &api.AgentServiceRegistration{ID: "bservice-bad-1", Name: "bservice",
		Meta: map[string]string{"canary": "true", "weight": "fifty", "match": `[{"header":[{"key":"userid"`}})
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot after the bad registration")
	}
	snap := v.Snapshot()
	var problems []string
	for _, p := range snap.Problems() {
		problems = append(problems, p.Error())
	}
	joined := strings.Join(problems, "\n")
	for _, want := range []string{`instance "bservice-bad-1": meta key "weight": "fifty"`, `instance "bservice-bad-1": meta key "match": not valid JSON`} {
		if !strings.Contains(joined, want) {
			t.Fatalf("problems lack %q:\n%s", want, joined)
		}
	}
	for i := 0; i < 1000; i++ {
		d := snap.Decide(&gray.StaticRequest{Headers: map[string]string{"userid": "123"}, URLPath: "/api/user"})
		for _, ep := range d.Instances {
			if ep.ID == "bservice-bad-1" {
				t.Fatal("the instance with bad meta was chosen")
			}
		}
	}
	st, err := r.Status(context.Background(), "bservice", gray.Options{})
	if err != nil || len(st.Problems) != 1 || len(snap.Problems()) != 1 { // one instance, one (joined) problem
		t.Fatalf("status: %v, problems %v", err, st.Problems)
	}
	// Draining works on an instance whose gray meta is broken.
	if _, err := r.Drain(context.Background(), "bservice-bad-1", registrar.DrainOptions{Grace: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
}

// TestManyServicesShareConnections: one watcher follows 30 services; every change on every service is
// seen, and its blocking queries reuse their connections when changes come in bursts, instead of
// dialling anew.
func TestManyServicesShareConnections(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	const services, rounds = 30, 5
	var spec strings.Builder
	for i := 0; i < services; i++ {
		fmt.Fprintf(&spec, "- {name: svc-%d, id: svc-%d-1}\n- {name: svc-%d, id: svc-%d-c, meta: {canary: true}}\n", i, i, i, i)
	}
	specs, err := registrar.ParseSpecs("many.yaml", []byte(spec.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := watch.NewConfig(a.HTTPAddr)
	var dials atomic.Int64
	dial := cfg.Transport.DialContext
	cfg.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	w, err := watch.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	views := make([]*watch.ServiceView, services)
	for i := range views {
		views[i] = w.Service(fmt.Sprintf("svc-%d", i))
		<-views[i].Ready()
	}
	for round := 1; round <= rounds; round++ {
		// Change every service at once, so that all blocking queries return together.
		weight := gray.Weight(round * 100)
		var wg sync.WaitGroup
		errs := make(chan error, services)
		for i := 0; i < services; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := r.Do(context.Background(), fmt.Sprintf("svc-%d", i), registrar.SetWeight{Lane: "canary", Weight: weight})
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range views {
			waitFor(t, 10*time.Second, "the change", func() bool { return canaryWeight(v) == weight })
		}
	}
	// One connection per blocking query (instances of each service, and the options of all); a pool
	// that keeps too few idle connections dials again after every burst.
	if n := dials.Load(); n > 2*services+5 {
		t.Fatalf("the watcher dialled %d connections for %d services over %d bursts", n, services, rounds)
	}
	t.Logf("%d services, %d bursts of changes: the watcher dialled %d connections", services, rounds, dials.Load())
}

// TestWatcherHiddenInstances: Consul does not refuse a token that may read a service but not its
// nodes; it answers without the instances. The watcher must not take that for a service without
// instances (a gateway would empty its upstreams): it stays unready and stale, with an error that
// names the missing permission, and a watcher whose token loses node read later keeps its last
// complete answer.
func TestWatcherHiddenInstances(t *testing.T) {
	a := consultest.StartACL(t)
	admin := aclAdmin(t, a)
	applyFile(t, admin, bserviceYAML)
	passing, _, err := admin.Client().Health().Service("bservice", "", true, nil)
	if err != nil || len(passing) == 0 {
		t.Fatalf("the management token sees %d instances (%v)", len(passing), err)
	}
	viewFor := func(token string) *watch.ServiceView {
		cfg := watch.NewConfig(a.HTTPAddr)
		cfg.Token = token
		w, err := watch.New(cfg, watch.WithWaitTime(time.Second), watch.WithBackoff(20*time.Millisecond, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		return w.Service("bservice")
	}
	hidden := func(v *watch.ServiceView) bool {
		var e *watch.HiddenInstancesError
		st := v.State()
		return st.Stale && errors.As(st.LastError, &e) && errors.Is(st.LastError, watch.ErrPermission)
	}
	const readServices = `service_prefix "" { policy = "read" }
		key_prefix "graylane/" { policy = "read" }`

	// Without node read from the start: never ready, never an empty service.
	v := viewFor(aclToken(t, admin, readServices).SecretID)
	eventually.Wait(t, 10*time.Second, "the watcher without node read to report the hidden instances", func() bool { return hidden(v) })
	if msg := v.State().LastError.Error(); !strings.Contains(msg, "bservice") || !strings.Contains(msg, "node read") {
		t.Errorf("the error does not name the service and the missing permission: %s", msg)
	}
	select {
	case <-v.Ready():
		t.Fatal("a watcher that saw no instance it may read became ready")
	default:
	}
	if v.Instances() != nil || len(v.Snapshot().Lanes()) != 0 {
		t.Fatalf("a filtered answer was published: %+v", v.Instances())
	}

	// With node read it sees every instance; when the token loses node read it keeps them.
	full := aclToken(t, admin, readServices+"\nnode_prefix \"\" { policy = \"read\" }")
	v = viewFor(full.SecretID)
	select {
	case <-v.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("the watcher with node read is not ready: %+v", v.State())
	}
	if n := len(v.Instances().Endpoints); n != len(passing) {
		t.Fatalf("the watcher with node read sees %d instances, want %d", n, len(passing))
	}
	policy := &api.ACLPolicy{ID: full.Policies[0].ID, Name: full.Policies[0].Name, Rules: readServices}
	if _, _, err := admin.Client().ACL().PolicyUpdate(policy, nil); err != nil {
		t.Fatal(err)
	}
	eventually.Wait(t, 10*time.Second, "the watcher that lost node read to report the hidden instances", func() bool { return hidden(v) })
	if n := len(v.Instances().Endpoints); n != len(passing) {
		t.Fatalf("after losing node read the watcher keeps %d instances, want its last complete answer (%d)", n, len(passing))
	}
}

// replayProxy stands between a watcher and Consul. Armed with an answer it recorded earlier, it
// serves that answer, with its older index, to the next queries of the service's instances instead
// of passing them on: what a Consul server that has just restarted and is still replaying its raft
// log answers.
type replayProxy struct {
	srv      *httptest.Server
	mu       sync.Mutex
	recorded *httptest.ResponseRecorder
	replays  int
	served   int
}

func newReplayProxy(t *testing.T, agentAddr string) *replayProxy {
	p := &replayProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: agentAddr})
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
			p.mu.Lock()
			if p.replays > 0 && p.recorded != nil {
				p.replays--
				p.served++
				rec := p.recorded
				p.mu.Unlock()
				maps.Copy(w.Header(), rec.Header())
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
				return
			}
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// record keeps Consul's current answer on the service's instances.
func (p *replayProxy) record(t *testing.T, service string) {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/v1/health/service/"+service+"?passing=1", nil)
	p.srv.Config.Handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("recording %s: %d %s", service, rec.Code, rec.Body)
	}
	p.mu.Lock()
	p.recorded = rec
	p.mu.Unlock()
}

func (p *replayProxy) replay(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replays = n
}

// TestWatcherSetsAsideAnOlderAnswer: a server that has just restarted answers from the catalog of a
// moment ago, with an index below the one the watcher holds. The watcher must not take that answer
// for a change (it would empty a lane that never went away): it keeps its snapshot and asks again
// until the server has caught up, then follows the server as before.
func TestWatcherSetsAsideAnOlderAnswer(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, bserviceYAML)
	proxy := newReplayProxy(t, a.HTTPAddr)
	proxy.record(t, "bservice") // bservice-1, -2 and the canary

	// bservice-3 joins: the watcher holds an answer newer than the recorded one.
	client, err := api.NewClient(watch.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	reg := func(id string, port int) {
		if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "bservice", Address: "127.0.0.1", Port: port}); err != nil {
			t.Fatal(err)
		}
	}
	reg("bservice-3", 9004)
	w, err := watch.New(watch.NewConfig(strings.TrimPrefix(proxy.srv.URL, "http://")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	v := w.Service("bservice")
	<-v.Ready()
	ids := func() []string {
		var out []string
		for _, ep := range v.Instances().Endpoints {
			out = append(out, ep.ID)
		}
		return out
	}
	if got := ids(); !slices.Contains(got, "bservice-3") {
		t.Fatalf("instances %v, want bservice-3 among them", got)
	}

	// From now on every published snapshot is checked; the next answers are the recorded one.
	var published []string
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ch := v.Changed()
			select {
			case <-ch:
			case <-time.After(3 * time.Second):
				return
			}
			mu.Lock()
			published = append(published, strings.Join(ids(), ","))
			mu.Unlock()
		}
	}()
	proxy.replay(5)
	reg("bservice-4", 9005) // wakes the watcher's blocking query; its answer is replaced
	waitFor(t, 10*time.Second, "bservice-4", func() bool { return slices.Contains(ids(), "bservice-4") })
	<-done
	proxy.mu.Lock()
	served := proxy.served
	proxy.mu.Unlock()
	if served == 0 {
		t.Fatal("the proxy served no older answer: the test tested nothing")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, snap := range published {
		if !strings.Contains(snap, "bservice-3") {
			t.Fatalf("after %d older answers the watcher published %q, without bservice-3 (all: %q)", served, snap, published)
		}
	}
}

// TestConnLimitIsReportedLoudly: an agent at a low limits.http_max_conns_per_client refuses some of
// a watcher's blocking queries with 429. The views that were refused say why, naming the setting to
// raise; the watcher counts the refusals and logs them once, not at every retry.
func TestConnLimitIsReportedLoudly(t *testing.T) {
	a := consultest.StartWith(t, "-hcl", "limits { http_max_conns_per_client = 10 }")
	r := newRegistrar(t, a, "alice")
	const services = 12
	var spec strings.Builder
	for i := range services {
		fmt.Fprintf(&spec, "- {name: lim-%d, id: lim-%d-1}\n", i, i)
	}
	specs, err := registrar.ParseSpecs("lim.yaml", []byte(spec.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var logged []string
	w, err := watch.New(watch.NewConfig(a.HTTPAddr), watch.WithBackoff(50*time.Millisecond, 200*time.Millisecond),
		watch.WithLogger(func(format string, args ...any) {
			mu.Lock()
			logged = append(logged, fmt.Sprintf(format, args...))
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	views := make([]*watch.ServiceView, services)
	for i := range views {
		views[i] = w.Service(fmt.Sprintf("lim-%d", i))
	}
	var refused *watch.ConnLimitError
	eventually.Wait(t, 20*time.Second, "a view refused by the agent's connection limit", func() bool {
		for _, v := range views {
			if errors.As(v.State().LastError, &refused) {
				return true
			}
		}
		return false
	})
	if !strings.Contains(refused.Error(), "limits.http_max_conns_per_client") || !strings.Contains(refused.Error(), a.HTTPAddr) {
		t.Fatalf("the refusal does not say what to raise where: %v", refused)
	}
	time.Sleep(2 * time.Second) // retries go on meanwhile
	if n := w.Refused(); n < 2 {
		t.Fatalf("refusals counted: %d", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 1 || !strings.Contains(logged[0], "429 Too Many Requests") {
		t.Fatalf("the refusals were logged %d times in 2 s (want once a minute): %q", len(logged), logged)
	}
	t.Logf("%d refusals; logged: %s", w.Refused(), logged[0])
}
