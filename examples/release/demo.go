package main

import (
	"context"
	"embed"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/graylane/graylane/registrar"
)

// demo measures and prints.
type demo struct {
	out    io.Writer
	s      *stack
	planes []plane
}

func (d *demo) heading(n, title string) {
	fmt.Fprintf(d.out, "\n== %s. %s\n", n, title)
}

// measure sends the requests through every plane; the replies are per plane, in request order.
func (d *demo) measure(ctx context.Context, service string, reqs []request) ([][]*reply, error) {
	out := make([][]*reply, len(d.planes))
	for i, p := range d.planes {
		m, err := sendAll(ctx, p, service, reqs)
		if err != nil {
			return nil, err
		}
		out[i] = m
	}
	return out, nil
}

// share is the fraction of replies served by the lane.
func share(m []*reply, lane string) float64 {
	n := 0
	for _, r := range m {
		if r.Serves == lane {
			n++
		}
	}
	return float64(n) / float64(max(len(m), 1))
}

func (d *demo) table(ctx context.Context, service, what string, reqs []request) error {
	_, err := d.tableOf(ctx, service, what, reqs)
	return err
}

// tableOf measures and prints a table: one row per lane that served, a column per plane.
func (d *demo) tableOf(ctx context.Context, service, what string, reqs []request) ([][]*reply, error) {
	start := time.Now()
	m, err := d.measure(ctx, service, reqs)
	if err != nil {
		return nil, err
	}
	counts := make([]map[string]int, len(m))
	var lanes []string
	for p, replies := range m {
		counts[p] = map[string]int{}
		for _, r := range replies {
			if counts[p][r.Serves] == 0 && !slices.Contains(lanes, r.Serves) {
				lanes = append(lanes, r.Serves)
			}
			counts[p][r.Serves]++
		}
	}
	slices.SortFunc(lanes, func(a, b string) int { return laneOrder(a) - laneOrder(b) })
	fmt.Fprintf(d.out, "\n  %s: %d requests to %s through each plane (%v)\n", what, len(reqs), service, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(d.out, "  %-8s", "lane")
	for _, p := range d.planes {
		fmt.Fprintf(d.out, " | %-38s", p.Name())
	}
	fmt.Fprintln(d.out)
	for _, l := range lanes {
		fmt.Fprintf(d.out, "  %-8s", l)
		for p := range d.planes {
			n := counts[p][l]
			pct := 100 * float64(n) / float64(len(reqs))
			fmt.Fprintf(d.out, " | %5d %5.1f%% %-25s", n, pct, bar(pct, 25))
		}
		fmt.Fprintln(d.out)
	}
	return m, nil
}

func laneOrder(l string) int {
	switch l {
	case "stable":
		return 0
	case "blue":
		return 1
	case "canary":
		return 2
	case "green":
		return 3
	}
	return 4
}

// bar draws pct (0-100) in width cells, with eighths.
func bar(pct float64, width int) string {
	eighths := int(pct/100*float64(width)*8 + 0.5)
	if pct > 0 && eighths == 0 {
		eighths = 1
	}
	s := strings.Repeat("█", eighths/8)
	if r := eighths % 8; r > 0 {
		s += string([]rune("▏▎▍▌▋▊▉")[r-1])
	}
	return s
}

// wait sends the probe requests through every plane until cond holds for each.
func (d *demo) wait(ctx context.Context, service string, probe []request, cond func([]*reply) bool) error {
	for p := range d.planes {
		if _, err := d.waitPlane(ctx, p, service, probe, time.Now(), func(_ int, m []*reply) bool { return cond(m) }); err != nil {
			return err
		}
	}
	return nil
}

// settler is a plane that can tell whether it has caught up with Consul beyond what the probe
// shows (the Kratos client: see kratosClient.settled).
type settler interface {
	settled(service string) bool
}

// waitPlane sends the probe through plane p until cond holds, and then until the plane has settled.
// It returns the time from since until cond first held.
func (d *demo) waitPlane(ctx context.Context, p int, service string, probe []request, since time.Time, cond func(int, []*reply) bool) (time.Duration, error) {
	deadline := time.Now().Add(30 * time.Second)
	var took time.Duration
	for {
		m, err := sendAll(ctx, d.planes[p], service, probe)
		if err == nil && cond(p, m) {
			if took == 0 {
				took = time.Since(since)
			}
			if s, ok := d.planes[p].(settler); !ok || s.settled(service) {
				return took, nil
			}
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: %s did not show the change and settle in 30s (last error: %v)", service, d.planes[p].Name(), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// change commits op with the registrar and measures, per plane, the time from the commit until
// the probe requests show it (cond).
func (d *demo) change(ctx context.Context, service string, op registrar.Op, probe []request, cond func(int, []*reply) bool) ([]time.Duration, error) {
	start := time.Now()
	if _, err := d.s.r.Do(ctx, service, op); err != nil {
		return nil, err
	}
	took := make([]time.Duration, len(d.planes))
	errs := make(chan error, len(d.planes))
	for p := range d.planes {
		go func() {
			var err error
			took[p], err = d.waitPlane(ctx, p, service, probe, start, cond)
			errs <- err
		}()
	}
	var first error
	for range d.planes {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return took, first
}

func (d *demo) took(t []time.Duration) {
	var parts []string
	for p, pl := range d.planes {
		parts = append(parts, fmt.Sprintf("%s %v", pl.Name(), t[p].Round(time.Millisecond)))
	}
	fmt.Fprintf(d.out, "committed in Consul; the first probe batch showing the change ended, after the commit: %s\n", strings.Join(parts, ", "))
}

// chain sends requests through the gateway and prints, per path taken, where each hop served them.
func (d *demo) chain(ctx context.Context, reqs []request) error {
	m, err := sendAll(ctx, d.planes[0], "bservice", reqs)
	if err != nil {
		return err
	}
	type row struct {
		header, path string
	}
	counts := map[row]int{}
	var rows []row
	for _, r := range m {
		k := row{header: r.Lane, path: r.String()}
		if k.header == "" {
			k.header = "(none)"
		}
		if counts[k] == 0 {
			rows = append(rows, k)
		}
		counts[k]++
	}
	fmt.Fprintf(d.out, "\n  %d requests through the gateway (%d with the test header userid: 123)\n", len(reqs), testers)
	fmt.Fprintf(d.out, "  %-18s %-70s %s\n", "lane header set", "served by bservice > cservice", "requests")
	for _, k := range rows {
		fmt.Fprintf(d.out, "  %-18s %-70s %d\n", k.header, k.path, counts[k])
	}
	return nil
}

//go:embed steps/*.yaml
var steps embed.FS

// matches checks that the gray meta in Consul is the one a step's spec file states, and says so.
func (d *demo) matches(ctx context.Context, file string) error {
	data, err := steps.ReadFile("steps/" + file)
	if err != nil {
		return err
	}
	specs, err := registrar.ParseSpecs(file, data)
	if err != nil {
		return err
	}
	var ids []string
	for _, sp := range specs {
		insts, _, err := d.s.r.Instances(ctx, sp.Name)
		if err != nil {
			return err
		}
		want, _ := sp.Gray.Encode()
		var got map[string]string
		for _, in := range insts {
			if in.ID == sp.ID {
				got, _ = in.Gray.Encode()
			}
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("%s: %s has gray meta %v in Consul, the step's spec says %v", file, sp.ID, got, want)
		}
		ids = append(ids, sp.ID)
	}
	fmt.Fprintf(d.out, "gray meta of %s in Consul: as in steps/%s\n", strings.Join(ids, ", "), file)
	return nil
}
