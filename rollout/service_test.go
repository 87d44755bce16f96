package rollout_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/syncbuf"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

// controllerProcess is `graylane rollout controller` running in a process of its own.
type controllerProcess struct {
	name    string
	cmd     *exec.Cmd
	out     *syncbuf.Buffer
	metrics string // the URL of its /metrics
}

func startControllerProcess(t *testing.T, s *stack, name string) *controllerProcess {
	t.Helper()
	cmd := exec.Command(graylaneBinary(t), "rollout", "controller", "--listen", "127.0.0.1:0",
		"--consul", s.consul.HTTPAddr, "--who", name)
	p := &controllerProcess{name: name, cmd: cmd, out: &syncbuf.Buffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	addr := regexp.MustCompile(`metrics on (http://\S+/metrics)`)
	waitFor(t, 20*time.Second, name+" to serve its metrics", func() bool {
		m := addr.FindStringSubmatch(p.out.String())
		if m != nil {
			p.metrics = m[1]
		}
		return m != nil
	})
	return p
}

func (p *controllerProcess) leads() bool { return strings.Contains(p.out.String(), " leads: ") }

func (p *controllerProcess) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(p.metrics)
	if err != nil {
		t.Fatalf("scraping %s: %v", p.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// rolloutChanges lists the actions of the history entries a rollout made, in order.
func rolloutChanges(t *testing.T, r *registrar.Registrar) []string {
	t.Helper()
	var out []string
	for _, h := range mustHistory(t, r) {
		if strings.HasPrefix(h.Reason, "rollout") {
			out = append(out, h.Action)
		}
	}
	return out
}

// TestControllerServiceFailsOver: two `graylane rollout controller` processes run; the leader
// picks up a rollout that `start` only recorded and is killed with SIGKILL in the middle of a step,
// while it holds the leader lock and the rollout's lock. The standby takes over within the
// session's TTL (Consul expires a session within the TTL to twice that) and walks the rollout to
// promotion: every step is in the history exactly once, in order, none skipped or repeated.
func TestControllerServiceFailsOver(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, true)()
	a := startControllerProcess(t, s, "ctl-a")
	waitFor(t, 20*time.Second, "ctl-a to lead", a.leads)
	b := startControllerProcess(t, s, "ctl-b")
	if got := b.scrape(t); !strings.Contains(got, "graylane_rollout_controller_leader 0") {
		t.Fatalf("the standby's metrics do not say it stands by:\n%s", got)
	}

	// The test is about the takeover: a machine slow enough to make a few readings unknown must not
	// roll the canary back.
	p := s.plan(t, "unknown_limit: 40\non_unknown: pause\n")
	p.Steps = []rollout.Step{{Weight: 0, Hold: rollout.Duration(time.Second)}, {Weight: 2000, Hold: rollout.Duration(4 * time.Second)},
		{Weight: 5000, Hold: rollout.Duration(2 * time.Second)}}
	x := rollout.New(s.r)
	if _, err := x.Start(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the leader to set step 2's weight", func() bool {
		st, err := x.Get(context.Background(), "shop")
		return err == nil && st.Step == 1 && st.StepApplied
	})
	var got string
	defer func() {
		if t.Failed() {
			t.Logf("last scrape:\n%s\nctl-a:\n%s", got, a.out.String())
		}
	}()
	waitFor(t, 5*time.Second, "the leader's metrics to show step 2", func() bool {
		got = a.scrape(t)
		return strings.Contains(got, `graylane_rollout_step{lane="canary",service="shop"} 2`) &&
			strings.Contains(got, `graylane_rollout_weight{lane="canary",service="shop"} 20`) &&
			strings.Contains(got, `graylane_rollout_phase{lane="canary",phase="running",service="shop"} 1`)
	})
	time.Sleep(time.Second)
	killed := time.Now()
	_ = a.cmd.Process.Kill()

	defer func() {
		if t.Failed() {
			st, err := x.Get(context.Background(), "shop")
			t.Logf("the rollout at the end: %+v %v\nctl-b:\n%s", st, err, b.out.String())
		}
	}()
	waitFor(t, 40*time.Second, "ctl-b to take over", b.leads)
	takeover := time.Since(killed)
	if takeover > 25*time.Second { // twice the 10 s TTL, the 1 s lock delay, and the standby's wake-up
		t.Errorf("the standby took over %s after the leader died", takeover)
	}
	waitFor(t, 60*time.Second, "the rollout to be promoted", func() bool {
		st, err := x.Get(context.Background(), "shop")
		return err == nil && st.Status == rollout.StatusPromoted
	})
	want := []string{"weight canary 0 (no change)", "weight canary 20", "weight canary 50", "promote canary"}
	if got := rolloutChanges(t, s.r); !slices.Equal(got, want) {
		t.Fatalf("rollout changes %q, want %q", got, want)
	}
	// The controller records the promotion, then updates its metrics: they may trail the record by
	// a moment. (On failure the deferred log above shows the last scrape, now the new leader's.)
	waitFor(t, 10*time.Second, "the new leader's metrics to show the promotion", func() bool {
		got = b.scrape(t)
		for _, line := range []string{"graylane_rollout_controller_leader 1",
			`graylane_rollout_phase{lane="canary",phase="promoted",service="shop"} 1`,
			`graylane_rollout_weight{lane="canary",service="shop"} 100`} {
			if !strings.Contains(got, line) {
				return false
			}
		}
		return true
	})
	// Ended: no longer listed for the controllers.
	waitFor(t, 10*time.Second, "the ended rollout to leave the controllers' list", func() bool {
		pair, _, err := s.r.Client().KV().Get(s.r.KVPrefix()+"/rollouts/shop", nil)
		return err == nil && pair == nil
	})
	t.Logf("takeover %s after SIGKILL\nctl-a:\n%s\nctl-b:\n%s", takeover.Round(100*time.Millisecond), a.out.String(), b.out.String())
}

// hook is a webhook receiver: a real HTTP server that records what is posted to it and answers as
// told. The messengers' own servers cannot be reached from a test; their formats are checked
// against their documented shapes in notify_test.go.
type hook struct {
	*httptest.Server
	mu     sync.Mutex
	events []rollout.Event
	bodies []string
}

func startHook(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, e rollout.Event)) *hook {
	h := &hook{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var e rollout.Event
		_ = json.Unmarshal(body, &e)
		h.mu.Lock()
		h.events = append(h.events, e)
		h.bodies = append(h.bodies, string(body))
		h.mu.Unlock()
		answer(w, r, e)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hook) kinds() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		out = append(out, e.Kind)
	}
	return out
}

// TestWebhooksNeverHoldUpARollback: a failing canary is rolled back while one webhook hangs and
// another answers 500. The rollback is committed before any webhook hears of it, the controller is
// not held up by the hanging one beyond its timeout, the failures are reported and counted, and a
// working webhook receives every event in order.
func TestWebhooksNeverHoldUpARollback(t *testing.T) {
	s := startStack(t)
	s.canary.failRate.Store(500)
	defer s.traffic(t, true)()

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var rolledBackFirst sync.Once
	rolledBackBeforeTold := make(chan bool, 1)
	hanging := startHook(t, func(w http.ResponseWriter, r *http.Request, e rollout.Event) {
		if e.Kind == rollout.NotifyOutcome {
			rolledBackFirst.Do(func() {
				st, err := rollout.New(s.r).Get(context.Background(), "shop")
				rolledBackBeforeTold <- err == nil && st.Status == rollout.StatusRolledBack && canaryWeight(t, s) == 0
			})
		}
		select { // hang until the test ends
		case <-release:
		case <-r.Context().Done():
		}
	})
	broken := startHook(t, func(w http.ResponseWriter, _ *http.Request, _ rollout.Event) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	working := startHook(t, func(w http.ResponseWriter, _ *http.Request, _ rollout.Event) {})

	p := s.plan(t, fmt.Sprintf(`notify:
  - url: %s/hang
    timeout: 1s
  - url: %s/broken
  - url: "%s/ok?token=secret-token"
    on: [before_step, after_step, outcome]
`, hanging.URL, broken.URL, working.URL))
	x := rollout.New(s.r)
	if _, err := x.Start(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var failures []string
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	began := time.Now()
	st, err := x.Run(ctx, "shop", rollout.RunOptions{Notified: func(kind string, n *rollout.Notification, err error) {
		if err != nil {
			mu.Lock()
			failures = append(failures, err.Error())
			mu.Unlock()
		}
	}})
	took := time.Since(began)
	if st == nil || st.Status != rollout.StatusRolledBack {
		t.Fatalf("the failing canary ended %+v: %v", st, err)
	}
	select {
	case ok := <-rolledBackBeforeTold:
		if !ok {
			t.Fatal("a webhook heard of the rollback before it was committed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hanging webhook was never told the outcome")
	}
	// Each of the three posts to the hanging webhook (before_step, after_step, outcome) waits its
	// 1 s timeout at most, in the background; Run returns once they are through.
	if took > 20*time.Second {
		t.Errorf("the rollback took %s with a hanging webhook", took)
	}
	if got := working.kinds(); !slices.Equal(got, []string{rollout.NotifyBeforeStep, rollout.NotifyAfterStep, rollout.NotifyOutcome}) {
		t.Fatalf("the working webhook received %q", got)
	}
	working.mu.Lock()
	last := working.events[len(working.events)-1]
	working.mu.Unlock()
	if last.Service != "shop" || last.Lane != "canary" || last.Status != rollout.StatusRolledBack || !strings.Contains(last.Message, "error_ratio") {
		t.Fatalf("the outcome posted: %+v", last)
	}
	mu.Lock()
	defer mu.Unlock()
	joined := strings.Join(failures, "\n")
	if !strings.Contains(joined, "500 Internal Server Error") || !strings.Contains(joined, "deadline exceeded") {
		t.Fatalf("the failing webhooks were not reported:\n%s", joined)
	}
	if strings.Contains(joined, "secret-token") {
		t.Fatalf("a report names a webhook's token:\n%s", joined)
	}
	t.Logf("rolled back in %s; failures reported:\n%s", took.Round(time.Millisecond), joined)
}

// TestStartRecordsAndAControllerDrives: `graylane rollout start` records the rollout and returns,
// saying that no controller runs; a controller started afterwards picks the rollout up, and
// `rollout start --wait` run meanwhile follows it to its end without driving it.
func TestStartRecordsAndAControllerDrives(t *testing.T) {
	s := startStack(t)
	defer s.traffic(t, true)()
	planFile := filepath.Join(t.TempDir(), "plan.yaml")
	plan := fmt.Sprintf(`prometheus: %s
interval: 250ms
steps: [{weight: 0, hold: 1s}, {weight: 20, hold: 2s}]
gates: {window: 4s, min_requests: 30, error_ratio: {max: 0.02}}
unknown_limit: 40
`, s.prom.URL)
	if err := os.WriteFile(planFile, []byte(plan), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := graylaneBinary(t)
	out, err := exec.Command(bin, "rollout", "start", "shop", "canary", "-f", planFile, "--consul", s.consul.HTTPAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no rollout controller runs") {
		t.Fatalf("start: %v\n%s", err, out)
	}
	time.Sleep(2 * time.Second)
	if st, err := rollout.New(s.r).Get(context.Background(), "shop"); err != nil || st.StepApplied {
		t.Fatalf("something drove the rollout with no controller running: %+v %v", st, err)
	}
	c := startControllerProcess(t, s, "ctl")
	waitFor(t, 20*time.Second, "the controller to take the rollout", func() bool {
		_, held, err := rollout.New(s.r).Controller(context.Background(), "shop")
		return err == nil && held
	})
	follow := exec.Command(bin, "rollout", "start", "shop", "canary", "-f", planFile, "--wait", "--consul", s.consul.HTTPAddr)
	stdout, _ := follow.StdoutPipe()
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := follow.Wait(); err != nil {
		t.Fatalf("start --wait: %v\n%s", err, strings.Join(lines, "\n"))
	}
	text := strings.Join(lines, "\n")
	if !strings.Contains(text, "following: ctl") || !strings.Contains(text, "rollout of shop lane canary: promoted") {
		t.Fatalf("start --wait did not follow the controller to the end:\n%s\ncontroller:\n%s", text, c.out.String())
	}
	if !strings.Contains(c.out.String(), "rollout of shop: driving it") {
		t.Fatalf("the controller did not drive it:\n%s", c.out.String())
	}
	want := []string{"weight canary 0 (no change)", "weight canary 20", "promote canary"}
	if got := rolloutChanges(t, s.r); !slices.Equal(got, want) {
		t.Fatalf("rollout changes %q, want %q", got, want)
	}
}
