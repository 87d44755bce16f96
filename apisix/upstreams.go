package apisix

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// Labels graylane puts on what it writes, so that it prunes only its own objects.
const (
	LabelManagedBy = "managed-by"
	LabelService   = "graylane-service"
	LabelLane      = "graylane-lane"
	// BaseLabel is the graylane-lane label of a service's base upstream.
	BaseLabel = "_base"
)

// Upstream is an APISIX upstream as graylane writes it (nodes in hash form, "host:port": weight).
type Upstream struct {
	ID     string            `json:"id"`
	Name   string            `json:"name,omitempty"`
	Desc   string            `json:"desc,omitempty"`
	Type   string            `json:"type"`
	Nodes  map[string]int    `json:"nodes"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Service returns the service whose upstream this is, when graylane wrote it.
func (u *Upstream) Service() (string, bool) {
	if u.Labels[LabelManagedBy] != "graylane" {
		return "", false
	}
	s, ok := u.Labels[LabelService]
	return s, ok
}

// Equal reports whether two upstreams have the same content in the fields graylane writes.
func (u *Upstream) Equal(o *Upstream) bool {
	return u.ID == o.ID && u.Name == o.Name && u.Desc == o.Desc && u.Type == o.Type &&
		maps.Equal(u.Nodes, o.Nodes) && maps.Equal(u.Labels, o.Labels)
}

// idPattern is APISIX's id schema.
var idPattern = regexp.MustCompile(`^[a-zA-Z0-9-_.]{1,64}$`)

// LaneUpstreamID returns the id of a lane's upstream: graylane-SERVICE-LANE.
func LaneUpstreamID(service, lane string) string { return "graylane-" + service + "-" + lane }

// BaseUpstreamID returns the id of the route's own upstream, which holds the service's base.
func BaseUpstreamID(service string) string { return "graylane-" + service }

// Desired returns the upstreams a service's snapshot asks for: the base upstream and one per lane,
// sorted by id. The base upstream, the route's own, serves what the plugin does not label (and
// everything while the runner is down): the live lane, which is the lane taking all unmatched
// traffic when one does (green at weight 100 after a blue/green switch) and excludes no segment, else the snapshot's base
// decision (stable, or its fallback when the base lane is empty). An id APISIX would refuse is an
// error naming it; the others are still returned.
func Desired(service string, snap *gray.Snapshot[watch.Endpoint]) ([]Upstream, error) {
	var out []Upstream
	var errs []error
	add := func(id, lane, desc string, eps []watch.Endpoint) {
		if !idPattern.MatchString(id) {
			errs = append(errs, fmt.Errorf("apisix: service %s lane %s: upstream id %q is not a valid APISIX id (letters, digits, '-', '_', '.', at most 64)", service, lane, id))
			return
		}
		out = append(out, Upstream{
			ID: id, Name: id, Desc: desc, Type: "roundrobin", Nodes: nodes(eps),
			Labels: map[string]string{LabelManagedBy: "graylane", LabelService: service, LabelLane: lane},
		})
	}
	baseEps := snap.Base().Instances
	lanes := laneEndpoints(snap)
	for _, info := range snap.Lanes() {
		// A lane that keeps a segment's users out is never the route's own upstream: while the runner
		// is down (allow_degradation) those users would reach it.
		if !info.Base && info.Share == gray.MaxWeight && len(info.Exclude) == 0 {
			for _, l := range lanes {
				if l.name == info.Name {
					baseEps = l.eps
				}
			}
		}
	}
	add(BaseUpstreamID(service), BaseLabel, fmt.Sprintf("graylane: the base of %s (route upstream), from Consul", service), baseEps)
	for _, l := range lanes {
		add(LaneUpstreamID(service, l.name), l.name, fmt.Sprintf("graylane: lane %s of %s, from Consul", l.name, service), l.eps)
	}
	slices.SortFunc(out, func(a, b Upstream) int { return strings.Compare(a.ID, b.ID) })
	return out, errors.Join(errs...)
}

type laneEps struct {
	name string
	eps  []watch.Endpoint
}

// laneEndpoints returns each lane's instances, in lane order. A trusted tag naming a lane yields
// exactly that lane's instances, so Decide with the tag reads them without reaching into the core.
func laneEndpoints(snap *gray.Snapshot[watch.Endpoint]) []laneEps {
	var out []laneEps
	key := snap.TagKey()
	for _, l := range snap.Lanes() {
		d := snap.Decide(&gray.StaticRequest{Headers: map[string]string{key.Lower(): l.Name}})
		if d.Reason != gray.ReasonTag {
			continue
		}
		out = append(out, laneEps{l.Name, d.Instances})
	}
	return out
}

// hasGrayLane reports whether the snapshot has a lane that is not a base lane.
func hasGrayLane(snap *gray.Snapshot[watch.Endpoint]) bool {
	for _, l := range snap.Lanes() {
		if !l.Base {
			return true
		}
	}
	return false
}

func nodes(eps []watch.Endpoint) map[string]int {
	out := make(map[string]int, len(eps))
	for _, e := range eps {
		if e.Address == "" || e.Port <= 0 || e.Port > 65535 {
			continue
		}
		out[net.JoinHostPort(e.Address, strconv.Itoa(e.Port))] = 1
	}
	return out
}
