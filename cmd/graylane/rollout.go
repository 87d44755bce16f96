package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

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

// planFlags are the flags that state a plan, or override the fields of the one -f reads.
func planFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringVarP(&o.file, "file", "f", "", "rollout plan `file` (YAML); the flags below override its fields")
	r := &o.rollout
	fs.StringVar(&r.prometheus, "prometheus", "", "Prometheus base `URL` the gates query (default $GRAYLANE_PROMETHEUS)")
	fs.StringVar(&r.steps, "steps", "", "`steps` as WEIGHT:HOLD or pause (a manual approval), comma-separated (0:10m,5:10m,pause,25:10m,100:10m)")
	fs.StringVar(&r.window, "window", "", "range the gates read, as a `duration` (default 1m)")
	fs.StringVar(&r.interval, "interval", "", "how often the gates are read, as a `duration` (default 10s)")
	fs.Float64Var(&r.maxErrors, "max-error-ratio", 0, "gate: the lane's error ratio at most this (0.01 is 1%)")
	fs.Float64Var(&r.maxErrorsVsBaseline, "max-error-ratio-vs-baseline", 0, "gate: the lane's error ratio at most this many times the baseline's")
	fs.StringVar(&r.maxP99, "max-p99", "", "gate: the lane's p99 latency at most this `duration` (500ms)")
	fs.Float64Var(&r.maxP99VsBaseline, "max-p99-vs-baseline", 0, "gate: the lane's p99 at most this many times the baseline's")
	fs.Float64Var(&r.minRequests, "min-requests", 0, "requests the lane must serve within the window before the gates count")
	fs.StringVar(&r.baseline, "baseline", "", "the `lane` the gates compare with (default stable)")
}

func startFlags(fs *pflag.FlagSet, o *opts) {
	planFlags(fs, o)
	followFlags(fs, o)
}

// followFlags say whether start follows the rollout.
func followFlags(fs *pflag.FlagSet, o *opts) {
	r := &o.rollout
	fs.BoolVar(&r.wait, "wait", false, "follow the rollout here until it ends, driving it when no controller does")
	fs.BoolVar(&r.noWait, "no-wait", false, "with --wait: exit when another controller drives the rollout, instead of following it")
	fs.BoolVar(&r.detach, "detach", false, "record the rollout and return (the default; kept for scripts)")
}

func lintFlags(fs *pflag.FlagSet, o *opts) {
	planFlags(fs, o)
	notifyTestFlag(fs, o)
}

func notifyTestFlag(fs *pflag.FlagSet, o *opts) {
	fs.BoolVar(&o.rollout.notifyTest, "notify-test", false, "post a test event to each of the plan's notifications")
}

func controllerFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringVar(&o.rollout.listen, "listen", "127.0.0.1:9466", "`address` of its /metrics and /healthz")
}

// rolloutFlags are the flags every rollout action took when graylane rollout was one command.
func rolloutFlags(fs *pflag.FlagSet, o *opts) {
	planFlags(fs, o)
	followFlags(fs, o)
	notifyTestFlag(fs, o)
	controllerFlags(fs, o)
	outputFlags(fs, o)
}

// rolloutCommand is graylane rollout and its actions.
func rolloutCommand() *command {
	act := func(name, summary string) *command {
		return &command{name: name, args: "SERVICE [LANE]", nargs: 1, maxargs: 2, summary: summary, compat: rolloutFlags, uses: changesState,
			run:     func(ctx context.Context, e *env, args []string) error { return runRolloutAction(ctx, e, name, args) },
			example: "  graylane rollout " + name + " bservice\n  graylane rollout " + name + " bservice canary"}
	}
	c := &command{name: "rollout", summary: "walk a lane through a plan's steps, gated on measured errors and latency; controller drives every rollout",
		group: groupAuto, maxargs: -1, compat: rolloutFlags,
		example: `  graylane rollout lint bservice canary -f examples/rollout/bservice-plan.yaml   # check it, queries included
  graylane rollout start bservice canary -f examples/rollout/bservice-plan.yaml  # record it; the controller drives it
  graylane rollout status bservice          # step, time left, last gate readings, controller
  graylane rollout pause bservice
  graylane rollout controller               # the controller as a service: every rollout, /metrics`,
		subs: []*command{
			{name: "start", args: "SERVICE [LANE]", nargs: 1, maxargs: 2, summary: "record a rollout of a lane, which the rollout controller drives (--wait: follow and drive it here)",
				flags: startFlags, compat: rolloutFlags, uses: changesState, run: runRolloutStart,
				example: `  graylane rollout start bservice canary -f examples/rollout/bservice-plan.yaml
  graylane rollout start bservice canary -f examples/rollout/bservice-plan.yaml --wait
  graylane rollout start bservice canary --steps 0:10m,5:10m,25:10m --max-error-ratio 0.01 --max-p99 500ms --prometheus http://127.0.0.1:9090`},
			{name: "lint", args: "SERVICE [LANE]", nargs: 1, maxargs: 2, summary: "check a plan without starting it: its fields, and every query against Prometheus",
				flags: lintFlags, compat: rolloutFlags, run: runRolloutLint,
				example: `  graylane rollout lint bservice canary -f examples/rollout/bservice-plan.yaml
  graylane rollout lint bservice canary -f examples/rollout/bservice-plan.yaml --notify-test`},
			{name: "status", args: "SERVICE [LANE]", nargs: 1, maxargs: 2, summary: "a rollout's status, step, time left, last gate readings and controller",
				flags: outputFlags, compat: rolloutFlags, uses: readsState, run: runRolloutStatus,
				example: `  graylane rollout status bservice
  graylane rollout status bservice canary -o json`},
			act("pause", "hold a rollout at its step until resume"),
			act("resume", "go on with a paused rollout from its step"),
			act("abort", "end a rollout and roll its lane back (weight 0)"),
			act("promote-now", "end a rollout and promote its lane at once"),
			{name: "controller", summary: "the rollout controller as a long-lived service: it drives every rollout of the datacenter, with /metrics",
				maxargs: -1, flags: controllerFlags, compat: rolloutFlags, uses: changesState, run: runRolloutController,
				example: `  graylane rollout controller
  graylane rollout controller --listen :9466 --who rollout-controller-1`},
		},
	}
	c.run = func(_ context.Context, _ *env, args []string) error {
		if len(args) == 0 {
			return &usageError{"expected an action: " + c.actions()}
		}
		return &usageError{fmt.Sprintf("rollout action %q: use %s", args[0], c.actions())}
	}
	return c
}

// rollouts returns the rollouts of the registrar, reporting failed notifications on stderr.
func rollouts(e *env) (*rollout.Rollouts, error) {
	r, err := e.registrar()
	if err != nil {
		return nil, err
	}
	var outMu sync.Mutex
	return rollout.New(r).WithNotified(func(kind string, n *rollout.Notification, err error) {
		if err != nil {
			outMu.Lock()
			fmt.Fprintf(e.stderr, "graylane: %v\n", err)
			outMu.Unlock()
		}
	}), nil
}

// serviceLane returns the SERVICE and the optional LANE of a rollout action.
func serviceLane(args []string) (service, lane string) {
	if len(args) > 1 {
		lane = args[1]
	}
	return args[0], lane
}

// checkLane refuses a rollout that is not of lane, when a LANE was given.
func checkLane(st *rollout.State, service, lane string) error {
	if lane != "" && st.Plan.Lane != lane {
		return fmt.Errorf("the rollout of %s is of lane %s, not %s", service, st.Plan.Lane, lane)
	}
	return nil
}

func runRolloutStatus(ctx context.Context, e *env, args []string) error {
	service, lane := serviceLane(args)
	x, err := rollouts(e)
	if err != nil {
		return err
	}
	st, err := x.Get(ctx, service)
	if err != nil {
		return err
	}
	if err := checkLane(st, service, lane); err != nil {
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
}

// runRolloutAction runs pause, resume, abort or promote-now.
func runRolloutAction(ctx context.Context, e *env, action string, args []string) error {
	service, lane := serviceLane(args)
	x, err := rollouts(e)
	if err != nil {
		return err
	}
	if st, err := x.Get(ctx, service); err != nil {
		return err
	} else if err := checkLane(st, service, lane); err != nil {
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

func runRolloutStart(ctx context.Context, e *env, args []string) error {
	service, lane := serviceLane(args)
	plan, err := rolloutPlan(e, service, lane)
	if err != nil {
		return err
	}
	x, err := rollouts(e)
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

// runRolloutLint checks a plan without starting it: its fields, every query against Prometheus with
// the plan's labels filled in, and (--notify-test) each notification with a test event.
func runRolloutLint(ctx context.Context, e *env, args []string) error {
	service, lane := serviceLane(args)
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
func runRolloutController(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return &usageError{"rollout controller takes no service: it drives every rollout"}
	}
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
