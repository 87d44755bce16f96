package apisix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
)

// AdminTarget applies a State through the Admin API of a gateway in traditional (etcd) mode.
//
// Order matters, because APISIX checks a route's own upstream_id but not traffic-split's: new and
// changed upstreams are written first, then the routes' rules, and an upstream is deleted only once
// no route names it. An upstream that some route (not graylane's rules) still references is kept
// and reported in Changes.Kept; the logger says which route.
type AdminTarget struct {
	Admin *Admin
	// Logf reports kept upstreams and foreign objects in the way. Default: discard.
	Logf func(format string, args ...any)
}

func (t *AdminTarget) logf(format string, args ...any) {
	if t.Logf != nil {
		t.Logf(format, args...)
	}
}

// Apply implements Target.
func (t *AdminTarget) Apply(ctx context.Context, st *State) (Changes, error) {
	var ch Changes
	current, err := t.Admin.Upstreams(ctx)
	if err != nil {
		return ch, err
	}
	byID := map[string]*Upstream{}
	for i := range current {
		byID[current[i].ID] = &current[i]
	}
	managed := map[string]bool{}
	for _, s := range st.Services {
		managed[s] = true
	}

	// 1. Upstreams: create and update.
	var errs []error
	for i := range st.Upstreams {
		want := &st.Upstreams[i]
		if cur, ok := byID[want.ID]; ok {
			if svc, mine := cur.Service(); !mine || svc != want.Labels[LabelService] || cur.Labels[LabelLane] != want.Labels[LabelLane] {
				errs = append(errs, fmt.Errorf("apisix sync: upstream %s exists and was not written by graylane for %s lane %s (labels %v): left alone",
					want.ID, want.Labels[LabelService], want.Labels[LabelLane], cur.Labels))
				continue
			}
			if cur.Equal(want) {
				continue
			}
		}
		if err := t.Admin.PutUpstream(ctx, want); err != nil {
			return ch, err
		}
		ch.Written = append(ch.Written, "upstream "+want.ID)
	}

	// 2. Routes graylane created: traffic-split rules follow the lanes.
	routes, err := t.Admin.Routes(ctx)
	if err != nil {
		return ch, err
	}
	for _, r := range routes {
		svc, ok := routeService(r)
		if !ok || !managed[svc] {
			continue
		}
		header := st.LaneHeaders[svc]
		conf, confOK := routeConf(r)
		if confOK && conf.TagKey != "" {
			header = conf.TagKey
		}
		if header == "" {
			header = gray.DefaultTagKey
		}
		var filter []any // a route whose conf does not read: every request asks the runner
		if confOK {
			filter = st.hopFilter(conf, header)
		}
		if !SetLanes(r, svc, header, st.routeLanes(svc), filter) {
			continue
		}
		if err := t.Admin.PutRoute(ctx, r); err != nil {
			return ch, err
		}
		ch.Written = append(ch.Written, fmt.Sprintf("route %v", r["id"]))
	}

	// 3. Prune what no lane needs any more, unless a route still references it.
	want := map[string]bool{}
	for _, u := range st.Upstreams {
		want[u.ID] = true
	}
	for _, cur := range current {
		svc, mine := cur.Service()
		if !mine || !managed[svc] || want[cur.ID] {
			continue
		}
		if users := referencing(routes, cur.ID); len(users) > 0 {
			t.logf("apisix sync: keeping upstream %s, which lane %s of %s no longer needs: route %s still references it",
				cur.ID, cur.Labels[LabelLane], svc, strings.Join(users, ", "))
			ch.Kept = append(ch.Kept, cur.ID)
			continue
		}
		err := t.Admin.DeleteUpstream(ctx, cur.ID)
		var ae *AdminError
		switch {
		case err == nil:
			ch.Deleted = append(ch.Deleted, cur.ID)
		case errors.Is(err, ErrNotFound):
		case errors.As(err, &ae) && !ae.Temporary():
			// APISIX refuses while something it knows (a service, a stream route) uses it, or
			// while its workers' copy of the routes still has the route this Apply just changed.
			t.logf("apisix sync: keeping upstream %s for now: %s", cur.ID, ae.Message)
			ch.Kept = append(ch.Kept, cur.ID)
			ch.Retry = true
		default:
			return ch, err
		}
	}
	return ch, errors.Join(errs...)
}

// routeService returns the service of a route graylane created.
func routeService(r map[string]any) (string, bool) {
	labels, _ := r["labels"].(map[string]any)
	if labels[LabelManagedBy] != "graylane" {
		return "", false
	}
	s, ok := labels[LabelService].(string)
	return s, ok
}

// routeConf returns the graylane conf in a route's ext-plugin-pre-req.
func routeConf(r map[string]any) (*extplugin.Conf, bool) {
	plugins, _ := r["plugins"].(map[string]any)
	pre, _ := plugins["ext-plugin-pre-req"].(map[string]any)
	confs, _ := pre["conf"].([]any)
	for _, c := range confs {
		m, _ := c.(map[string]any)
		if m["name"] != extplugin.Name {
			continue
		}
		v, _ := m["value"].(string)
		conf, err := extplugin.ParseConf([]byte(v))
		return conf, err == nil
	}
	return nil, false
}

// rulePairs reads a traffic-split conf as "var==value->upstream" strings, in order.
func rulePairs(ts map[string]any) []string {
	var out []string
	rules, _ := ts["rules"].([]any)
	for _, rule := range rules {
		b, _ := json.Marshal(rule)
		var rr struct {
			Match []struct {
				Vars [][]any `json:"vars"`
			} `json:"match"`
			Weighted []struct {
				UpstreamID any `json:"upstream_id"`
				Weight     any `json:"weight"`
			} `json:"weighted_upstreams"`
		}
		json.Unmarshal(b, &rr)
		out = append(out, fmt.Sprintf("%v->%v", rr.Match, rr.Weighted))
	}
	return out
}

func wantPairs(service, header string, lanes []string) []string {
	return rulePairs(map[string]any{"rules": TrafficSplitRules(service, header, lanes)})
}

// referencing returns the ids of the routes that name upstream id, as their own upstream or in
// traffic-split.
func referencing(routes []map[string]any, id string) []string {
	var out []string
	for _, r := range routes {
		if fmt.Sprint(r["upstream_id"]) == id || mentions(r["plugins"], id) {
			out = append(out, fmt.Sprint(r["id"]))
		}
	}
	return out
}

// mentions reports whether an upstream_id field anywhere under v names id.
func mentions(v any, id string) bool {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if k == "upstream_id" && fmt.Sprint(e) == id {
				return true
			}
			if mentions(e, id) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if mentions(e, id) {
				return true
			}
		}
	}
	return false
}
