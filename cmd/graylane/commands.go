package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"
	"unicode/utf8"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/explain"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

func outputFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringVarP(&o.output, "output", "o", "table", "output `format`: table or json")
}

func optionFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringVar(&o.tagKey, "tag-key", "", "`header` carrying the propagated lane tag (default: the service's option, else "+gray.DefaultTagKey+")")
	fs.StringVar(&o.stickyHeader, "sticky-header", "", "`header` holding the sticky key (default: the service's option)")
	fs.StringVar(&o.stickyCookie, "sticky-cookie", "", "`cookie` holding the sticky key (default: the service's option)")
	fs.StringVar(&o.fallback, "fallback", "", "where the base's traffic goes when the base has no registered instance: "+
		"weighted (lanes with a weight, never a test-only lane; the default), none, or any (every instance)")
}

func serviceOptionFlags(fs *pflag.FlagSet, o *opts) {
	optionFlags(fs, o)
	fs.BoolVar(&o.none, "clear", false, "remove the service's options (back to the defaults)")
	dryRunFlag(fs, o)
	outputFlags(fs, o)
}

func applyFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringVarP(&o.file, "file", "f", "", "spec `file` (YAML): one instance, a list, or several documents")
	fs.BoolVar(&o.resetGray, "reset-gray", false, "take the spec's gray meta even where a graylane change recorded other state")
	outputFlags(fs, o)
}

func statusFlags(fs *pflag.FlagSet, o *opts) {
	outputFlags(fs, o)
	optionFlags(fs, o)
}

func dryRunFlag(fs *pflag.FlagSet, o *opts) {
	fs.BoolVar(&o.dryRun, "dry-run", false, "show the change without applying it")
}

func forceFlag(fs *pflag.FlagSet, o *opts) {
	fs.BoolVar(&o.force, "force", false, "change a lane a rollout drives: the rollout is paused first")
}

func changeFlags(fs *pflag.FlagSet, o *opts) {
	dryRunFlag(fs, o)
	forceFlag(fs, o)
}

func matchFlags(fs *pflag.FlagSet, o *opts) {
	changeFlags(fs, o)
	fs.BoolVar(&o.none, "none", false, "remove the lane's match rules")
}

func drainFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringVar(&o.service, "service", "", "the instance's `service` (found in the catalog when empty)")
	fs.StringVar(&o.grace, "grace", "3s", "time for clients to see the drain before deregistering")
	fs.StringVar(&o.timeout, "timeout", "30s", "how long to wait for the catalog to show the drain")
	fs.BoolVar(&o.keep, "keep", false, "leave the drained instance registered")
	fs.StringVar(&o.untilIdle, "until-idle", "", "after weight 0, wait until the instance's own request rate has stayed at zero this long (Prometheus)")
	fs.StringVar(&o.idleTimeout, "idle-timeout", "5m", "with --until-idle: fail, and keep the instance, if it is not idle by then")
	fs.StringVar(&o.rollout.prometheus, "prometheus", "", "with --until-idle: Prometheus base `URL` (default $GRAYLANE_PROMETHEUS)")
	fs.StringVar(&o.idleQuery, "idle-query", drainIdleQuery, "with --until-idle: PromQL for the instance's request rate ({{.ID}}, {{.Service}}, {{.Address}}, {{.Port}})")
}

// drainIdleQuery is the instance's request rate from graylane's server metrics, scraped from the
// instance's own address (Prometheus' instance label).
const drainIdleQuery = `sum(rate(graylane_server_request_duration_seconds_count{service="{{.Service}}",instance="{{.Address}}:{{.Port}}"}[30s]))`

// waitIdle returns a DrainOptions.Idle that polls Prometheus until the instance's request rate has
// been zero for idleFor. No data counts as not idle: a query that finds nothing must not let a busy
// instance go.
func waitIdle(e *env, idleFor, timeout time.Duration) (func(context.Context, *registrar.Instance) error, error) {
	url := e.o.rollout.prometheus
	if url == "" {
		url = os.Getenv("GRAYLANE_PROMETHEUS")
	}
	if url == "" {
		return nil, &usageError{"--until-idle needs --prometheus or $GRAYLANE_PROMETHEUS"}
	}
	tmpl, err := template.New("idle").Option("missingkey=error").Parse(e.o.idleQuery)
	if err != nil {
		return nil, &usageError{"--idle-query: " + err.Error()}
	}
	prom := &rollout.Prometheus{URL: url}
	return func(ctx context.Context, inst *registrar.Instance) error {
		var q strings.Builder
		if err := tmpl.Execute(&q, inst); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "waiting until %s has served nothing for %v (%s)\n", inst.ID, idleFor, q.String())
		deadline := time.Now().Add(timeout)
		var idleSince time.Time
		last := "no data"
		for {
			v, ok, err := prom.Query(ctx, q.String())
			switch {
			case err != nil:
				last, idleSince = err.Error(), time.Time{}
			case !ok:
				last, idleSince = "Prometheus has no data for the query", time.Time{}
			case v > 0:
				last, idleSince = fmt.Sprintf("%.2f requests/s", v), time.Time{}
			case idleSince.IsZero():
				idleSince, last = time.Now(), "0 requests/s"
			}
			if !idleSince.IsZero() && time.Since(idleSince) >= idleFor {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s is not idle after %v (%s)", inst.ID, timeout, last)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}, nil
}

func explainFlags(fs *pflag.FlagSet, o *opts) {
	fs.StringArrayVarP(&o.headers, "header", "H", nil, "request `header`, 'Name: value' or name=value (repeatable)")
	fs.StringVar(&o.cookie, "cookie", "", "Cookie header ('a=1; b=2')")
	fs.StringVar(&o.path, "path", "/", "request path (for gRPC, /package.Service/Method)")
	fs.StringVar(&o.query, "query", "", "raw query string, without '?'")
	fs.StringVar(&o.method, "method", "GET", "request method")
	fs.StringVar(&o.ip, "ip", "", "client IP address")
	fs.StringVar(&o.lane, "lane", "", "propagated lane tag")
	fs.StringVar(&o.key, "key", "", "sticky key (a user ID, say)")
	outputFlags(fs, o)
	optionFlags(fs, o)
}

func (e *env) registrar() (*registrar.Registrar, error) {
	opts := []registrar.Option{registrar.WithKVPrefix(e.o.prefix)}
	if e.o.who != "" {
		opts = append(opts, registrar.WithOperator(e.o.who))
	}
	return registrar.New(registrar.NewConfig(e.o.consul), opts...)
}

// asJSON reports whether -o json was given (run has checked the value).
func (e *env) asJSON() bool { return e.o.output == "json" }

func (e *env) writeJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func (e *env) grayOptions() gray.Options {
	return gray.Options{TagKey: e.o.tagKey, StickyHeader: e.o.stickyHeader, StickyCookie: e.o.stickyCookie, Fallback: gray.Fallback(e.o.fallback)}
}

func runApply(ctx context.Context, e *env, _ []string) error {
	if e.o.file == "" {
		return &usageError{"-f spec.yaml is required"}
	}
	specs, err := registrar.LoadSpecs(e.o.file)
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	applied, err := r.Apply(ctx, specs, registrar.ApplyOptions{ResetGray: e.o.resetGray})
	if len(applied) == 0 && err != nil {
		return err
	}
	if e.asJSON() {
		type row struct {
			Service string            `json:"service"`
			ID      string            `json:"id"`
			Lane    string            `json:"lane"`
			Gray    map[string]string `json:"gray"`
			Kept    bool              `json:"kept_recorded_state"`
		}
		rows := []row{}
		for _, a := range applied {
			enc, _ := a.Gray.Encode()
			rows = append(rows, row{a.Service, a.ID, a.Gray.LaneName(), enc, a.Kept})
		}
		if jerr := e.writeJSON(rows); jerr != nil {
			return jerr
		}
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tLANE\tGRAY META\tNOTE")
	for _, a := range applied {
		note := ""
		if a.Kept {
			note = "kept state recorded by graylane (--reset-gray to take the spec's)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Service, a.ID, a.Gray.LaneName(), describe(a.Gray), note)
	}
	tw.Flush()
	return err
}

func runStatus(ctx context.Context, e *env, args []string) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	st, err := r.Status(ctx, args[0], e.grayOptions())
	if err != nil {
		return err
	}
	ro, err := rollout.New(r).Get(ctx, args[0])
	if errors.Is(err, rollout.ErrNoRollout) {
		ro, err = nil, nil
	}
	if err != nil {
		return err
	}
	if e.asJSON() {
		type lane struct {
			Name      string      `json:"name"`
			Base      bool        `json:"base"`
			Weight    string      `json:"weight"`
			Share     string      `json:"share"`
			Match     []gray.Rule `json:"match,omitempty"`
			Instances []string    `json:"instances"`
		}
		type instance struct {
			ID      string            `json:"id"`
			Address string            `json:"address"`
			Port    int               `json:"port"`
			Health  string            `json:"health"`
			Lane    string            `json:"lane"`
			Meta    map[string]string `json:"meta"`
			Error   string            `json:"error,omitempty"`
		}
		out := struct {
			Service   string            `json:"service"`
			Options   gray.Options      `json:"options"`
			Lanes     []lane            `json:"lanes"`
			Instances []instance        `json:"instances"`
			Problems  []string          `json:"problems"`
			Drift     []registrar.Drift `json:"drift"`
			Rollout   *rollout.State    `json:"rollout,omitempty"`
		}{Service: st.Service, Options: st.Options, Lanes: []lane{}, Instances: []instance{}, Problems: []string{}, Drift: []registrar.Drift{}, Rollout: ro}
		out.Drift = append(out.Drift, st.Drift...)
		for _, l := range st.Lanes {
			out.Lanes = append(out.Lanes, lane{l.Name, l.Base, l.Weight.String(), l.Share.String(), l.Match, l.Instances})
		}
		for _, inst := range st.Instances {
			i := instance{ID: inst.ID, Address: inst.Address, Port: inst.Port, Health: inst.Health, Lane: inst.Lane(), Meta: inst.Meta}
			if i.Meta == nil {
				i.Meta = map[string]string{}
			}
			if inst.GrayErr != nil {
				i.Error = oneLine(inst.GrayErr)
			}
			out.Instances = append(out.Instances, i)
		}
		for _, p := range st.Problems {
			out.Problems = append(out.Problems, oneLine(p))
		}
		if err := e.writeJSON(out); err != nil {
			return err
		}
		e.connectionWarnings(ctx, r, st.Problems)
		return nil
	}
	fmt.Fprintf(e.stdout, "service %s\noptions %s\n\n", st.Service, describeOptions(st.Options))
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LANE\tROLE\tWEIGHT\tSHARE\tINSTANCES\tMATCH")
	for _, l := range st.Lanes {
		role := "gray"
		if l.Base {
			role = "base"
		}
		match := "-"
		if len(l.Match) > 0 {
			match = truncate(gray.RulesJSON(l.Match), 80)
		}
		if len(l.Exclude) > 0 {
			match += "  excludes " + strings.Join(l.Exclude, ",")
		}
		if l.Closed {
			match += "  (closed: tagged requests only; see problems)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s%%\t%s%%\t%s\t%s\n", l.Name, role, l.Weight, l.Share, strings.Join(l.Instances, ","), match)
	}
	tw.Flush()
	fmt.Fprintln(e.stdout)
	tw = tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tADDRESS\tHEALTH\tLANE\tGRAY META")
	for _, inst := range st.Instances {
		lane, meta := inst.Lane(), describe(inst.Gray)
		if inst.GrayErr != nil {
			lane, meta = "(none)", "invalid: "+truncate(oneLine(inst.GrayErr), 60)
		}
		fmt.Fprintf(tw, "%s\t%s:%d\t%s\t%s\t%s\n", inst.ID, inst.Address, inst.Port, inst.Health, lane, meta)
	}
	tw.Flush()
	if len(st.Problems) > 0 {
		fmt.Fprintln(e.stdout, "\nproblems:")
		for _, p := range st.Problems {
			fmt.Fprintf(e.stdout, "  %s\n", oneLine(p))
		}
	}
	if ro != nil && !ro.Status.Done() {
		who, controlled, err := rollout.New(r).Controller(ctx, args[0])
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout)
		printRollout(e, ro, who, controlled)
	}
	if len(st.Drift) > 0 {
		fmt.Fprintln(e.stdout, "\ndrift (the instance's meta differs from the recorded state; graylane reconcile "+st.Service+" repairs it):")
		for _, d := range st.Drift {
			fmt.Fprintf(e.stdout, "  %s: recorded %s, instance has %s\n", d.Instance, describeMap(d.Recorded), describeMap(d.Actual))
		}
	}
	e.connectionWarnings(ctx, r, st.Problems)
	return nil
}

// truncate shortens s to at most n characters (not bytes), marking the cut with "...".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-3]) + "..."
}

func describeOptions(o gray.Options) string {
	var parts []string
	if o.StickyHeader != "" {
		parts = append(parts, "sticky header "+o.StickyHeader)
	}
	if o.StickyCookie != "" {
		parts = append(parts, "sticky cookie "+o.StickyCookie)
	}
	tag := o.TagKey
	if tag == "" {
		tag = gray.DefaultTagKey
	}
	parts = append(parts, "lane tag "+tag)
	if o.StickyHeader == "" && o.StickyCookie == "" {
		parts = append(parts, "no sticky key (weights pick at random per request)")
	}
	parts = append(parts, "fallback "+string(o.Fallback.OrDefault()))
	return strings.Join(parts, ", ")
}

// change plans an operation, prints it, and commits it unless --dry-run.
func change(ctx context.Context, e *env, service string, op registrar.Op) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	if err := yieldToRollout(ctx, e, r, service, opLane(op)); err != nil {
		return err
	}
	plan, err := r.Plan(ctx, service, op)
	if errors.Is(err, registrar.ErrUnchanged) {
		fmt.Fprintf(e.stdout, "%s on %s: nothing to change, nothing recorded\n", op, service)
		return nil
	}
	if err != nil {
		return err
	}
	if plan.Effect != "" {
		// Said before the change is made: what it does depends on the service.
		fmt.Fprintf(e.stdout, "%s on %s: %s\n", plan.Action, service, plan.Effect)
	}
	if e.o.dryRun {
		printPlan(e, plan, "would change")
		return nil
	}
	if _, err := r.Commit(ctx, plan); err != nil {
		var applyErr *registrar.ApplyError
		if errors.As(err, &applyErr) {
			printPlan(e, plan, "recorded, not applied:")
		}
		return err
	}
	printPlan(e, plan, "changed")
	return nil
}

// printPlan shows a plan's changes; verb says what became of them.
func printPlan(e *env, plan *registrar.Plan, verb string) {
	fmt.Fprintf(e.stdout, "%s on %s:\n", plan.Action, plan.Service)
	for _, c := range plan.Changes {
		fmt.Fprintf(e.stdout, "  %s %s: %s -> %s\n", verb, c.ID, describe(c.Before), describe(c.After))
		// The rules themselves, when they changed: "1 rule(s) -> 1 rule(s)" says nothing.
		if before, after := gray.RulesJSON(c.Before.Match), gray.RulesJSON(c.After.Match); before != after {
			fmt.Fprintf(e.stdout, "    match before: %s\n    match after:  %s\n", orNone(before), orNone(after))
		}
	}
	for _, n := range plan.Notes {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
}

func runWeight(ctx context.Context, e *env, args []string) error {
	w, err := gray.ParseWeight(strings.TrimSuffix(args[2], "%"))
	if err != nil {
		return &usageError{"PERCENT: " + err.Error()}
	}
	return change(ctx, e, args[0], registrar.SetWeight{Lane: args[1], Weight: w})
}

func runMatch(ctx context.Context, e *env, args []string) error {
	op := registrar.SetMatch{Lane: args[1]}
	switch {
	case e.o.none && len(args) > 2:
		return &usageError{"give RULES_JSON or --none, not both"}
	case !e.o.none && len(args) < 3:
		return &usageError{"expected RULES_JSON, or --none"}
	case !e.o.none:
		if t := strings.Join(strings.Fields(args[2]), ""); t == "[]" || t == "" || t == "null" {
			return &usageError{fmt.Sprintf("RULES_JSON %q holds no rule; to remove the lane's rules use --none", args[2])}
		}
		m, err := gray.ParseMeta(map[string]string{gray.KeyMatch: args[2]})
		if err != nil {
			return err
		}
		op.Match = m.Match
	}
	return change(ctx, e, args[0], op)
}

func runPromote(ctx context.Context, e *env, args []string) error {
	return change(ctx, e, args[0], registrar.Promote{Lane: args[1]})
}

func runRollback(ctx context.Context, e *env, args []string) error {
	return change(ctx, e, args[0], registrar.Rollback{Lane: args[1]})
}

func runDrain(ctx context.Context, e *env, args []string) error {
	grace, err := time.ParseDuration(e.o.grace)
	if err != nil {
		return &usageError{"--grace: " + err.Error()}
	}
	if grace < 0 {
		return &usageError{fmt.Sprintf("--grace %s: must not be negative (0 deregisters at once)", e.o.grace)}
	}
	timeout, err := time.ParseDuration(e.o.timeout)
	if err != nil {
		return &usageError{"--timeout: " + err.Error()}
	}
	if timeout <= 0 {
		return &usageError{fmt.Sprintf("--timeout %s: must be positive", e.o.timeout)}
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	start := time.Now()
	committed := func(res *registrar.Result) {
		fmt.Fprintf(e.stdout, "draining %s of %s: weight 0, no new traffic", args[0], res.Plan.Service)
		if !e.o.keep {
			fmt.Fprintf(e.stdout, "; deregistering after a %v grace period", grace)
		}
		fmt.Fprintln(e.stdout)
	}
	drain := registrar.DrainOptions{Service: e.o.service, Grace: grace, Timeout: timeout, Keep: e.o.keep, Committed: committed}
	if e.o.untilIdle != "" {
		idleFor, err1 := time.ParseDuration(e.o.untilIdle)
		idleTimeout, err2 := time.ParseDuration(e.o.idleTimeout)
		if err1 != nil || err2 != nil || idleFor <= 0 || idleTimeout <= 0 {
			return &usageError{fmt.Sprintf("--until-idle %q and --idle-timeout %q must be positive durations", e.o.untilIdle, e.o.idleTimeout)}
		}
		if drain.Idle, err = waitIdle(e, idleFor, idleTimeout); err != nil {
			return err
		}
	}
	res, err := r.Drain(ctx, args[0], drain)
	if err != nil {
		return err
	}
	what := "deregistered"
	if e.o.keep {
		what = "drained (still registered)"
	}
	fmt.Fprintf(e.stdout, "%s %s from %s in %v\n", what, args[0], res.Plan.Service, time.Since(start).Round(time.Millisecond))
	return nil
}

// readHistory reads a service's history: the readable entries, with the unreadable ones named on
// stderr.
func readHistory(ctx context.Context, e *env, r *registrar.Registrar, service string) ([]registrar.HistoryEntry, error) {
	hist, err := r.History(ctx, service)
	var bad *registrar.HistoryError
	if err != nil && !errors.As(err, &bad) {
		return nil, err
	}
	if bad != nil {
		fmt.Fprintf(e.stderr, "graylane: warning: %s\n", oneLine(bad))
	}
	return hist, nil
}

func runHistory(ctx context.Context, e *env, args []string) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	hist, err := readHistory(ctx, e, r, args[0])
	if err != nil {
		return err
	}
	if e.asJSON() {
		if hist == nil {
			hist = []registrar.HistoryEntry{}
		}
		return e.writeJSON(hist)
	}
	// One entry a block: its time, operator, action and outcome on a line, then what it changed,
	// an instance a line, so that no line grows with the number of columns.
	var b strings.Builder
	for _, h := range hist {
		outcome := h.Outcome
		if outcome == "" {
			outcome = "-"
		}
		fmt.Fprintf(&b, "%s  %s  %s  %s\n", h.Time.Local().Format(time.DateTime), truncate(h.Who, 24), truncate(h.Action, 72), truncate(outcome, 48))
		var rows [][3]string
		for _, id := range slices.Sorted(maps.Keys(h.Before)) {
			rows = append(rows, [3]string{id, describeMap(h.Before[id]), describeMap(h.After[id])})
		}
		if h.OptionsAfter != nil {
			before := gray.Options{}
			if h.OptionsBefore != nil {
				before = *h.OptionsBefore
			}
			rows = append(rows, [3]string{"(options)", describeOptions(before), describeOptions(*h.OptionsAfter)})
		}
		width := 0
		for _, r := range rows {
			width = max(width, min(utf8.RuneCountInString(r[0]), 40))
		}
		for _, r := range rows {
			fmt.Fprintf(&b, "    %-*s  %s -> %s\n", width, truncate(r[0], 40), truncate(r[1], 64), truncate(r[2], 64))
		}
		if h.Reason != "" {
			fmt.Fprintf(&b, "    why: %s\n", truncate(h.Reason, 160))
		}
	}
	return writeCut(e.stdout, b.String())
}

func runOptions(ctx context.Context, e *env, args []string) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	set := e.grayOptions()
	if !e.o.none && set == (gray.Options{}) {
		o, err := r.ServiceOptions(ctx, args[0])
		if err != nil {
			return err
		}
		if e.asJSON() {
			return e.writeJSON(o)
		}
		fmt.Fprintf(e.stdout, "%s: %s\n", args[0], describeOptions(o))
		return nil
	}
	if e.o.none && set != (gray.Options{}) {
		return &usageError{"give options or --clear, not both"}
	}
	if err := set.Validate(); err != nil {
		return &usageError{err.Error()}
	}
	if e.o.dryRun {
		fmt.Fprintf(e.stdout, "would set the options of %s: %s\n", args[0], describeOptions(set))
		return nil
	}
	if _, err := r.SetServiceOptions(ctx, args[0], set); errors.Is(err, registrar.ErrUnchanged) {
		fmt.Fprintf(e.stdout, "options of %s: nothing to change, nothing recorded\n", args[0])
		return nil
	} else if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "options of %s set: %s\nevery data plane that reads them (the Kratos selector, the APISIX plugin) follows within seconds\n", args[0], describeOptions(set))
	return nil
}

func runReconcile(ctx context.Context, e *env, args []string) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	if instances, _, err := r.Instances(ctx, args[0]); err != nil {
		return err
	} else if len(instances) == 0 {
		return fmt.Errorf("%w: service %s has no instances", registrar.ErrNotFound, args[0])
	}
	res, err := r.Reconcile(ctx, args[0])
	if res != nil {
		for _, id := range res.Rewritten {
			fmt.Fprintf(e.stdout, "rewrote %s with its recorded state\n", id)
		}
		if err == nil && len(res.Rewritten)+len(res.InSync)+len(res.Failed) == 0 {
			fmt.Fprintf(e.stdout, "%s: no instance has recorded gray state (graylane changed none of them): nothing to reconcile\n", args[0])
			return nil
		}
		if err == nil || len(res.Rewritten)+len(res.InSync)+len(res.Failed) > 0 {
			fmt.Fprintf(e.stdout, "%s: %d rewritten, %d in sync, %d failed\n", args[0], len(res.Rewritten), len(res.InSync), len(res.Failed))
		}
	}
	return err
}

func runExplain(ctx context.Context, e *env, args []string) error {
	headers, err := explain.ParseHeaders(e.o.headers)
	if err != nil {
		return &usageError{"-H: " + err.Error()}
	}
	in := explain.Input{Headers: headers, Cookie: e.o.cookie, Path: e.o.path, Query: e.o.query, Method: e.o.method,
		IP: e.o.ip, Lane: e.o.lane, Key: e.o.key, Override: e.grayOptions()}
	if e.o.ip != "" {
		if _, err := netip.ParseAddr(e.o.ip); err != nil {
			return &usageError{fmt.Sprintf("--ip %q is not an IP address", e.o.ip)}
		}
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	out, err := explain.Explain(ctx, r, args[0], in)
	if err != nil {
		return err
	}
	options := out.Options
	for i, p := range out.Problems {
		out.Problems[i] = oneLine(errors.New(p))
	}
	if e.asJSON() {
		return e.writeJSON(out)
	}
	lane := out.Lane
	switch {
	case lane == "" && len(out.Instances) == 0:
		lane = "(none: no instance with valid meta can serve; the data planes fail this request)"
	case lane == "":
		lane = "(none: the base has no registered instance; fallback " + string(options.Fallback.OrDefault()) + ")"
	}
	fmt.Fprintf(e.stdout, "lane       %s\n", lane)
	reason := out.Reason
	if out.Rule != nil {
		reason += fmt.Sprintf(" (rule %d)", *out.Rule)
	}
	switch {
	case out.ExcludedFrom != "":
		reason += fmt.Sprintf(": kept out of lane %s, whose exclude_segment %s holds the user", out.ExcludedFrom, out.Segment)
	case out.Segment != "":
		reason += fmt.Sprintf(": the value is in segment %s", out.Segment)
	}
	fmt.Fprintf(e.stdout, "reason     %s\n", reason)
	switch {
	case out.Bucket != nil:
		fmt.Fprintf(e.stdout, "bucket     %d of 10000 for key %q\n", *out.Bucket, e.o.key)
	case out.Random:
		fmt.Fprintf(e.stdout, "bucket     random: the request has no sticky key (%s), so the same request may land in another lane; give --key USER\n",
			stickyKeyName(options))
	}
	if out.Propagate {
		fmt.Fprintf(e.stdout, "propagate  %s: %s\n", options.TagKey, out.Lane)
	}
	fmt.Fprint(e.stdout, "instances ")
	for _, t := range out.Instances {
		fmt.Fprintf(e.stdout, " %s (%s:%d)", t.ID, t.Address, t.Port)
	}
	fmt.Fprintln(e.stdout)
	for _, p := range out.Problems {
		fmt.Fprintf(e.stdout, "problem    %s\n", p)
	}
	return nil
}

func describe(m gray.Meta) string {
	enc, _ := m.Encode()
	return describeMap(enc)
}

// describeMap is a short one-line form of gray meta keys.
func describeMap(meta map[string]string) string {
	if len(meta) == 0 {
		return "stable"
	}
	var parts []string
	for _, k := range []string{gray.KeyLane, gray.KeyCanary, gray.KeyBlueGreen, gray.KeyWeight, gray.KeyDrain} {
		if v, ok := meta[k]; ok {
			if k == gray.KeyWeight {
				v += "%"
			}
			parts = append(parts, k+"="+v)
		}
	}
	if _, ok := meta[gray.KeyMatch]; ok {
		m, err := gray.ParseMeta(meta)
		if err == nil {
			parts = append(parts, fmt.Sprintf("match=%d rule(s)", len(m.Match)))
		} else {
			parts = append(parts, "match=invalid")
		}
	}
	return strings.Join(parts, " ")
}

// stickyKeyName names where the data planes look for the sticky key.
func stickyKeyName(o gray.Options) string {
	switch {
	case o.StickyHeader != "" && o.StickyCookie != "":
		return "header " + o.StickyHeader + " or cookie " + o.StickyCookie
	case o.StickyHeader != "":
		return "header " + o.StickyHeader
	case o.StickyCookie != "":
		return "cookie " + o.StickyCookie
	}
	return "the service has none: graylane options --sticky-header sets one"
}

// orNone returns s, or "(none)" for the JSON of no rules.
func orNone(s string) string {
	if s == "" || s == "null" || s == "[]" {
		return "(none)"
	}
	return s
}

// writeCut writes text to w, each line cut to the terminal's width when w is a terminal. The
// whole history is in `-o json`.
func writeCut(w io.Writer, text string) error {
	width := 0
	if f, ok := w.(*os.File); ok {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil {
			width = cols
		}
	}
	if width <= 3 {
		_, err := io.WriteString(w, text)
		return err
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(text, "\n") {
		nl := strings.HasSuffix(line, "\n")
		line = strings.TrimSuffix(line, "\n")
		b.WriteString(truncate(line, width))
		if nl {
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// opLane returns the lane a change is made to.
func opLane(op registrar.Op) string {
	switch o := op.(type) {
	case registrar.SetWeight:
		return o.Lane
	case registrar.SetMatch:
		return o.Lane
	case registrar.Promote:
		return o.Lane
	case registrar.Rollback:
		return o.Lane
	}
	return ""
}

// yieldToRollout refuses a change to a lane a rollout drives, which the rollout's next step would
// undo, unless --force: then the rollout is paused first and the command says so.
func yieldToRollout(ctx context.Context, e *env, r *registrar.Registrar, service, lane string) error {
	x := rollout.New(r)
	st, err := x.Get(ctx, service)
	if errors.Is(err, rollout.ErrNoRollout) || (err == nil && (st.Status.Done() || st.Plan.Lane != lane)) {
		return nil
	}
	if err != nil {
		return err
	}
	if !e.o.force {
		return fmt.Errorf("lane %s of %s is driven by a rollout (%s, %s): its next step would undo this change; "+
			"use graylane rollout pause|abort|promote-now %s, or give --force, which pauses the rollout first", lane, service, st.StepName(), st.Status, service)
	}
	if e.o.dryRun || st.Status != rollout.StatusRunning {
		return nil
	}
	if _, err := x.Pause(ctx, service); err != nil {
		return fmt.Errorf("--force: pausing the rollout of %s: %w", service, err)
	}
	fmt.Fprintf(e.stdout, "paused the rollout of %s at %s (--force); graylane rollout resume %s goes on from there\n", service, st.StepName(), service)
	return nil
}

func undoFlags(fs *pflag.FlagSet, o *opts) {
	changeFlags(fs, o)
	fs.StringVar(&o.undoTo, "to", "", "the change to undo, by its `time` as graylane history shows it (default: the last change)")
}

// runUndo undoes a recorded change: a new change, with check-and-set and a history entry, that puts
// the instances it touched back as they were before it.
func runUndo(ctx context.Context, e *env, args []string) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	hist, err := readHistory(ctx, e, r, args[0])
	if err != nil {
		return err
	}
	var target *registrar.HistoryEntry
	for i := len(hist) - 1; i >= 0 && target == nil; i-- {
		h := &hist[i]
		switch {
		case e.o.undoTo == "" && len(h.Before) > 0:
			target = h
		case e.o.undoTo != "" && (h.Time.Local().Format(time.DateTime) == e.o.undoTo || h.Time.UTC().Format(time.RFC3339) == e.o.undoTo):
			target = h
		}
	}
	if target == nil {
		if e.o.undoTo != "" {
			return fmt.Errorf("%w: %s has no change at %s (graylane history %s lists them)", registrar.ErrNotFound, args[0], e.o.undoTo, args[0])
		}
		return fmt.Errorf("%w: %s has no recorded change to undo", registrar.ErrNotFound, args[0])
	}
	op, err := registrar.UndoOf(*target)
	if err != nil {
		return err
	}
	for _, m := range op.Meta {
		if err := yieldToRollout(ctx, e, r, args[0], m.LaneName()); err != nil {
			return err
		}
	}
	return change(ctx, e, args[0], op)
}
