// Command release runs a whole gray release on a real, throwaway Consul agent: it registers bservice
// (two stable instances and the source article's canary), then walks the canary from test traffic
// only to 5 %, 25 % and promotion, drains an old instance, and switches a blue/green service over and
// back. After each step it routes 10,000 simulated users through the snapshot a data plane would hold
// (registrar.Watcher) and prints where they went, with the time the change took to reach it.
//
// It needs the consul binary that `make consul` builds (or $GRAYLANE_CONSUL, or consul on PATH).
package main

import (
	"context"
	_ "embed"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

//go:embed bservice.yaml
var bserviceSpec []byte

//go:embed pay.yaml
var paySpec []byte

// options are the data planes' settings: the sticky key is the x-user-id header.
var options = gray.Options{StickyHeader: "x-user-id"}

const users = 10000

// out is where the demo writes; tests replace it.
var out io.Writer = os.Stdout

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx := context.Background()
	agent, err := consultest.StartAgent()
	if err != nil {
		return err
	}
	defer agent.Stop()
	fmt.Fprintf(out, "Consul dev agent on %s\n", agent.HTTPAddr)

	cfg := registrar.NewConfig(agent.HTTPAddr)
	r, err := registrar.New(cfg, registrar.WithOperator("demo"))
	if err != nil {
		return err
	}
	w, err := registrar.NewWatcher(cfg, registrar.WithSnapshotOptions(options))
	if err != nil {
		return err
	}
	defer w.Close()

	step("Register bservice from a spec (the article's canary: test traffic, then a weight)")
	if err := register(ctx, r, "bservice.yaml", bserviceSpec); err != nil {
		return err
	}
	view := w.Service("bservice")
	<-view.Ready()
	traffic(view)

	for _, change := range []registrar.Op{
		registrar.Rollback{Lane: "canary"},
		registrar.SetWeight{Lane: "canary", Weight: 500},
		registrar.SetWeight{Lane: "canary", Weight: 2500},
		registrar.Promote{Lane: "canary"},
	} {
		step(change.String())
		if err := apply(ctx, r, view, "bservice", change); err != nil {
			return err
		}
	}

	step("drain bservice-1 (weight 0, no new traffic, grace, deregister)")
	start := time.Now()
	if _, err := r.Drain(ctx, "bservice-1", registrar.DrainOptions{Grace: 500 * time.Millisecond}); err != nil {
		return err
	}
	fmt.Fprintf(out, "drained and deregistered in %v\n", time.Since(start).Round(time.Millisecond))
	traffic(view)

	step("Blue/green: pay runs on blue, green is deployed for testers")
	if err := register(ctx, r, "pay.yaml", paySpec); err != nil {
		return err
	}
	pay := w.Service("pay")
	<-pay.Ready()
	traffic(pay)
	for _, change := range []registrar.Op{registrar.Promote{Lane: "green"}, registrar.Rollback{Lane: "green"}} {
		step(change.String() + " on pay")
		if err := apply(ctx, r, pay, "pay", change); err != nil {
			return err
		}
	}

	step("History of bservice")
	hist, err := r.History(ctx, "bservice")
	if err != nil {
		return err
	}
	for _, h := range hist {
		fmt.Fprintf(out, "%s  %-5s %s\n", h.Time.Format("15:04:05.000"), h.Who, h.Action)
	}
	return nil
}

// register applies a spec file.
func register(ctx context.Context, r *registrar.Registrar, name string, spec []byte) error {
	specs, err := registrar.ParseSpecs(name, spec)
	if err != nil {
		return err
	}
	_, err = r.Apply(ctx, specs, registrar.ApplyOptions{})
	return err
}

// apply commits a change and waits for the watcher to publish it.
func apply(ctx context.Context, r *registrar.Registrar, view *registrar.ServiceView, service string, op registrar.Op) error {
	changed := view.Changed()
	start := time.Now()
	res, err := r.Do(ctx, service, op)
	if err != nil {
		return err
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s: the watcher did not see the change", op)
	}
	fmt.Fprintf(out, "committed and seen by the watcher in %v", time.Since(start).Round(10*time.Microsecond))
	if len(res.Plan.Notes) > 0 {
		fmt.Fprintf(out, " (%s)", strings.Join(res.Plan.Notes, "; "))
	}
	fmt.Fprintln(out)
	traffic(view)
	return nil
}

// traffic routes test requests and 10,000 users through the view's snapshot and prints the lanes.
func traffic(view *registrar.ServiceView) {
	snap := view.Snapshot()
	tester := &gray.StaticRequest{URLPath: "/api/user/1", HTTPMethod: "GET", Headers: map[string]string{
		"userid": "123", "cookie": "email=qa@some-company-name.com", "x-env": "green", "x-user-id": "tester"}}
	d := snap.Decide(tester)
	fmt.Fprintf(out, "  tester       -> %-7s (%s)\n", laneName(d.Lane), d.Reason)

	counts := map[string]int{}
	req := &gray.StaticRequest{URLPath: "/api/order", HTTPMethod: "GET", Headers: map[string]string{}}
	for i := 0; i < users; i++ {
		req.Headers["x-user-id"] = fmt.Sprintf("user-%d", i)
		counts[laneName(snap.Decide(req).Lane)]++
	}
	var parts []string
	for _, l := range snap.Lanes() {
		parts = append(parts, fmt.Sprintf("%s %.2f%%", l.Name, 100*float64(counts[l.Name])/users))
	}
	fmt.Fprintf(out, "  %d users -> %s\n", users, strings.Join(parts, ", "))
}

func laneName(l string) string {
	if l == "" {
		return "(all)"
	}
	return l
}

func step(title string) { fmt.Fprintf(out, "\n== %s\n", title) }
