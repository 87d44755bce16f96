package watch

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/internal/retry"
)

// segmentWatch follows one segment (record.SegmentFolder) with one blocking query on its head, shared by every
// service whose instances name it. It starts when a service first names the segment and runs until
// the Watcher closes.
type segmentWatch struct {
	name  string
	state atomic.Pointer[segmentState]

	mu         sync.Mutex
	dependents map[*serviceWatch]struct{}
}

// segmentState is what Consul last said about a segment.
type segmentState struct {
	// loaded is set once Consul has answered, with the segment or without it.
	loaded bool
	// seg is the segment; nil when it does not exist (a rule naming it matches nothing).
	seg *gray.Segment
	// generation and count identify the content, so that an answer with the same content is not a
	// change.
	generation string
	count      int
}

// follow makes sw depend on the segments its instances name, starting their watches, and rebuilds
// the service's segment set. sw.mu must be held.
func (w *Watcher) follow(sw *serviceWatch) {
	names := gray.ReferencedSegments(sw.instances)
	if slices.Equal(names, sw.segmentNames) {
		return
	}
	sw.segmentNames = names
	sw.segmentWatches = sw.segmentWatches[:0]
	for _, name := range names {
		sw.segmentWatches = append(sw.segmentWatches, w.segment(name, sw))
	}
	sw.rebuildSegments()
}

// segment returns the watch of a segment, starting it on first use, with sw among its dependents.
func (w *Watcher) segment(name string, sw *serviceWatch) *segmentWatch {
	w.segMu.Lock()
	sg, ok := w.segments[name]
	if !ok {
		sg = &segmentWatch{name: name, dependents: map[*serviceWatch]struct{}{}}
		sg.state.Store(&segmentState{})
		w.segments[name] = sg
		if w.ctx.Err() == nil {
			w.wg.Add(1)
			go w.runSegment(sg)
		}
	}
	w.segMu.Unlock()
	sg.mu.Lock()
	sg.dependents[sw] = struct{}{}
	sg.mu.Unlock()
	return sg
}

// rebuildSegments builds the service's segment set from its segments' latest states. sw.mu must be
// held.
func (sw *serviceWatch) rebuildSegments() {
	if len(sw.segmentWatches) == 0 {
		sw.segments.Store(nil)
		sw.segmentsLoaded = true
		return
	}
	loaded := true
	var segs []*gray.Segment
	for _, sg := range sw.segmentWatches {
		st := sg.state.Load()
		loaded = loaded && st.loaded
		if st.seg != nil {
			segs = append(segs, st.seg)
		}
	}
	sw.segments.Store(gray.NewSegments(segs...))
	sw.segmentsLoaded = loaded
}

// runSegment follows a segment and republishes the services that name it at each change. It waits
// on the segment's head alone, so that the chunks a change writes before its commit wake nothing;
// when the head names a new generation, it reads that generation's chunks. An answer that does not
// make a segment (a head that does not decode, a chunk missing because a newer change deleted its
// generation meanwhile) keeps the last good one and asks again.
func (w *Watcher) runSegment(sg *segmentWatch) {
	defer w.wg.Done()
	headKey := record.SegmentHeadKey(w.prefix, sg.name)
	var index, held uint64
	var behind behindServer
	failures := 0
	for {
		headPair, meta, err := w.client.KV().Get(headKey, (&api.QueryOptions{WaitIndex: index, WaitTime: w.waitTime}).WithContext(w.ctx))
		if w.ctx.Err() != nil {
			return
		}
		var next *segmentState
		if err == nil {
			if behind.older(meta.LastIndex, held) {
				index = 0
				if !retry.Sleep(w.ctx, behindPause) {
					return
				}
				continue
			}
			next, err = w.readSegment(sg, headPair)
		}
		if err != nil {
			failures++
			index = 0
			if consulclient.IsPermissionDenied(err) {
				w.logf("graylane: reading segment %q: the token may not read %s (key_prefix read): rules naming it match nothing until it may",
					sg.name, record.SegmentFolder(w.prefix, sg.name))
				// Known not to be readable: rules naming it match nothing, lanes excluding it
				// take tagged requests only; the services may become ready.
				if !sg.state.Load().loaded {
					sg.state.Store(&segmentState{loaded: true})
					w.republish(sg)
				}
			} else if err = w.refusal(consulclient.Redact(err, w.token)); !consulclient.IsConnLimit(err) {
				w.logf("graylane: %v; the last good version stays in use", err)
			}
			if !retry.Sleep(w.ctx, retry.Backoff(w.backoffFirst, w.backoffMax, failures)) {
				return
			}
			continue
		}
		failures = 0
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		held = meta.LastIndex
		if next == nil {
			continue // the same content
		}
		sg.state.Store(next)
		w.republish(sg)
	}
}

// readSegment returns the state a head announces, reading its generation's chunks; nil when the
// head announces what the watch holds already.
func (w *Watcher) readSegment(sg *segmentWatch, headPair *api.KVPair) (*segmentState, error) {
	prev := sg.state.Load()
	if headPair == nil {
		if prev.loaded && prev.seg == nil {
			return nil, nil
		}
		return &segmentState{loaded: true}, nil
	}
	var head record.SegmentHead
	if err := json.Unmarshal(headPair.Value, &head); err != nil {
		return nil, &record.SegmentError{Segment: sg.name, Problem: fmt.Sprintf("head %s: %v", headPair.Key, err)}
	}
	if prev.loaded && prev.seg != nil && prev.generation == head.Generation && prev.count == head.Count {
		return nil, nil
	}
	pairs := api.KVPairs{headPair}
	if head.Chunks > 0 {
		chunks, _, err := w.client.KV().List(record.SegmentGenerationFolder(w.prefix, sg.name, head.Generation), (&api.QueryOptions{}).WithContext(w.ctx))
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, chunks...)
	}
	seg, _, err := record.DecodeSegment(w.prefix, sg.name, pairs)
	if err != nil {
		return nil, err
	}
	return &segmentState{loaded: true, seg: seg, generation: head.Generation, count: head.Count}, nil
}

// republish rebuilds the segment sets and snapshots of the services that name sg.
func (w *Watcher) republish(sg *segmentWatch) {
	sg.mu.Lock()
	deps := make([]*serviceWatch, 0, len(sg.dependents))
	for sw := range sg.dependents {
		deps = append(deps, sw)
	}
	sg.mu.Unlock()
	for _, sw := range deps {
		sw.mu.Lock()
		if slices.Contains(sw.segmentWatches, sg) {
			sw.rebuildSegments()
			sw.publishAll()
		}
		sw.mu.Unlock()
	}
}

// Segments returns the segments the service's instances name, as Consul last answered for each:
// what the view's snapshots are built with. A segment that does not exist is absent. nil when the
// instances name none. Each change publishes a new value, so comparing the pointer with an earlier
// one tells whether they changed. It never blocks.
func (v *ServiceView) Segments() *gray.Segments { return v.watch.segments.Load() }
