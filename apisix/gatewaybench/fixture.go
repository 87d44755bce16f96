package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/e2e"
	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// fixture is what the bench writes into Consul and the gateway, and removes at the end: the bench
// service (its stable instance reuses the address of one base instance of the given service, so
// that the gateway reaches it wherever it runs), its upstreams, kept by an in-process sync as
// `graylane apisix sync` keeps them, and three routes to its base upstream. Its methods are called
// from one goroutine.
type fixture struct {
	admin    *apisix.Admin
	consul   *api.Client
	w        *watch.Watcher
	service  string           // <service>-bench
	stable   watch.Endpoint   // the instance of the given service whose address is reused
	gateway  string           // http://host:port
	graylane apisix.RouteSpec // graylane's route
	plainID  string
	splitID  string
	logf     func(string, ...any)

	stopSync func()
	release  release // the canary registered, if any
}

// release is the state of the bench service's release: which canary is registered.
type release int

const (
	noRelease release = iota // no canary: the service has no gray lane
	// testRelease: a canary at weight 0 that takes the requests with a userid header, as the design
	// article's first step; the bench's requests carry none, so graylane's route keeps them from the
	// runner (its hop filter) and they go to stable.
	testRelease
	// weightedRelease: a canary taking 5 % of users by the sticky header: every request asks the
	// runner, which sends one user in twenty to the canary.
	weightedRelease
)

func (r release) String() string {
	return [...]string{"no canary", "a weight-0 canary matching userid", "a 5 % canary"}[r]
}

// canaryMeta returns the meta of the release's canary.
func (r release) canaryMeta() map[string]string {
	switch r {
	case testRelease:
		return map[string]string{"version": "v2", gray.KeyCanary: "true", gray.KeyWeight: "0",
			gray.KeyMatch: `[{"header":[{"key":"userid","value_match":"123"}]}]`}
	case weightedRelease:
		return map[string]string{"version": "v2", gray.KeyCanary: "true", gray.KeyWeight: "5"}
	}
	return nil
}

func (f *fixture) stableID() string { return f.service + "-stable" }
func (f *fixture) canaryID() string { return f.service + "-canary" }

// splitLanes are the lanes of the traffic-split rules of the route without a runner: those the sync
// gives graylane's route while the canary is registered.
var splitLanes = []string{gray.CanaryLane, gray.StableLane}

func (f *fixture) register(id string, meta map[string]string) error {
	return f.consul.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: f.service,
		Address: f.stable.Address, Port: f.stable.Port, Meta: meta})
}

// setUp registers the bench service's stable instance, writes its upstreams and the three routes,
// and starts the sync. The canary is registered while the routes are written, so that its upstream
// exists before the route without a runner names it: APISIX's traffic-split looks up the upstream of
// every rule on every request and answers 500 when one is missing. When the canary goes, the sync
// keeps that upstream, because that route still references it.
func (f *fixture) setUp(ctx context.Context, prefix string) error {
	if err := f.register(f.stableID(), map[string]string{"version": "v1"}); err != nil {
		return fmt.Errorf("registering %s in Consul: %w", f.stableID(), err)
	}
	if err := f.register(f.canaryID(), testRelease.canaryMeta()); err != nil {
		return fmt.Errorf("registering %s in Consul: %w", f.canaryID(), err)
	}
	f.release = testRelease
	view := f.w.Service(f.service)
	if err := waitFor(ctx, 30*time.Second, "the watcher to see "+f.stableID()+" and "+f.canaryID(), func() (bool, error) {
		select {
		case <-view.Ready():
			return slices.ContainsFunc(view.Snapshot().Lanes(), func(l gray.LaneInfo) bool { return !l.Base }), nil
		default:
			return false, nil
		}
	}); err != nil {
		return err
	}
	// graylane's route first: ApplyRoute writes the service's upstreams before the route, and the
	// other two routes need them to exist.
	if _, err := apisix.ApplyRoute(ctx, f.admin, f.w, f.graylane, apisix.WithSyncLogger(f.logf)); err != nil {
		return fmt.Errorf("applying graylane's route: %w", err)
	}
	header := view.Snapshot().TagKey().Lower()
	split := map[string]any{"traffic-split": map[string]any{"rules": apisix.TrafficSplitRules(f.service, header, splitLanes)}}
	for _, r := range []map[string]any{
		f.route(f.plainID, prefix+"plain/*", "a plain route, no plugin", nil),
		f.route(f.splitID, prefix+"split/*", "graylane's traffic-split rules alone, no runner", split),
	} {
		if err := f.admin.PutRoute(ctx, r); err != nil {
			return fmt.Errorf("writing route %v: %w", r["id"], err)
		}
	}
	syncCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := apisix.NewSync(&apisix.AdminTarget{Admin: f.admin, Logf: f.logf}, f.w, []string{f.service}, apisix.WithSyncLogger(f.logf))
		if err := s.Run(syncCtx); err != nil {
			f.logf("apisix sync of %s stopped: %v", f.service, err)
		}
	}()
	f.stopSync = func() { cancel(); <-done }
	return f.waitHop(ctx, testRelease)
}

// route returns a route of the bench to the service's base upstream. Its labels are not graylane's
// own, so that the sync leaves it alone.
func (f *fixture) route(id, uri, desc string, plugins map[string]any) map[string]any {
	r := map[string]any{"id": id, "name": id, "uri": uri, "upstream_id": apisix.BaseUpstreamID(f.service),
		"desc":   "graylane gatewaybench: " + desc,
		"labels": map[string]any{apisix.LabelManagedBy: "graylane-gatewaybench"}}
	if plugins != nil {
		r["plugins"] = plugins
	}
	return r
}

// setRelease registers the release's canary, or removes it, then waits until graylane's route,
// read through the Admin API, has the runner's hop as the sync makes it for that release: off (no
// canary); on, under a filter, with traffic-split naming the canary's upstream (the weight-0
// canary); on for every request (the weighted canary).
func (f *fixture) setRelease(ctx context.Context, r release) error {
	if r == noRelease {
		if err := f.consul.Agent().ServiceDeregister(f.canaryID()); err != nil {
			return fmt.Errorf("deregistering %s: %w", f.canaryID(), err)
		}
	} else if err := f.register(f.canaryID(), r.canaryMeta()); err != nil {
		return fmt.Errorf("registering %s: %w", f.canaryID(), err)
	}
	f.release = r
	return f.waitHop(ctx, r)
}

func (f *fixture) waitHop(ctx context.Context, r release) error {
	state := map[release]string{noRelease: "off, without traffic-split",
		testRelease:     "on under a filter, traffic-split naming " + apisix.LaneUpstreamID(f.service, gray.CanaryLane),
		weightedRelease: "on for every request, traffic-split naming " + apisix.LaneUpstreamID(f.service, gray.CanaryLane)}[r]
	return waitFor(ctx, time.Minute, fmt.Sprintf("route %s to have the runner's hop %s", f.graylane.RouteID(), state), func() (bool, error) {
		hop, filtered, ups, err := f.hop(ctx)
		if err != nil {
			return false, err
		}
		if r == noRelease {
			return !hop && len(ups) == 0, nil
		}
		if hop && filtered == (r == testRelease) && slices.Contains(ups, apisix.LaneUpstreamID(f.service, gray.CanaryLane)) {
			if want := wantUpstreams(f.service); !slices.Equal(ups, want) {
				f.logf("graylane's route splits to %v, the route without a runner to %v: the two differ", ups, want)
			}
			return true, nil
		}
		return false, nil
	})
}

func wantUpstreams(service string) []string {
	var out []string
	for _, l := range splitLanes {
		out = append(out, apisix.LaneUpstreamID(service, l))
	}
	return out
}

// hop reads graylane's route through the Admin API: whether the runner's hop is on, whether it has
// a filter, and the upstreams its traffic-split names, in order.
func (f *fixture) hop(ctx context.Context) (hop, filtered bool, upstreams []string, err error) {
	routes, err := f.admin.Routes(ctx)
	if err != nil {
		return false, false, nil, err
	}
	for _, r := range routes {
		if r["id"] != f.graylane.RouteID() {
			continue
		}
		hop, ups := apisix.RouteHop(r)
		return hop, apisix.RouteHopFilter(r) != nil, ups, nil
	}
	return false, false, nil, fmt.Errorf("route %s is gone from the gateway", f.graylane.RouteID())
}

// probe sends one request through a route and checks that the bench's stable instance answered
// (the canary shares its address) without a lane header, or with the canary's under a weighted
// release when the probe's user falls in its share; it returns the gateway's Server header.
func (f *fixture) probe(ctx context.Context, path, stickyHeader string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.gateway+path, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set(stickyHeader, "bench-probe")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: answer %d", path, resp.StatusCode)
	}
	var r e2e.Reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", fmt.Errorf("GET %s: the answer is not the example backend's: %w", path, err)
	}
	wantLane := ""
	if f.release == weightedRelease && gray.Bucket(f.service, "bench-probe") < 500 && strings.HasPrefix(path, strings.TrimSuffix(f.graylane.URI, "*")) {
		wantLane = gray.CanaryLane
	}
	if r.Instance != f.stable.ID || r.Lane != wantLane {
		return "", fmt.Errorf("GET %s: answered by %q with lane header %q, want %s with %q", path, r.Instance, r.Lane, f.stable.ID, wantLane)
	}
	return resp.Header.Get("Server"), nil
}

// cleanUp removes what the bench wrote: its routes, then (the sync stopped) its instances, then the
// upstreams of the bench service. It reports what it could not remove.
func (f *fixture) cleanUp() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	for _, id := range []string{f.graylane.RouteID(), f.plainID, f.splitID} {
		if err := f.admin.DeleteRoute(ctx, id); err != nil && !errors.Is(err, apisix.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if f.stopSync != nil {
		f.stopSync()
	}
	for _, id := range []string{f.canaryID(), f.stableID()} {
		if err := f.consul.Agent().ServiceDeregister(id); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("deregistering %s: %w", id, err))
		}
	}
	// APISIX checks an upstream's DELETE against its workers' copy of the routes, which trails the
	// route deletes just made: retry a refusal for a while.
	err := waitFor(ctx, 30*time.Second, "the bench's upstreams to be deleted", func() (bool, error) {
		ups, err := f.admin.Upstreams(ctx)
		if err != nil {
			return false, err
		}
		left := 0
		for _, u := range ups {
			if svc, mine := u.Service(); !mine || svc != f.service {
				continue
			}
			if err := f.admin.DeleteUpstream(ctx, u.ID); err != nil && !errors.Is(err, apisix.ErrNotFound) {
				var ae *apisix.AdminError
				if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
					return false, err
				}
				left++
			}
		}
		return left == 0, nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(logOut, "cleaning up: %v\n", err)
	}
}

func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// waitFor polls cond every 100 ms until it holds, fails, ctx ends or limit passes.
func waitFor(ctx context.Context, limit time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		switch {
		case err != nil:
			return fmt.Errorf("waiting for %s: %w", what, err)
		case ok:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("waiting for %s: not seen after %v", what, limit)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// graylaneRoute is graylane's route for the bench service, as `graylane apisix route` writes it
// with a sticky header and no trusted network.
func graylaneRoute(service, uri, stickyHeader string) apisix.RouteSpec {
	return apisix.RouteSpec{ID: "graylane-" + service, URI: uri,
		Conf: extplugin.Conf{Service: service, Options: gray.Options{StickyHeader: stickyHeader}}}
}
