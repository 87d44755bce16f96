package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kerrors "github.com/go-kratos/kratos/v2/errors"
	khttp "github.com/go-kratos/kratos/v2/transport/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/internal/syncbuf"
	"github.com/graylane/graylane/metrics"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
	"github.com/graylane/graylane/watch"
)

// app is a real Kratos HTTP server that counts its requests per lane with metrics.Server and can be
// told to fail a share of its calls or to slow down.
type app struct {
	addr     string
	failRate atomic.Int64 // per mille
	delay    atomic.Int64 // nanoseconds
}

func startApp(t *testing.T, service, lane string) *app {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &app{addr: lis.Addr().String()}
	reg := prometheus.NewRegistry()
	requests, err := metrics.NewServerRequests(reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := khttp.NewServer(khttp.Listener(lis), khttp.Middleware(metrics.Server(requests, service, func() string { return lane })))
	srv.Route("/").GET("/hello", func(ctx khttp.Context) error {
		h := ctx.Middleware(func(context.Context, any) (any, error) {
			if d := a.delay.Load(); d > 0 {
				time.Sleep(time.Duration(d))
			}
			if rand.Int64N(1000) < a.failRate.Load() {
				return nil, kerrors.InternalServer("BROKEN", "the canary failed")
			}
			return map[string]string{"lane": lane}, nil
		})
		out, err := h(ctx, nil)
		if err != nil {
			return err
		}
		return ctx.Result(http.StatusOK, out)
	})
	srv.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	go func() { _ = srv.Start(context.Background()) }()
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	return a
}

// stack is a service "shop" with a stable and a canary instance, real Kratos servers registered in a
// real Consul, scraped by a real Prometheus.
type stack struct {
	consul  *consultest.Agent
	r       *registrar.Registrar
	stable  *app
	canary  *app
	prom    *promtest.Server
	watcher *watch.Watcher
}

func startStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{consul: consultest.Start(t)}
	var err error
	if s.r, err = registrar.New(registrar.NewConfig(s.consul.HTTPAddr), registrar.WithOperator("release-bot")); err != nil {
		t.Fatal(err)
	}
	s.stable, s.canary = startApp(t, "shop", "stable"), startApp(t, "shop", "canary")
	port := func(a *app) string { _, p, _ := net.SplitHostPort(a.addr); return p }
	spec := fmt.Sprintf(`
- {name: shop, id: shop-1, address: 127.0.0.1, port: %s}
- {name: shop, id: shop-canary-1, address: 127.0.0.1, port: %s, meta: {canary: true, match: [{header: [{key: x-test, value_match: "1"}]}]}}
`, port(s.stable), port(s.canary))
	specs, err := registrar.ParseSpecs("shop.yaml", []byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.r.SetServiceOptions(context.Background(), "shop", gray.Options{StickyHeader: "userid"}); err != nil {
		t.Fatal(err)
	}
	s.prom = promtest.Start(t, s.stable.addr, s.canary.addr)
	s.prom.WaitScraped(t, 2)
	if s.watcher, err = watch.New(watch.NewConfig(s.consul.HTTPAddr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.watcher.Close() })
	<-s.watcher.Service("shop").Ready()
	return s
}

// traffic sends requests the way an enforcer routes them (the core decision over the watcher's
// snapshot, sticky per user) until stopped: production users, and testers with the x-test header
// when testers is set. It returns a stop function.
func (s *stack) traffic(t *testing.T, testers bool) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 2 * time.Second}
	for worker := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				req := &gray.StaticRequest{Headers: map[string]string{"userid": fmt.Sprintf("user-%d-%d", worker, i%500)}}
				if testers && i%4 == 0 {
					req.Headers["x-test"] = "1"
				}
				d := s.watcher.Service("shop").Snapshot().Decide(req)
				if len(d.Instances) == 0 {
					continue
				}
				ep := d.Instances[rand.IntN(len(d.Instances))]
				resp, err := client.Get(fmt.Sprintf("http://%s:%d/hello", ep.Address, ep.Port))
				if err == nil {
					resp.Body.Close()
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return func() { cancel(); wg.Wait() }
}

func (s *stack) plan(t *testing.T, extra string) *rollout.Plan {
	t.Helper()
	p, err := rollout.ParsePlan([]byte(fmt.Sprintf(`
service: shop
lane: canary
prometheus: %s
interval: 250ms
steps:
  - {weight: 0, hold: 2s}
  - {weight: 20, hold: 3s}
  - {weight: 50, hold: 3s}
gates:
  window: 4s
  min_requests: 30
  error_ratio: {max: 0.02, max_vs_baseline: 3}
  latency_p99: {max: 150ms, max_vs_baseline: 4}
%s`, s.prom.URL, extra)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *stack) run(t *testing.T, p *rollout.Plan) (*rollout.State, error, []string) {
	t.Helper()
	x := rollout.New(s.r)
	if _, err := x.Start(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	var events []string
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := x.Run(ctx, "shop", rollout.RunOptions{Events: func(_ *rollout.State, e string) { events = append(events, e) }})
	return st, err, events
}

// appliedOnce fails unless the history holds exactly one change with this action.
func (s *stack) appliedOnce(t *testing.T, action string) {
	t.Helper()
	hist, _ := s.r.History(context.Background(), "shop")
	n := 0
	for _, h := range hist {
		if h.Action == action {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%q was applied %d times", action, n)
	}
}

func lastHistory(t *testing.T, r *registrar.Registrar) registrar.HistoryEntry {
	t.Helper()
	hist, err := r.History(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	return hist[len(hist)-1]
}

// TestHealthyCanaryIsPromoted: a healthy canary walks every step to promotion; each step is in the
// history with the gate readings that justified it.
func TestHealthyCanaryIsPromoted(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, true)()
	st, err, events := s.run(t, s.plan(t, ""))
	if err != nil || st.Status != rollout.StatusPromoted {
		t.Fatalf("rollout ended %s: %v\nevents:\n%s", st.Status, err, strings.Join(events, "\n"))
	}
	hist, _ := s.r.History(context.Background(), "shop")
	var weights []string
	for _, h := range hist {
		if strings.HasPrefix(h.Reason, "rollout") {
			weights = append(weights, h.Action)
			if h.Action == "weight canary 50" && !strings.Contains(h.Reason, "gates passed") {
				t.Errorf("the step to 50%% does not say which readings justified it: %q", h.Reason)
			}
		}
	}
	if got := strings.Join(weights, ", "); got != "weight canary 0 (no change), weight canary 20, weight canary 50, promote canary" {
		t.Fatalf("rollout changes: %s", got)
	}
	inst, _, _ := s.r.Instances(context.Background(), "shop")
	for _, i := range inst {
		if i.Lane() != gray.StableLane {
			t.Fatalf("%s is in lane %q after promotion", i.ID, i.Lane())
		}
	}
	t.Logf("events:\n%s", strings.Join(events, "\n"))
}

// TestFailingCanaryIsRolledBackAtTheFirstGate: a canary failing 5 % of its calls is rolled back while
// it takes test traffic only, and the history says which gate failed with which numbers.
func TestFailingCanaryIsRolledBackAtTheFirstGate(t *testing.T) {
	s := startStack(t)
	s.canary.failRate.Store(50)
	defer s.traffic(t, true)()
	st, err, events := s.run(t, s.plan(t, ""))
	if !errors.Is(err, rollout.ErrRolledBack) || st.Status != rollout.StatusRolledBack || st.Step != 0 {
		t.Fatalf("rollout ended %s at step %d: %v\nevents:\n%s", st.Status, st.Step, err, strings.Join(events, "\n"))
	}
	last := lastHistory(t, s.r)
	if !strings.HasPrefix(last.Action, "rollback canary") || !strings.Contains(last.Reason, "gate error_ratio") || !strings.Contains(last.Reason, "%") {
		t.Fatalf("last change %q, reason %q", last.Action, last.Reason)
	}
	t.Logf("rolled back: %s", last.Reason)
}

// TestSlowCanaryIsStoppedByTheLatencyGate: a canary answering in 300 ms fails the p99 gate.
func TestSlowCanaryIsStoppedByTheLatencyGate(t *testing.T) {
	s := startStack(t)
	s.canary.delay.Store(int64(300 * time.Millisecond))
	defer s.traffic(t, true)()
	st, err, events := s.run(t, s.plan(t, ""))
	if !errors.Is(err, rollout.ErrRolledBack) || st.Status != rollout.StatusRolledBack {
		t.Fatalf("rollout ended %s: %v\nevents:\n%s", st.Status, err, strings.Join(events, "\n"))
	}
	if last := lastHistory(t, s.r); !strings.HasPrefix(last.Action, "rollback canary") || !strings.Contains(last.Reason, "gate latency_p99") {
		t.Fatalf("last change %q, reason %q", last.Action, last.Reason)
	}
	if w := canaryWeight(t, s); w != 0 {
		t.Fatalf("canary weight %s after the rollback", w)
	}
}

// TestTooLittleTrafficHoldsTheStep: without test traffic the canary serves nothing at step 1; the step
// holds past its hold time instead of passing.
func TestTooLittleTrafficHoldsTheStep(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, false)()
	x := rollout.New(s.r)
	if _, err := x.Start(context.Background(), s.plan(t, "")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // the step holds 2 s
	defer cancel()
	st, err := x.Run(ctx, "shop", rollout.RunOptions{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the rollout ended: %v", err)
	}
	if st, err = x.Get(context.Background(), "shop"); err != nil || st.Step != 0 || st.Status != rollout.StatusRunning || !strings.HasPrefix(st.Verdict, "holding: ") {
		t.Fatalf("after 5 s: %+v, %v", st, err)
	}
	t.Logf("%s: %s", st.StepName(), st.Verdict)
}

// TestControllerStoppedMidStepResumes: a second controller waits (or, told not to, exits naming the
// holder); when the first stops mid-step the next one resumes that step with the time already held.
func TestControllerStoppedMidStepResumes(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, true)()
	x := rollout.New(s.r)
	if _, err := x.Start(context.Background(), s.plan(t, "")); err != nil {
		t.Fatal(err)
	}
	first, stopFirst := context.WithCancel(context.Background())
	atStep1 := make(chan struct{})
	var once sync.Once
	firstDone := make(chan error, 1)
	go func() {
		_, err := x.Run(first, "shop", rollout.RunOptions{Events: func(st *rollout.State, _ string) {
			if st != nil && st.Step == 1 && st.StepApplied {
				once.Do(func() { close(atStep1) })
			}
		}})
		firstDone <- err
	}()
	select {
	case <-atStep1:
	case <-time.After(30 * time.Second):
		t.Fatal("the first controller never reached step 2")
	}
	if _, err := rollout.New(s.r).Run(context.Background(), "shop", rollout.RunOptions{NoWait: true}); !errors.Is(err, rollout.ErrLocked) || !strings.Contains(err.Error(), "release-bot") {
		t.Fatalf("a second controller with NoWait: %v", err)
	}
	time.Sleep(time.Second) // hold part of the step
	stopFirst()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the first controller: %v", err)
	}
	before, _ := x.Get(context.Background(), "shop")
	if before.Step != 1 || !before.StepApplied {
		t.Fatalf("state when the first controller stopped: %s", before.StepName())
	}
	var events []string
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := rollout.New(s.r).Run(ctx, "shop", rollout.RunOptions{Events: func(_ *rollout.State, e string) { events = append(events, e) }})
	if err != nil || st.Status != rollout.StatusPromoted {
		t.Fatalf("resumed rollout ended %s: %v\n%s", st.Status, err, strings.Join(events, "\n"))
	}
	if len(events) == 0 || strings.HasPrefix(events[0], "step 2 of 3") || strings.HasPrefix(events[0], "step 1 of 3") {
		t.Fatalf("the resumed controller started the step over: %v", events)
	}
	s.appliedOnce(t, "weight canary 20")
}

// TestOperatorCommands: pause keeps the step, resume goes on, abort rolls back, and a second start
// while one runs is refused.
func TestOperatorCommands(t *testing.T) {
	s := startStack(t)
	x := rollout.New(s.r)
	p := s.plan(t, "")
	if _, err := x.Start(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if _, err := x.Start(context.Background(), p); !errors.Is(err, rollout.ErrRunning) {
		t.Fatalf("a second start: %v", err)
	}
	if st, err := x.Pause(context.Background(), "shop"); err != nil || st.Status != rollout.StatusPaused {
		t.Fatalf("pause: %v", err)
	}
	if _, err := x.Pause(context.Background(), "shop"); err == nil {
		t.Fatal("pausing twice")
	}
	if st, err := x.Resume(context.Background(), "shop"); err != nil || st.Status != rollout.StatusRunning {
		t.Fatalf("resume: %v", err)
	}
	if _, err := s.r.Do(context.Background(), "shop", registrar.SetWeight{Lane: "canary", Weight: 2000}); err != nil {
		t.Fatal(err)
	}
	st, err := x.Abort(context.Background(), "shop")
	if err != nil || st.Status != rollout.StatusAborted || canaryWeight(t, s) != 0 {
		t.Fatalf("abort: %v, %+v", err, st)
	}
	if last := lastHistory(t, s.r); last.Action != "rollback canary" || !strings.Contains(last.Reason, "aborted by release-bot") {
		t.Fatalf("abort in the history: %+v", last)
	}
	if _, err := x.Start(context.Background(), p); err != nil {
		t.Fatalf("a new rollout after the abort: %v", err)
	}
	if st, err := x.PromoteNow(context.Background(), "shop"); err != nil || st.Status != rollout.StatusPromoted {
		t.Fatalf("promote-now: %v", err)
	}
}

func canaryWeight(t *testing.T, s *stack) gray.Weight {
	t.Helper()
	inst, _, err := s.r.Instances(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range inst {
		if i.ID == "shop-canary-1" {
			return i.Gray.Weight
		}
	}
	t.Fatal("no canary instance")
	return 0
}

// TestKilledControllerProcessResumes: the graylane command runs the rollout in its own process and
// is killed (SIGKILL) in the middle of a step. Started again, it follows the rollout until the dead
// controller's Consul session expires, resumes the step it was in, and walks the rollout to promotion; no step
// is applied twice.
func TestKilledControllerProcessResumes(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, true)()
	bin := graylaneBinary(t)
	planFile := filepath.Join(t.TempDir(), "plan.yaml")
	plan := fmt.Sprintf(`prometheus: %s
interval: 250ms
steps: [{weight: 0, hold: 1s}, {weight: 20, hold: 4s}, {weight: 50, hold: 2s}]
gates: {window: 4s, min_requests: 30, error_ratio: {max: 0.02}}
`, s.prom.URL)
	if err := os.WriteFile(planFile, []byte(plan), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func() (*exec.Cmd, *syncbuf.Buffer) {
		cmd := exec.Command(bin, "rollout", "start", "shop", "canary", "-f", planFile, "--wait", "--consul", s.consul.HTTPAddr, "--who", "release-bot")
		out := &syncbuf.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, out
	}
	first, out1 := start()
	waitFor(t, 30*time.Second, "the first controller to reach step 2", func() bool { return strings.Contains(out1.String(), "step 2 of 3") })
	time.Sleep(time.Second)
	_ = first.Process.Kill()
	_ = first.Wait()

	second, out2 := start()
	done := make(chan error, 1)
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(out2.String(), "rollout of shop lane canary: promoted") {
			t.Fatalf("the second controller: %v\n%s", err, out2.String())
		}
	case <-time.After(90 * time.Second):
		_ = second.Process.Kill()
		t.Fatalf("the second controller did not finish:\n%s", out2.String())
	}
	if !strings.Contains(out2.String(), "resuming the rollout of shop lane canary at step 2 of 3") || !strings.Contains(out2.String(), "following: release-bot") {
		t.Fatalf("the second controller did not wait for the lock and resume step 2:\n%s", out2.String())
	}
	s.appliedOnce(t, "weight canary 20")
	t.Logf("first controller:\n%s\nsecond controller:\n%s", out1.String(), out2.String())
}

// waitFor polls cond until it holds or the timeout passes.
var waitFor = eventually.Wait

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// graylaneBinary builds the graylane command once for the package's tests.
func graylaneBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "graylane-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "graylane")
		if out, err := exec.Command("go", "build", "-o", binPath, "../cmd/graylane").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building graylane: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// TestDrainUntilIdle: graylane drain --until-idle deregisters an instance only once its own request
// rate has stayed at zero; an instance that keeps serving (a client that ignores graylane calls it
// directly) makes the drain fail loudly and stay registered.
func TestDrainUntilIdle(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, true)()
	bin := graylaneBinary(t)
	waitFor(t, 20*time.Second, "the canary to serve test traffic", func() bool {
		v, ok, _ := s.prom.Query(context.Background(), `sum(rate(graylane_server_requests_total{lane="canary"}[3s]))`)
		return ok && v > 0
	})
	query := `sum(rate(graylane_server_requests_total{service="{{.Service}}",instance="{{.Address}}:{{.Port}}"}[3s]))`
	drain := func(timeout string) (string, error) {
		out, err := exec.Command(bin, "drain", "shop-canary-1", "--consul", s.consul.HTTPAddr, "--prometheus", s.prom.URL,
			"--until-idle", "2s", "--idle-timeout", timeout, "--idle-query", query, "--grace", "0").CombinedOutput()
		return string(out), err
	}

	// A client that ignores graylane keeps calling the canary: the drain must not deregister it.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			if resp, err := http.Get("http://" + s.canary.addr + "/hello"); err == nil {
				resp.Body.Close()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	out, err := drain("6s")
	cancel()
	if err == nil || !strings.Contains(out, "shop-canary-1 is not idle after 6s") || !strings.Contains(out, "requests/s") {
		t.Fatalf("drain of a busy instance: %v\n%s", err, out)
	}
	if inst, _, _ := s.r.Instances(context.Background(), "shop"); len(inst) != 2 {
		t.Fatalf("a busy instance was deregistered: %d instances left", len(inst))
	}

	// Without that client, graylane's own routing sends it nothing: idle, then deregistered.
	start := time.Now()
	if out, err := drain("60s"); err != nil || !strings.Contains(out, "deregistered shop-canary-1") {
		t.Fatalf("drain of an idle instance: %v\n%s", err, out)
	}
	if inst, _, _ := s.r.Instances(context.Background(), "shop"); len(inst) != 1 {
		t.Fatalf("%d instances after the drain", len(inst))
	}
	t.Logf("drained once idle for 2 s, in %v", time.Since(start).Round(100*time.Millisecond))
}
