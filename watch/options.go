package watch

// The decision options of every watched service, followed with one recursive blocking query per
// Watcher on the options folder (record.OptionsFolder).
//
// The registrar writes a service's options to its key in that folder in the same transaction as its
// state ("{}" for the defaults), from the service's first state on. Each answer lists every key of
// the folder (a key per recorded service, and nothing else); each watched service's options
// are compared with those it holds, and only a service whose options changed rebuilds its views, so
// a change of one service's options wakes that service's views and no other.
//
// A state recorded before the folder existed, and not changed since, may hold options with no key
// (its next change writes one). A service with no key
// therefore takes its state's options, read once without blocking when the service is first met
// without a key, or when its key goes away; a few readers share those reads, so that a watcher that
// starts with thousands of services does not open a stream for each at once. Services with no record
// in KV at all need no read: when the watch starts, one listing of the services folder names those
// that have one. Until its options are known, from the key or from the state, a service's views are
// not ready: nothing decides with options it has not read.
//
// The watch has a client of its own (Watcher.optClient), which makes one request at a time, and the
// services' queries wait until its first query has been answered or has failed. Over plain HTTP,
// where each query in flight holds a connection, that gives it a connection of its own before the
// services' queries take all that the agent allows (limits.http_max_conns_per_client): past that
// limit the services that get one become ready, as each did when it had its own options query,
// instead of none. Over HTTPS it is one more HTTP/2 connection. The reads of states go through the
// services' client, whose connections the services' queries reuse.

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/internal/retry"
)

// stateReaders bounds how many reads of services' states (for options recorded before the options
// folder) are in flight at once.
const stateReaders = 8

// optionsFolder is what Consul last answered for the options folder. It is never modified: each
// answer stores a new one.
type optionsFolder struct {
	// keys maps a service to its options key.
	keys map[string]optionsKey
	// recorded names the services that had a folder of their own in KV (a state, a history) when
	// the watch started; nil when unknown. A service outside it has no state, so no options there.
	recorded map[string]bool
	// denied is set when the token may not read the folder: services that never had options
	// decide with the defaults, as a service whose state the token may not read did.
	denied bool
}

// optionsKey is one service's options key.
type optionsKey struct {
	index uint64 // its ModifyIndex: a key with the same index is not decoded again
	opts  gray.Options
	ok    bool // false when the value does not decode: the options last seen stay
}

// startOptions starts the options folder's watch on the first watched service. w.mu must be held.
func (w *Watcher) startOptions() {
	if w.optionsStarted || w.ctx.Err() != nil {
		return
	}
	w.optionsStarted = true
	w.wg.Add(1)
	go w.runOptions()
}

// runOptions follows the options folder and gives each watched service its options.
func (w *Watcher) runOptions() {
	defer w.wg.Done()
	folder := record.OptionsFolder(w.prefix)
	var index, held uint64
	var behind behindServer
	var recorded map[string]bool
	listed := false
	keys := map[string]optionsKey{}
	failures := 0
	for {
		var err error
		if !listed {
			recorded, err = w.recordedServices()
			if err == nil || consulclient.IsPermissionDenied(err) {
				// A token that may not list the services reads each one's state instead.
				listed, err = true, nil
			}
		}
		var pairs api.KVPairs
		var meta *api.QueryMeta
		if err == nil {
			pairs, meta, err = w.optClient.KV().List(folder, (&api.QueryOptions{WaitIndex: index, WaitTime: w.waitTime}).WithContext(w.ctx))
		}
		if w.ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			index = 0
			err = w.refusal(consulclient.Redact(err, w.token))
			w.optionsFailed(err)
			w.optionsOnce.Do(func() { close(w.optionsTried) })
			if !retry.Sleep(w.ctx, retry.Backoff(w.backoffFirst, w.backoffMax, failures)) {
				return
			}
			continue
		}
		failures = 0
		if behind.older(meta.LastIndex, held) {
			index = 0
			if !retry.Sleep(w.ctx, behindPause) {
				return
			}
			continue
		}
		held = meta.LastIndex
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		keys = decodeOptionsKeys(folder, pairs, keys)
		w.optFolder.Store(&optionsFolder{keys: keys, recorded: recorded})
		for _, sw := range w.watched() {
			sw.opts.err.Store(nil)
			w.resolveOptions(sw)
		}
		w.optionsOnce.Do(func() { close(w.optionsTried) })
	}
}

// recordedServices lists the services that have a folder in KV.
func (w *Watcher) recordedServices() (map[string]bool, error) {
	services := record.ServicesFolder(w.prefix)
	folders, _, err := w.optClient.KV().Keys(services, "/", (&api.QueryOptions{}).WithContext(w.ctx))
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(folders))
	for _, f := range folders {
		if name, ok := strings.CutSuffix(strings.TrimPrefix(f, services), "/"); ok && name != "" {
			out[name] = true
		}
	}
	return out, nil
}

// decodeOptionsKeys reads an answer on the options folder, reusing the decoded keys of prev whose
// index did not change.
func decodeOptionsKeys(folder string, pairs api.KVPairs, prev map[string]optionsKey) map[string]optionsKey {
	keys := make(map[string]optionsKey, len(pairs))
	for _, p := range pairs {
		name := strings.TrimPrefix(p.Key, folder)
		if name == "" || strings.Contains(name, "/") {
			continue // the folder's own key, or something that is not a service's options
		}
		if k, ok := prev[name]; ok && k.index == p.ModifyIndex {
			keys[name] = k
			continue
		}
		k := optionsKey{index: p.ModifyIndex}
		// A value that does not decode keeps the options last seen; options that are not valid
		// decide with the defaults, as in a state.
		var o gray.Options
		if json.Unmarshal(p.Value, &o) == nil {
			k.ok = true
			if o.Validate() == nil {
				k.opts = o
			}
		}
		keys[name] = k
	}
	return keys
}

// optionsFailed reports an error reading the options folder to every watched service. When the
// token may not read it, services whose options were never read decide with the defaults (and the
// overrides) rather than never becoming ready; the others keep theirs.
func (w *Watcher) optionsFailed(err error) {
	denied := consulclient.IsPermissionDenied(err)
	if denied {
		f := &optionsFolder{denied: true}
		if prev := w.optFolder.Load(); prev != nil {
			f.keys, f.recorded = prev.keys, prev.recorded
		}
		w.optFolder.Store(f)
	}
	for _, sw := range w.watched() {
		sw.opts.err.Store(&err)
		if denied {
			w.resolveOptions(sw)
		}
	}
}

// watched returns the watched services.
func (w *Watcher) watched() []*serviceWatch {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*serviceWatch, 0, len(w.services))
	for _, sw := range w.services {
		out = append(out, sw)
	}
	return out
}

// resolveOptions gives sw its options from the options folder as last answered, or from its state,
// reading that when it must; nothing before the folder's first answer.
func (w *Watcher) resolveOptions(sw *serviceWatch) {
	f := w.optFolder.Load()
	if f == nil {
		return
	}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if k, ok := f.keys[sw.name]; ok {
		sw.stateOptions = nil // read again if the key goes away
		if k.ok {
			sw.setOptions(k.opts)
		}
		return
	}
	switch {
	case sw.stateOptions != nil:
		sw.setOptions(*sw.stateOptions)
	case f.denied:
		if !sw.haveOptions {
			sw.setOptions(gray.Options{})
		}
	case f.recorded != nil && !f.recorded[sw.name]:
		sw.setOptions(gray.Options{})
	default:
		w.readStateOptions(sw)
	}
}

// setOptions publishes the service's options and rebuilds its views when they changed, and makes its
// options known. sw.mu must be held.
func (sw *serviceWatch) setOptions(o gray.Options) {
	if o != sw.options || !sw.haveOptions {
		sw.options, sw.haveOptions = o, true
		sw.opts.value.Store(&o)
		sw.opts.mu.Lock()
		close(sw.opts.changed)
		sw.opts.changed = make(chan struct{})
		sw.opts.mu.Unlock()
		sw.publishAll()
		st := *sw.state.Load()
		st.Updated = time.Now()
		sw.state.Store(&st)
	}
	sw.opts.readyOnce.Do(func() { close(sw.opts.ready) })
}

// readStateOptions queues a read of sw's state for its options, starting a reader when fewer than
// stateReaders run. sw.mu must be held.
func (w *Watcher) readStateOptions(sw *serviceWatch) {
	if sw.stateQueued {
		return
	}
	sw.stateQueued = true
	w.stateMu.Lock()
	defer w.stateMu.Unlock()
	w.stateQueue = append(w.stateQueue, sw)
	if w.stateReaders < stateReaders && w.ctx.Err() == nil {
		w.stateReaders++
		w.wg.Add(1)
		go w.runStateReader()
	}
}

// runStateReader reads queued services' states for their options until the queue is empty.
func (w *Watcher) runStateReader() {
	defer w.wg.Done()
	failures := 0
	for {
		w.stateMu.Lock()
		if len(w.stateQueue) == 0 || w.ctx.Err() != nil {
			w.stateReaders--
			w.stateMu.Unlock()
			return
		}
		sw := w.stateQueue[0]
		w.stateQueue[0] = nil
		w.stateQueue = w.stateQueue[1:]
		w.stateMu.Unlock()

		o, err := w.readState(sw.name)
		if w.ctx.Err() != nil {
			continue // ends the loop above
		}
		if err != nil && consulclient.IsPermissionDenied(err) {
			// The token may not read the state: decide with the defaults (and the overrides).
			sw.opts.err.Store(&err)
			o, err = gray.Options{}, nil
		}
		if err != nil {
			sw.opts.err.Store(&err)
			failures++
			w.stateMu.Lock()
			w.stateQueue = append(w.stateQueue, sw) // still queued: asked again after a pause
			w.stateMu.Unlock()
			retry.Sleep(w.ctx, retry.Backoff(w.backoffFirst, w.backoffMax, failures))
			continue
		}
		failures = 0
		sw.mu.Lock()
		sw.stateOptions, sw.stateQueued = &o, false
		sw.mu.Unlock()
		w.resolveOptions(sw)
	}
}

// readState reads a service's state, without blocking, for the options recorded there.
func (w *Watcher) readState(service string) (gray.Options, error) {
	key := record.StateKey(w.prefix, service)
	pair, _, err := w.client.KV().Get(key, (&api.QueryOptions{}).WithContext(w.ctx))
	if err != nil {
		return gray.Options{}, w.refusal(consulclient.Redact(err, w.token))
	}
	var o gray.Options
	if pair == nil {
		return o, nil
	}
	var st record.State
	if err := json.Unmarshal(pair.Value, &st); err != nil {
		// The registrar refuses to plan from it, and status reports it; until it is repaired
		// the service's views wait (or keep the options last seen).
		return o, fmt.Errorf("watch: the recorded state of %s in KV key %s does not decode (%v): its decision options are unknown", service, key, err)
	}
	if st.Options != nil && st.Options.Validate() == nil {
		o = *st.Options
	}
	return o, nil
}
