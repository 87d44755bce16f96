package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/rollout"
)

// rolloutOpts holds the flags of graylane rollout.
type rolloutOpts struct {
	noWait, detach, wait           bool
	notifyTest                     bool
	listen                         string
	prometheus, steps, window      string
	interval, maxP99               string
	maxErrors, maxErrorsVsBaseline float64
	maxP99VsBaseline, minRequests  float64
	baseline                       string
}

func rolloutFlags(fs *flag.FlagSet, o *opts) {
	fs.StringVar(&o.file, "f", "", "rollout plan (YAML); flags below override its fields")
	r := &o.rollout
	fs.BoolVar(&r.notifyTest, "notify-test", false, "lint: post a test event to each of the plan's notifications")
	fs.BoolVar(&r.wait, "wait", false, "start: follow the rollout here until it ends, driving it when no controller does")
	fs.BoolVar(&r.noWait, "no-wait", false, "start --wait: exit when another controller drives the rollout, instead of following it")
	fs.BoolVar(&r.detach, "detach", false, "start: record the rollout and return (the default; kept for scripts)")
	fs.StringVar(&r.listen, "listen", "127.0.0.1:9466", "controller: address of its /metrics and /healthz")
	fs.StringVar(&r.prometheus, "prometheus", "", "Prometheus base URL the gates query (default $GRAYLANE_PROMETHEUS)")
	fs.StringVar(&r.steps, "steps", "", "steps as WEIGHT:HOLD or pause (a manual approval), comma-separated (0:10m,5:10m,pause,25:10m,100:10m)")
	fs.StringVar(&r.window, "window", "", "range the gates read, as a duration (default 1m)")
	fs.StringVar(&r.interval, "interval", "", "how often the gates are read (default 10s)")
	fs.Float64Var(&r.maxErrors, "max-error-ratio", 0, "gate: the lane's error ratio at most this (0.01 is 1%)")
	fs.Float64Var(&r.maxErrorsVsBaseline, "max-error-ratio-vs-baseline", 0, "gate: the lane's error ratio at most this many times the baseline's")
	fs.StringVar(&r.maxP99, "max-p99", "", "gate: the lane's p99 latency at most this (500ms)")
	fs.Float64Var(&r.maxP99VsBaseline, "max-p99-vs-baseline", 0, "gate: the lane's p99 at most this many times the baseline's")
	fs.Float64Var(&r.minRequests, "min-requests", 0, "requests the lane must serve within the window before the gates count")
	fs.StringVar(&r.baseline, "baseline", "", "the lane the gates compare with (default stable)")
	outputFlags(fs, o)
}

// runRollout dispatches graylane rollout ACTION SERVICE [LANE].
func runRollout(ctx context.Context, e *env, args []string) error {
	action := args[0]
	if action == "controller" {
		if len(args) > 1 {
			return &usageError{"rollout controller takes no service: it drives every rollout"}
		}
		return runRolloutController(ctx, e)
	}
	if len(args) < 2 {
		return &usageError{fmt.Sprintf("rollout %s needs a SERVICE", action)}
	}
	service, lane := args[1], ""
	if len(args) > 2 {
		lane = args[2]
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	var outMu sync.Mutex
	x := rollout.New(r).WithNotified(func(kind string, n *rollout.Notification, err error) {
		if err != nil {
			outMu.Lock()
			fmt.Fprintf(e.stderr, "graylane: %v\n", err)
			outMu.Unlock()
		}
	})
	checkLane := func(st *rollout.State) error {
		if lane != "" && st.Plan.Lane != lane {
			return fmt.Errorf("the rollout of %s is of lane %s, not %s", service, st.Plan.Lane, lane)
		}
		return nil
	}
	switch action {
	case "start":
		return rolloutStart(ctx, e, x, service, lane)
	case "lint":
		return rolloutLint(ctx, e, service, lane)
	case "status":
		st, err := x.Get(ctx, service)
		if err != nil {
			return err
		}
		if err := checkLane(st); err != nil {
			return err
		}
		who, running, err := x.Controller(ctx, service)
		if err != nil {
			return err
		}
		if e.asJSON() {
			return e.writeJSON(struct {
				*rollout.State
				TimeLeft   string `json:"time_left"`
				Controlled bool   `json:"controlled"`
			}{st.Redacted(), st.TimeLeft(time.Now()).Round(time.Second).String(), running})
		}
		printRollout(e, st, who, running)
		return nil
	case "pause", "resume", "abort", "promote-now":
		if st, err := x.Get(ctx, service); err != nil {
			return err
		} else if err := checkLane(st); err != nil {
			return err
		}
		do := map[string]func(context.Context, string) (*rollout.State, error){
			"pause": x.Pause, "resume": x.Resume, "abort": x.Abort, "promote-now": x.PromoteNow}[action]
		st, err := do(ctx, service)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "rollout of %s lane %s: %s (%s)\n", service, st.Plan.Lane, st.Status, st.Message)
		return nil
	}
	return &usageError{fmt.Sprintf("rollout action %q: use start, status, pause, resume, abort, promote-now, lint or controller", action)}
}

func rolloutStart(ctx context.Context, e *env, x *rollout.Rollouts, service, lane string) error {
	plan, err := rolloutPlan(e, service, lane)
	if err != nil {
		return err
	}
	st, err := x.Start(ctx, plan)
	switch {
	case errors.Is(err, rollout.ErrRunning) && st != nil && st.Plan.Lane == plan.Lane && !samePlan(&st.Plan, plan):
		return fmt.Errorf("a rollout of %s lane %s is under way with another plan (%s): graylane rollout abort %s and start again "+
			"for the new plan, or run start with the recorded one to resume it", service, lane, planDifference(&st.Plan, plan), service)
	case errors.Is(err, rollout.ErrRunning) && st != nil && st.Plan.Lane == plan.Lane:
		// A rollout of this lane is under way: follow it (--wait) from where it is.
		fmt.Fprintf(e.stdout, "resuming the rollout of %s lane %s at %s, %s left in the step\n",
			service, st.Plan.Lane, st.StepName(), st.TimeLeft(time.Now()).Round(time.Second))
	case err != nil:
		return err
	default:
		fmt.Fprintf(e.stdout, "rollout of %s lane %s started: %d steps\n", service, plan.Lane, len(plan.Steps))
	}
	if !e.o.rollout.wait {
		who, leads, err := x.ControllerRunning(ctx)
		switch {
		case err != nil:
			return err
		case leads:
			fmt.Fprintf(e.stdout, "the rollout controller %s drives it: graylane rollout status %s follows it\n", who, service)
		default:
			fmt.Fprintf(e.stdout, "no rollout controller runs in this datacenter: nothing drives this rollout until one does "+
				"(graylane rollout controller), or follow and drive it here with graylane rollout start %s %s --wait\n", service, plan.Lane)
		}
		return nil
	}
	return rolloutFollow(ctx, e, x, service)
}

// rolloutLint checks a plan without starting it: its fields, every query against Prometheus with
// the plan's labels filled in, and (--notify-test) each notification with a test event.
func rolloutLint(ctx context.Context, e *env, service, lane string) error {
	plan, err := rolloutPlan(e, service, lane)
	if err != nil {
		return err
	}
	if err := plan.CheckQueries(ctx, &rollout.Prometheus{URL: plan.Prometheus}); err != nil {
		return err
	}
	var steps []string
	for _, s := range plan.Steps {
		if s.Pause != nil {
			steps = append(steps, "pause")
			continue
		}
		steps = append(steps, s.Weight.String()+"%/"+s.Hold.String())
	}
	fmt.Fprintf(e.stdout, "plan for %s lane %s: %d steps (%s)\n", plan.Service, plan.Lane, len(plan.Steps), strings.Join(steps, " "))
	fmt.Fprintf(e.stdout, "queries: every one answered by %s for lanes %s and %s\n", plan.Prometheus, plan.Lane, plan.Baseline)
	failed := 0
	for i := range plan.Notify {
		n := &plan.Notify[i]
		format := cmp.Or(n.Format, rollout.FormatWebhook)
		if !e.o.rollout.notifyTest {
			fmt.Fprintf(e.stdout, "notify: %s (%s)\n", format, plan.NotifyAddress(i))
			continue
		}
		ev := rollout.Event{Kind: "test", Service: plan.Service, Lane: plan.Lane, Status: rollout.StatusRunning, Step: 1,
			Steps: len(plan.Steps), Weight: plan.Steps[0].Weight.String(), Message: "a test from graylane rollout lint", Time: time.Now().UTC()}
		if err := n.Post(ctx, nil, ev); err != nil {
			fmt.Fprintf(e.stdout, "notify: %v\n", err)
			failed++
			continue
		}
		fmt.Fprintf(e.stdout, "notify: %s (%s): test event delivered\n", format, plan.NotifyAddress(i))
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d notifications failed their test", failed, len(plan.Notify))
	}
	return nil
}

// rolloutFollow prints a rollout's events until it ends: it drives the rollout itself while no
// controller does, and follows the state while one does (taking over if that one stops).
func rolloutFollow(ctx context.Context, e *env, x *rollout.Rollouts, service string) error {
	var outMu sync.Mutex
	say := func(text string) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(e.stdout, "%s  %s\n", time.Now().Format(time.TimeOnly), text)
	}
	last := ""
	var index uint64
	for {
		f, err := x.Follow(ctx, service, index)
		if err != nil {
			return err
		}
		index = f.Index
		if f.State.Status.Done() {
			if f.State.Message != last {
				say(f.State.Message)
			}
			return rolloutEnded(e, f.State)
		}
		if f.Held {
			if e.o.rollout.noWait {
				return fmt.Errorf("%w of %s: %s drives it (--no-wait)", rollout.ErrLocked, service, f.Controller)
			}
			if last == "" {
				say("following: " + f.Controller + " drives the rollout")
			}
			if f.State.Message != last {
				say(f.State.Message)
				last = f.State.Message
			}
			continue
		}
		final, err := x.Run(ctx, service, rollout.RunOptions{NoWait: true,
			Events: func(_ *rollout.State, event string) { say(event) },
			Notified: func(kind string, n *rollout.Notification, err error) {
				if err != nil {
					say(err.Error())
				}
			}})
		if errors.Is(err, rollout.ErrLocked) && ctx.Err() == nil {
			index = 0
			continue // a controller took it meanwhile: follow it
		}
		if final != nil && (err == nil || errors.Is(err, rollout.ErrRolledBack)) {
			fmt.Fprintf(e.stdout, "rollout of %s lane %s: %s\n", service, final.Plan.Lane, final.Status)
		}
		return err
	}
}

func rolloutEnded(e *env, st *rollout.State) error {
	fmt.Fprintf(e.stdout, "rollout of %s lane %s: %s\n", st.Plan.Service, st.Plan.Lane, st.Status)
	if st.Status == rollout.StatusRolledBack {
		return fmt.Errorf("%w: %s", rollout.ErrRolledBack, st.Message)
	}
	return nil
}

// runRolloutController runs graylane rollout controller: the rollout controller as a service, with
// its metrics on --listen, until interrupted.
func runRolloutController(ctx context.Context, e *env) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	var outMu sync.Mutex
	logf := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(e.stdout, "%s  %s\n", time.Now().Format(time.DateTime), fmt.Sprintf(format, args...))
	}
	c := rollout.NewController(rollout.New(r), rollout.ControllerOptions{Logf: logf})
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		role := "standby"
		if c.Leading() {
			role = "leader"
		}
		fmt.Fprintln(w, "ok", role)
	})
	ln, err := net.Listen("tcp", e.o.rollout.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", e.o.rollout.listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logf("rollout controller: metrics on http://%s/metrics", ln.Addr())
	err = c.Run(ctx)
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	<-served
	logf("rollout controller: stopped")
	return err
}

// rolloutPlan reads -f and lays the flags over it; SERVICE and LANE come from the arguments.
func rolloutPlan(e *env, service, lane string) (*rollout.Plan, error) {
	var text []byte
	if e.o.file != "" {
		var err error
		if text, err = os.ReadFile(e.o.file); err != nil {
			return nil, err
		}
	}
	plan, err := rollout.DecodePlan(text)
	if err != nil {
		return nil, err
	}
	o := e.o.rollout
	if o.steps != "" {
		plan.Steps = nil
		for _, s := range strings.Split(o.steps, ",") {
			if strings.TrimSpace(s) == "pause" {
				plan.Steps = append(plan.Steps, rollout.Step{Pause: &rollout.Approval{}})
				continue
			}
			w, hold, ok := strings.Cut(strings.TrimSpace(s), ":")
			weight, werr := gray.ParseWeight(strings.TrimSuffix(w, "%"))
			d, derr := time.ParseDuration(hold)
			if !ok || werr != nil || derr != nil || d < 0 {
				return nil, &usageError{fmt.Sprintf("--steps: %q: write WEIGHT:HOLD, such as 5:10m, or pause", s)}
			}
			plan.Steps = append(plan.Steps, rollout.Step{Weight: rollout.Percent(weight), Hold: rollout.Duration(d)})
		}
	}
	if plan.Service != "" && plan.Service != service {
		return nil, &usageError{fmt.Sprintf("the plan is for service %s, not %s", plan.Service, service)}
	}
	plan.Service = service
	if lane != "" {
		plan.Lane = lane
	}
	if o.prometheus == "" {
		o.prometheus = os.Getenv("GRAYLANE_PROMETHEUS")
	}
	for _, f := range []struct {
		value string
		into  *string
	}{{o.prometheus, &plan.Prometheus}, {o.baseline, &plan.Baseline}} {
		if f.value != "" {
			*f.into = f.value
		}
	}
	for _, f := range []struct {
		name, value string
		into        *rollout.Duration
	}{{"window", o.window, &plan.Gates.Window}, {"interval", o.interval, &plan.Interval}, {"max-p99", o.maxP99, &plan.Gates.LatencyP99.Max}} {
		if f.value == "" {
			continue
		}
		d, err := time.ParseDuration(f.value)
		if err != nil || d < 0 {
			return nil, &usageError{fmt.Sprintf("--%s %q is not a duration", f.name, f.value)}
		}
		*f.into = rollout.Duration(d)
	}
	for _, f := range []struct {
		value float64
		into  *float64
	}{{o.maxErrors, &plan.Gates.ErrorRatio.Max}, {o.maxErrorsVsBaseline, &plan.Gates.ErrorRatio.MaxVsBaseline},
		{o.maxP99VsBaseline, &plan.Gates.LatencyP99.MaxVsBaseline}, {o.minRequests, &plan.Gates.MinRequests}} {
		if f.value != 0 {
			*f.into = f.value
		}
	}
	if err := plan.Validate(); err != nil {
		return nil, err
	}
	return plan, nil
}

// printRollout shows a rollout: status, step, time left, last gate readings.
func printRollout(e *env, st *rollout.State, controller string, controlled bool) {
	fmt.Fprintf(e.stdout, "rollout   %s lane %s: %s\n", st.Plan.Service, st.Plan.Lane, st.Status)
	if !st.Status.Done() {
		fmt.Fprintf(e.stdout, "step      %s, %s left\n", st.StepName(), st.TimeLeft(time.Now()).Round(time.Second))
		if controlled {
			fmt.Fprintf(e.stdout, "controller %s\n", controller)
		} else {
			fmt.Fprintf(e.stdout, "controller none: run graylane rollout controller, or graylane rollout start %s %s --wait to drive it\n", st.Plan.Service, st.Plan.Lane)
		}
	}
	var steps []string
	for i, s := range st.Plan.Steps {
		mark := " "
		if i == st.Step && !st.Status.Done() {
			mark = ">"
		}
		steps = append(steps, mark+s.Weight.String()+"%/"+s.Hold.String())
	}
	fmt.Fprintf(e.stdout, "plan      %s\n", strings.Join(steps, " "))
	if st.Readings != nil {
		fmt.Fprintf(e.stdout, "gates     %s (read %s ago)\n", st.Readings, time.Since(st.Readings.Time).Round(time.Second))
	}
	if st.Verdict != "" {
		fmt.Fprintf(e.stdout, "verdict   %s\n", st.Verdict)
	}
	fmt.Fprintf(e.stdout, "last      %s\n", st.Message)
}

// samePlan reports whether two plans say the same.
func samePlan(a, b *rollout.Plan) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// planDifference names what differs between the recorded plan and the one given.
func planDifference(recorded, given *rollout.Plan) string {
	var out []string
	field := func(name string, a, b any) {
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			out = append(out, fmt.Sprintf("%s %s recorded, %s given", name, ja, jb))
		}
	}
	field("prometheus", recorded.Prometheus, given.Prometheus)
	field("baseline", recorded.Baseline, given.Baseline)
	field("interval", recorded.Interval, given.Interval)
	field("steps", recorded.Steps, given.Steps)
	field("gates", recorded.Gates, given.Gates)
	field("queries", recorded.Queries, given.Queries)
	field("limits", []any{recorded.FailureLimit, recorded.UnknownLimit, recorded.OnUnknown}, []any{given.FailureLimit, given.UnknownLimit, given.OnUnknown})
	if len(out) == 0 {
		return "it differs"
	}
	return strings.Join(out, "; ")
}
