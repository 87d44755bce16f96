package selector

import (
	"net"
	"net/url"
	"slices"
	"strconv"

	kselector "github.com/go-kratos/kratos/v2/selector"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// inputs is what a snapshot is prepared from besides the node set, in the form a call compares
// cheaply: the options of a WithServiceOptions source by value; else the watcher's options as it
// published them, and its answer on the service's instances, by pointer (the watcher publishes a new
// value for each change and never modifies one).
type inputs struct {
	source    gray.Options
	published *gray.Options
	instances *watch.Instances // nil without a watcher, before it answers, and while it is stale
	// segments are the segments the service's instances name, from the watcher (nil without one:
	// rules naming a segment then match nothing and lanes excluding one take tagged calls only).
	segments *gray.Segments
}

// same reports whether a and b are the same inputs. Source options are compared only when there is
// a source (valued): they are the zero Options otherwise.
func (a *inputs) same(b *inputs, valued bool) bool {
	return a.published == b.published && a.instances == b.instances && a.segments == b.segments && (!valued || a.source == b.source)
}

// watched is what a Filter follows through WithWatcher's watcher for its one service.
type watched struct {
	instances *watch.ServiceView
	options   *watch.OptionsView
}

// live reports whether the inputs can change during the Filter's life: without an options source
// and a watcher they are the client's options, fixed.
func (f *Filter) live() bool { return f.cfg.source != nil || f.cfg.watcher != nil }

// inputs returns the current inputs.
func (f *Filter) inputs() inputs {
	var in inputs
	if w := f.watched.Load(); w != nil {
		// A stale watcher (Consul unreachable, the token refused) may lag behind the registry,
		// which keeps going on its own connection: its answer counts only while it is fresh.
		if !w.instances.Stale() {
			in.instances = w.instances.Instances()
		}
		in.segments = w.instances.Segments()
		if f.cfg.source == nil {
			in.published = w.options.Current()
		}
	}
	if f.cfg.source != nil {
		in.source = f.cfg.source.Load()
	}
	return in
}

// options returns the decision options for in: the service's (from the source, else the watcher),
// overridden by the client's.
func (f *Filter) options(in inputs) gray.Options {
	switch {
	case f.cfg.source != nil:
		return in.source.Override(f.cfg.options)
	case in.published != nil:
		return in.published.Override(f.cfg.options)
	}
	return f.cfg.options
}

// watch starts following service through the watcher, once. It reports whether it started now: the
// inputs may then have changed.
func (f *Filter) watch(service string) bool {
	if f.cfg.watcher == nil || f.watched.Load() != nil {
		return false
	}
	w := &watched{instances: f.cfg.watcher.Service(service), options: f.cfg.watcher.Options(service)}
	return f.watched.CompareAndSwap(nil, w)
}

// instancesOf turns nodes into the core's instances: each with the watcher's meta for its address
// when the watcher knows it, else its own, and without the lanes the client must never enter. A
// node of graylane's balancer whose connection is not ready is a pending instance.
func instancesOf[N kselector.Node](nodes []N, cfg *config, fresh *watch.Instances) []gray.Instance[N] {
	byAddress := metaByAddress(fresh)
	instances := make([]gray.Instance[N], 0, len(nodes))
	for _, n := range nodes {
		meta := n.Metadata()
		if m, ok := byAddress[n.Address()]; ok {
			meta = m
		}
		if len(cfg.never) > 0 {
			if m, err := gray.ParseMeta(meta); err == nil && slices.Contains(cfg.never, m.LaneName()) {
				continue
			}
		}
		instances = append(instances, gray.Instance[N]{ID: n.Address(), Meta: meta, Value: n, Pending: isPending(n)})
	}
	return instances
}

// metaByAddress maps each address of the watcher's instances (host:port, the form a Kratos node's
// Address has) to the instance's meta: the hosts of its tagged addresses (Kratos' registry keeps
// its endpoint URLs there) and its service address. An address two instances claim is left out, so
// that its node keeps its own meta.
func metaByAddress(list *watch.Instances) map[string]map[string]string {
	if list == nil {
		return nil
	}
	owner := make(map[string]*watch.Endpoint, 2*len(list.Endpoints))
	claim := func(addr string, ep *watch.Endpoint) {
		if prev, ok := owner[addr]; ok && (prev == nil || prev.ID != ep.ID) {
			owner[addr] = nil // ambiguous
			return
		}
		owner[addr] = ep
	}
	for i := range list.Endpoints {
		ep := &list.Endpoints[i]
		for _, a := range ep.TaggedAddresses {
			if u, err := url.Parse(a); err == nil && u.Host != "" {
				claim(u.Host, ep)
			}
		}
		if ep.Address != "" && ep.Port > 0 {
			claim(net.JoinHostPort(ep.Address, strconv.Itoa(ep.Port)), ep)
		}
	}
	out := make(map[string]map[string]string, len(owner))
	for addr, ep := range owner {
		if ep != nil {
			out[addr] = ep.Meta
		}
	}
	return out
}
