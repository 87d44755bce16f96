package main

// The soak (`make soak`, and a 60-second run in `make test`): both data planes under steady traffic
// from distinct users while a schedule does to the stack what production does to it. Every cycle of
// a minute restarts stable and canary processes (SIGTERM, which drains, and SIGKILL, which does not),
// pauses a stable process past its health check, restarts the plugin runner and the Consul agent,
// starts fresh Kratos clients, and walks releases: bservice's canary 0 → 5 → 25 → rollback → 5, pay's
// green switched on and back; the last cycle ends with the canary promoted, and instead of switching
// pay's green by hand it has graylane's rollout controller walk green to 40 % on Prometheus gates,
// and an operator abort it (soakrollout.go).
//
// Each request goes through the gateway path (the real runner over APISIX's protocol, then the
// lane's upstream; APISIX's allow_degradation when the runner is away: the route's own upstream)
// and through a Kratos client with the selector, back to back, and is judged against what Consul
// held when it was sent:
//
//   - leaked: a production request (no test header) served by a gray lane whose weight did not
//     cover its user at any moment from the propagation bound before it was sent until it ended;
//   - failed, though its lane had an instance that had been up for a while and none of the lane's
//     instances was stopped, killed or paused around it (failures while one was, or while the lane
//     had no instance up, are counted apart: they are what those events cost);
//   - lane changed: a user whose lane differs from their previous request's, with no release step
//     and no instance of either lane going or coming in between;
//   - disagreed: the two planes served one request from different lanes, away from any step or
//     instance event;
//   - the worst time from a release step until both planes follow it, from probe users the step moves.
//
// The goals are 0 for the first four.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// soakBound is how long a change may take to reach both planes before a request that does not
// follow it counts against them.
const soakBound = 5 * time.Second

const soakCycle = 60 * time.Second

// soakStats are one plane's counts.
type soakStats struct {
	Requests, Production int
	Leaked               int
	Failed               int // its lane had a steady instance, none stopped around the request
	FailedInterrupted    int // an instance of its lane was stopped, killed or paused around it
	FailedNoInstance     int // its lane had no instance up
	Degraded             int // the gateway only: the runner was away, APISIX passed the request on
	LaneChanged          int
	firstLeak, firstFail string
	firstChange          string
}

// soakReport is what a soak measured.
type soakReport struct {
	Duration    time.Duration
	Planes      [2]soakStats // gateway, mesh
	Compared    int
	Disagreed   int
	firstDiffer string
	Steps       int
	WorstFollow time.Duration
	Events      []string
	// Rollout says what the rollout of the last cycle did; RolloutMissed, what it failed to do.
	Rollout, RolloutMissed string
}

// ok reports whether every goal was met.
func (r *soakReport) ok() bool {
	for _, p := range r.Planes {
		if p.Leaked > 0 || p.Failed > 0 || p.LaneChanged > 0 {
			return false
		}
	}
	return r.Disagreed == 0 && r.WorstFollow <= soakBound && r.RolloutMissed == ""
}

var planeNames = [2]string{"gateway (runner + upstreams)", "mesh (Kratos client + selector)"}

// print writes the report as a table.
func (r *soakReport) print(out io.Writer) {
	fmt.Fprintf(out, "\nsoak: %v, %d release steps, %d instance and process events\n\n", r.Duration.Round(time.Second), r.Steps, len(r.Events)-r.Steps)
	fmt.Fprintf(out, "| | %s | %s |\n| --- | --- | --- |\n", planeNames[0], planeNames[1])
	row := func(name string, f func(s *soakStats) int) {
		fmt.Fprintf(out, "| %s | %d | %d |\n", name, f(&r.Planes[0]), f(&r.Planes[1]))
	}
	row("requests", func(s *soakStats) int { return s.Requests })
	row("production requests", func(s *soakStats) int { return s.Production })
	row("**production in a lane whose weight did not cover it** (goal 0)", func(s *soakStats) int { return s.Leaked })
	row("**failed while its lane had a steady instance** (goal 0)", func(s *soakStats) int { return s.Failed })
	row("**users whose lane changed without a step** (goal 0)", func(s *soakStats) int { return s.LaneChanged })
	row("failed while an instance of its lane was stopped, killed or paused", func(s *soakStats) int { return s.FailedInterrupted })
	row("failed while its lane had no instance up", func(s *soakStats) int { return s.FailedNoInstance })
	row("passed on by APISIX while the runner restarted (allow_degradation)", func(s *soakStats) int { return s.Degraded })
	fmt.Fprintf(out, "\n**requests the planes decided differently** (goal 0): %d of %d compared\n", r.Disagreed, r.Compared)
	fmt.Fprintf(out, "worst time from a release step to both planes following it: %v (bound %v)\n", r.WorstFollow.Round(time.Millisecond), soakBound)
	for i, p := range r.Planes {
		for _, ex := range []string{p.firstLeak, p.firstFail, p.firstChange} {
			if ex != "" {
				fmt.Fprintf(out, "  %s: %s\n", planeNames[i], ex)
			}
		}
	}
	if r.firstDiffer != "" {
		fmt.Fprintf(out, "  %s\n", r.firstDiffer)
	}
	if r.Rollout != "" {
		fmt.Fprintf(out, "rollout: %s\n", r.Rollout)
	}
	if r.RolloutMissed != "" {
		fmt.Fprintf(out, "**rollout goal missed**: %s\n", r.RolloutMissed)
	}
}

// soakService is a service of the soak with the lanes of its instances.
type soakService struct {
	name      string
	base      string            // the lane production goes to at weight 0
	gray      string            // the lane the releases move
	testerHdr [2]string         // the header that puts a request in the gray lane
	lanes     map[string]string // instance ID -> lane, as the schedule changes it
}

// soak is one run.
type soak struct {
	s     *stack
	out   io.Writer
	start time.Time
	specs map[string]registrar.Spec

	gw       *gateway
	mesh     atomic.Pointer[kratosClient]
	services []*soakService

	mu       sync.Mutex
	weights  []weightsAt            // per service, the gray lane's weight over time
	steps    []time.Time            // release steps
	up       map[string]time.Time   // instance ID -> up since (absent: down)
	moves    map[string][]time.Time // instance ID -> when it went down or came up
	last     [2]map[string]sighting // plane -> service/user -> last lane seen
	report   soakReport
	laneOf   map[string]string // instance ID -> lane
	promoted bool

	rollouts *soakRollout
}

type weightsAt struct {
	at      time.Time
	service string
	weight  gray.Weight
}

type sighting struct {
	lane string
	sent time.Time
}

// runSoak builds and starts the stack, runs the schedule for d (whole cycles of a minute, at least
// one) and returns what it measured.
func runSoak(ctx context.Context, out io.Writer, dir string, d time.Duration) (*soakReport, error) {
	// The schedule and the rollout controller's goroutines both report events.
	out = &lockedWriter{w: out}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "graylane-soak-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	s := &stack{dir: dir}
	defer s.close()
	if err := s.build(ctx, out); err != nil {
		return nil, err
	}
	if err := s.startConsul(true); err != nil {
		return nil, err
	}
	k := &soak{s: s, out: out, specs: map[string]registrar.Spec{}, up: map[string]time.Time{},
		moves: map[string][]time.Time{}, laneOf: map[string]string{}}
	k.last[0], k.last[1] = map[string]sighting{}, map[string]sighting{}
	for _, file := range [][]byte{bserviceSpec, paySpec} {
		specs, err := registrar.ParseSpecs("soak", file)
		if err != nil {
			return nil, err
		}
		for _, sp := range specs {
			k.specs[sp.ID] = sp
			k.laneOf[sp.ID] = sp.Gray.LaneName()
			if err := k.startInstance(ctx, sp.ID); err != nil {
				return nil, err
			}
		}
	}
	k.services = []*soakService{
		{name: "bservice", base: gray.StableLane, gray: gray.CanaryLane, testerHdr: [2]string{"userid", "123"}},
		{name: "pay", base: string(gray.Blue), gray: string(gray.Green), testerHdr: [2]string{"x-env", "green"}},
	}
	if err := os.MkdirAll(filepath.Join(dir, "prometheus"), 0o755); err != nil {
		return nil, err
	}
	if err := k.startRollouts(ctx, filepath.Join(dir, "prometheus")); err != nil {
		return nil, err
	}
	defer k.stopRollouts()
	if err := s.startRunner(ctx); err != nil {
		return nil, err
	}
	k.gw = newGateway(s.sock, s.w)
	defer k.gw.close()
	k.freshClient()
	defer func() { k.mesh.Load().close() }()
	// Traffic starts once both planes serve both services, as users come once a release is deployed.
	for _, svc := range k.services {
		for p := range 2 {
			for deadline := time.Now().Add(30 * time.Second); ; {
				if _, _, err := k.send(ctx, p, svc.name, &request{User: "warm-up"}); err == nil {
					break
				} else if time.Now().After(deadline) {
					return nil, fmt.Errorf("soak: %s does not serve %s: %w", planeNames[p], svc.name, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	k.start = time.Now()
	k.setWeight("bservice", 0)
	k.setWeight("pay", 0)
	fmt.Fprintf(out, "soak: Consul %s (a server that keeps its state), bservice-1 and -2, bservice-canary-1 (weight 0, userid: 123),"+
		" pay-blue-1, pay-green-1 (weight 0, x-env: green), the plugin runner; cycles of %v\n", s.agent.HTTPAddr, soakCycle)

	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); k.traffic(trafficCtx, uint64(w)) }()
	}
	cycles := max(1, int((d+soakCycle-1)/soakCycle))
	var err error
	for c := 0; c < cycles && err == nil; c++ {
		err = k.cycle(ctx, c, c == cycles-1)
	}
	time.Sleep(soakBound / 2) // the last step's requests settle
	stopTraffic()
	wg.Wait()
	k.report.Duration = time.Since(k.start)
	return &k.report, err
}

// event records what the schedule did.
func (k *soak) event(format string, args ...any) {
	msg := fmt.Sprintf("%6.1fs ", time.Since(k.start).Seconds()) + fmt.Sprintf(format, args...)
	k.mu.Lock()
	k.report.Events = append(k.report.Events, msg)
	k.mu.Unlock()
	fmt.Fprintln(k.out, "  "+msg)
}

// cycle runs one minute of the schedule.
func (k *soak) cycle(ctx context.Context, n int, last bool) error {
	begin := time.Now()
	at := func(sec float64) error {
		select {
		case <-time.After(time.Until(begin.Add(time.Duration(sec * float64(time.Second))))):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	type step struct {
		at float64
		do func() error
	}
	schedule := []step{
		{2, func() error { return k.weight(ctx, "bservice", 5) }},
		{5, func() error { return k.restart(ctx, "bservice-1", syscall.SIGTERM, 0) }},
		{9, func() error { return k.weight(ctx, "bservice", 25) }},
		{12, func() error { return k.restart(ctx, "bservice-canary-1", syscall.SIGKILL, time.Second) }},
		{16, func() error { return k.restartRunner(ctx) }},
		{19, func() error { k.freshClient(); k.event("a fresh Kratos client"); return nil }},
		{22, func() error { return k.rollback(ctx, "bservice") }},
		{25, func() error { return k.pause("bservice-2", 3*time.Second) }},
		{31, func() error { return k.restartConsul() }},
		{38, func() error {
			if last {
				return k.rolloutPay(ctx) // the rollout controller walks green from here
			}
			return k.weight(ctx, "pay", 100)
		}},
		{41, func() error { return k.restart(ctx, "bservice-2", syscall.SIGKILL, 500*time.Millisecond) }},
		{45, func() error {
			if last {
				return nil
			}
			return k.weight(ctx, "pay", 0)
		}},
		{48, func() error { return k.weight(ctx, "bservice", 5) }},
		{52, func() error {
			if last {
				return k.promote(ctx, "bservice")
			}
			return k.rollback(ctx, "bservice")
		}},
		{54, func() error {
			if last {
				return k.abortPay(ctx)
			}
			return nil
		}},
		{55, func() error { k.freshClient(); k.event("a fresh Kratos client"); return nil }},
		{59, func() error { return nil }},
	}
	fmt.Fprintf(k.out, "cycle %d\n", n+1)
	for _, st := range schedule {
		if err := at(st.at); err != nil {
			return err
		}
		if err := st.do(); err != nil {
			return err
		}
	}
	return nil
}

// freshClient starts using a new Kratos client; the old one is closed once its calls are done.
func (k *soak) freshClient() {
	kc := &kratosClient{conns: map[string]*grpc.ClientConn{}, nodes: map[string]*atomic.Pointer[[]kselector.Node]{},
		consul: func() *kconsul.Registry { return kconsul.New(k.s.client) }, watcher: k.s.w}
	if old := k.mesh.Swap(kc); old != nil {
		time.AfterFunc(15*time.Second, old.close)
	}
}

func (k *soak) startInstance(ctx context.Context, id string) error {
	if err := k.s.startInstance(ctx, k.specs[id], ""); err != nil {
		return err
	}
	k.mu.Lock()
	k.up[id] = time.Now()
	k.moves[id] = append(k.moves[id], time.Now())
	k.mu.Unlock()
	return nil
}

func (k *soak) down(id string) {
	k.mu.Lock()
	delete(k.up, id)
	k.moves[id] = append(k.moves[id], time.Now())
	k.mu.Unlock()
}

// restart stops an instance's process with sig and starts it again after down.
func (k *soak) restart(ctx context.Context, id string, sig syscall.Signal, down time.Duration) error {
	p := k.s.proc(id)
	if p == nil {
		return fmt.Errorf("soak: %s is not running", id)
	}
	k.down(id)
	start := time.Now()
	p.stop(sig, 10*time.Second)
	time.Sleep(down)
	if err := k.startInstance(ctx, id); err != nil {
		return err
	}
	k.event("%s stopped with %v and started again (%v)", id, sig, time.Since(start).Round(time.Millisecond))
	return nil
}

// pause stops an instance's process for d, past its health check (1 s), then lets it go on.
func (k *soak) pause(id string, d time.Duration) error {
	p := k.s.proc(id)
	if p == nil {
		return fmt.Errorf("soak: %s is not running", id)
	}
	k.down(id)
	p.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(d)
	p.cmd.Process.Signal(syscall.SIGCONT)
	k.mu.Lock()
	k.up[id] = time.Now()
	k.moves[id] = append(k.moves[id], time.Now())
	k.mu.Unlock()
	k.event("%s paused for %v: its health check failed, then passed", id, d)
	return nil
}

func (k *soak) restartRunner(ctx context.Context) error {
	start := time.Now()
	if p := k.s.proc("runner"); p != nil {
		p.stop(syscall.SIGTERM, 10*time.Second)
	}
	if err := k.s.startRunner(ctx); err != nil {
		return err
	}
	k.event("the plugin runner restarted (%v)", time.Since(start).Round(time.Millisecond))
	return nil
}

func (k *soak) restartConsul() error {
	start := time.Now()
	if err := k.s.agent.Restart(); err != nil {
		return fmt.Errorf("soak: restarting Consul: %w", err)
	}
	k.event("the Consul agent restarted (%v)", time.Since(start).Round(time.Millisecond))
	return nil
}

// setWeight records the gray lane's weight of a service from now on.
func (k *soak) setWeight(service string, percent int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.weights = append(k.weights, weightsAt{at: time.Now(), service: service, weight: gray.Weight(percent * 100)})
}

// markStep records that a release step begins now.
func (k *soak) markStep() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.steps = append(k.steps, time.Now())
	k.report.Steps++
}

// weight sets the gray lane's weight in Consul and measures how long both planes take to follow.
func (k *soak) weight(ctx context.Context, service string, percent int) error {
	svc := k.service(service)
	before := k.weightAt(service, time.Now())
	op := registrar.SetWeight{Lane: svc.gray, Weight: gray.Weight(percent * 100)}
	return k.step(ctx, svc, op, before, gray.Weight(percent*100))
}

func (k *soak) rollback(ctx context.Context, service string) error {
	svc := k.service(service)
	return k.step(ctx, svc, registrar.Rollback{Lane: svc.gray}, k.weightAt(service, time.Now()), 0)
}

// promote makes the canary stable: every user is served by stable from then on.
func (k *soak) promote(ctx context.Context, service string) error {
	svc := k.service(service)
	k.markStep()
	k.setWeight(service, 100) // every bucket is covered while the canary's instance becomes stable
	if _, err := k.s.r.Do(ctx, service, registrar.Promote{Lane: svc.gray}); err != nil {
		return fmt.Errorf("soak: %s: %w", service, err)
	}
	k.mu.Lock()
	for id, lane := range k.laneOf {
		if lane == svc.gray && k.specs[id].Name == service {
			k.laneOf[id] = svc.base
		}
	}
	k.promoted = true
	k.mu.Unlock()
	k.event("promote %s %s", service, svc.gray)
	return nil
}

// step commits op, which moves the gray lane's weight from before to after, and measures the time
// until both planes serve a user the step moves from the lane the step gives them.
func (k *soak) step(ctx context.Context, svc *soakService, op registrar.Op, before, after gray.Weight) error {
	lo, hi := min(before, after), max(before, after)
	want := svc.gray
	if after < before {
		want = svc.base
	}
	probe := ""
	for i := 0; probe == "" && lo < hi; i++ {
		u := fmt.Sprintf("probe-%d", i)
		if b := gray.Weight(gray.Bucket(svc.name, u)); b >= lo && b < hi {
			probe = u
		}
	}
	// The step counts from just before the commit, so that a request that sees it is never
	// judged by the old weight alone; a lower weight counts from the commit on.
	k.markStep()
	if after > before {
		k.setWeight(svc.name, int(after/100))
	}
	start := time.Now()
	if _, err := k.s.r.Do(ctx, svc.name, op); err != nil {
		return fmt.Errorf("soak: %s %v: %w", svc.name, op, err)
	}
	if after <= before {
		k.setWeight(svc.name, int(after/100))
	}
	k.event("%s: %v", svc.name, op)
	if probe == "" {
		return nil
	}
	var worst time.Duration
	for p := range 2 {
		for {
			lane, _, err := k.send(ctx, p, svc.name, &request{User: probe})
			if err == nil && lane == want {
				worst = max(worst, time.Since(start))
				break
			}
			if time.Since(start) > 30*time.Second {
				return fmt.Errorf("soak: %s did not follow %s %v in 30s (lane %q, %v)", planeNames[p], svc.name, op, lane, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	k.mu.Lock()
	k.report.WorstFollow = max(k.report.WorstFollow, worst)
	k.mu.Unlock()
	return nil
}

func (k *soak) service(name string) *soakService {
	for _, s := range k.services {
		if s.name == name {
			return s
		}
	}
	panic("soak: no service " + name)
}

// weightAt returns the gray lane's weight of service at t.
func (k *soak) weightAt(service string, t time.Time) gray.Weight {
	k.mu.Lock()
	defer k.mu.Unlock()
	var w gray.Weight
	for _, e := range k.weights {
		if e.service == service && !e.at.After(t) {
			w = e.weight
		}
	}
	return w
}

// maxWeight returns the gray lane's highest weight of service from 'from' to 'to'. k.mu is held.
func (k *soak) maxWeight(service string, from, to time.Time) gray.Weight {
	var w, at gray.Weight
	for _, e := range k.weights {
		if e.service != service {
			continue
		}
		switch {
		case !e.at.After(from):
			at = e.weight
		case !e.at.After(to):
			w = max(w, e.weight)
		}
	}
	return max(w, at)
}

// stepBetween reports whether a release step happened from 'from' to 'to'. k.mu is held.
func (k *soak) stepBetween(from, to time.Time) bool {
	for _, s := range k.steps {
		if !s.Before(from) && !s.After(to) {
			return true
		}
	}
	return false
}

// laneMoved reports whether an instance of one of the lanes went down or came up from 'from' to
// 'to'. k.mu is held.
func (k *soak) laneMoved(service string, from, to time.Time, lanes ...string) bool {
	for id, moves := range k.moves {
		if k.specs[id].Name != service || !slices.Contains(lanes, k.laneOf[id]) {
			continue
		}
		for _, m := range moves {
			if !m.Before(from) && !m.After(to) {
				return true
			}
		}
	}
	return false
}

// steadyInstance reports whether the lane has an instance up since before t-steady. k.mu is held.
func (k *soak) steadyInstance(service, lane string, t time.Time) bool {
	for id, since := range k.up {
		if k.specs[id].Name == service && k.laneOf[id] == lane && since.Before(t.Add(-3*time.Second)) {
			return true
		}
	}
	return false
}

// send sends a request through a plane and returns the lane that served it; degraded is set when
// the gateway's runner could not be reached and the request went on as APISIX's allow_degradation
// sends it: to the route's own upstream.
func (k *soak) send(ctx context.Context, p int, service string, r *request) (lane string, degraded bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var rep *reply
	if p == 0 {
		l, derr := k.gw.decide(service, r)
		degraded = derr != nil
		rep, err = k.gw.forward(ctx, service, r, l)
	} else {
		rep, err = k.mesh.Load().Do(ctx, service, r)
	}
	if err != nil {
		return "", degraded, err
	}
	return rep.Serves, degraded, nil
}

// traffic sends requests from distinct users through both planes until ctx ends.
func (k *soak) traffic(ctx context.Context, seed uint64) {
	rnd := rand.New(rand.NewPCG(seed, 7))
	for ctx.Err() == nil {
		svc := k.services[rnd.IntN(len(k.services))]
		r := request{User: fmt.Sprintf("user-%d", rnd.IntN(300))}
		tester := rnd.IntN(10) == 0
		if tester {
			r.User = fmt.Sprintf("tester-%d", rnd.IntN(20))
			r.Headers = [][2]string{svc.testerHdr}
		}
		var lanes [2]string
		var ok [2]bool
		sent := time.Now()
		for p := range 2 {
			pSent := time.Now()
			lane, degraded, err := k.send(ctx, p, svc.name, &r)
			if ctx.Err() != nil {
				return
			}
			lanes[p], ok[p] = lane, err == nil && !degraded
			k.judge(p, svc, &r, tester, pSent, time.Now(), lane, degraded, err)
		}
		if ok[0] && ok[1] {
			k.compare(svc, &r, sent, lanes)
		}
		time.Sleep(time.Duration(5+rnd.IntN(10)) * time.Millisecond)
	}
}

// judge counts one request of one plane.
func (k *soak) judge(p int, svc *soakService, r *request, tester bool, sent, ended time.Time, lane string, degraded bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := &k.report.Planes[p]
	st.Requests++
	if !tester {
		st.Production++
	}
	expected := svc.base
	if tester && !(k.promoted && svc.gray == gray.CanaryLane) {
		expected = svc.gray
	} else if !tester && gray.Weight(gray.Bucket(svc.name, r.User)) < k.maxWeight(svc.name, sent, sent) {
		expected = svc.gray
	}
	what := fmt.Sprintf("%s %s at %.1fs", svc.name, r.User, sent.Sub(k.start).Seconds())
	if err != nil {
		switch {
		case k.laneMoved(svc.name, sent.Add(-time.Second), ended.Add(200*time.Millisecond), expected):
			st.FailedInterrupted++
		case k.steadyInstance(svc.name, expected, sent):
			st.Failed++
			if st.firstFail == "" {
				st.firstFail = fmt.Sprintf("first failure with a steady %s instance: %s: %v", expected, what, err)
			}
		default:
			st.FailedNoInstance++
		}
		return
	}
	if degraded {
		st.Degraded++
		return
	}
	if !tester && lane == svc.gray && gray.Weight(gray.Bucket(svc.name, r.User)) >= k.maxWeight(svc.name, sent.Add(-soakBound), ended) {
		st.Leaked++
		if st.firstLeak == "" {
			st.firstLeak = fmt.Sprintf("first production request in %s beyond its weight: %s (bucket %d)", lane, what, gray.Bucket(svc.name, r.User))
		}
	}
	key := svc.name + "/" + r.User
	if prev, seen := k.last[p][key]; seen && prev.lane != lane &&
		!k.stepBetween(prev.sent.Add(-soakBound), ended) &&
		!k.laneMoved(svc.name, prev.sent.Add(-soakBound), ended, prev.lane, lane) {
		st.LaneChanged++
		if st.firstChange == "" {
			st.firstChange = fmt.Sprintf("first lane change without a step: %s from %s (at %.1fs) to %s", what, prev.lane, prev.sent.Sub(k.start).Seconds(), lane)
		}
	}
	k.last[p][key] = sighting{lane: lane, sent: sent}
}

// compare counts a request both planes served.
func (k *soak) compare(svc *soakService, r *request, sent time.Time, lanes [2]string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if k.stepBetween(sent.Add(-soakBound), now) || k.laneMoved(svc.name, sent.Add(-soakBound), now, lanes[0], lanes[1]) {
		return
	}
	k.report.Compared++
	if lanes[0] != lanes[1] {
		k.report.Disagreed++
		if k.report.firstDiffer == "" {
			k.report.firstDiffer = fmt.Sprintf("first disagreement: %s %s at %.1fs: gateway %s, mesh %s", svc.name, r.User, sent.Sub(k.start).Seconds(), lanes[0], lanes[1])
		}
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// errSoakGoals is returned by the soak command when a goal was missed.
var errSoakGoals = errors.New("soak: a goal was missed (see the table)")

// soakMain runs the soak for `make soak`.
func soakMain(ctx context.Context, out io.Writer, dir string, d time.Duration) error {
	rep, err := runSoak(ctx, out, dir, d)
	if rep != nil {
		rep.print(out)
	}
	if err != nil {
		return err
	}
	if !rep.ok() {
		return errSoakGoals
	}
	return nil
}
