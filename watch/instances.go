package watch

// Instance queries without a goroutine per service.
//
// Over the agent's HTTPS port a watcher sends its services' blocking queries through an
// event-driven HTTP/2 client (consulclient.Mux): a query is sent, the watcher moves on, and the
// answer arrives in a callback on one of the client's few workers, which takes it (answered, the
// same code as the blocking loop's) and sends the next query, or arms a timer for the pause before
// it. Nothing waits per service: 2,000 services cost the client's readers and workers, not 2,000
// goroutines blocked in net/http and 2,000 more in its HTTP/2 transport.
//
// Each service's chain of queries holds one count of the watcher's WaitGroup from its start until
// it ends: when the watcher's context is done, at the next callback or instead of the next timer.
// An agent that does not negotiate HTTP/2 sends the service (and every service after it) back to a
// goroutine with a blocking loop.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consulclient"
)

// answerMargin is how long past its wait time (and Consul's jitter of up to a sixteenth of it) a
// blocking query may go unanswered before it fails and is asked again.
const answerMargin = 30 * time.Second

// startInstances starts following sw's instances: through the event-driven client when the
// watcher has one, else in a goroutine. w.mu must be held.
func (w *Watcher) startInstances(sw *serviceWatch) {
	w.wg.Add(1)
	if w.mux != nil && !w.muxOff.Load() {
		w.askInstances(sw, &instanceLoop{}, instancesQuery{})
		return
	}
	go w.runInstances(sw)
}

// askInstances sends q for sw through the event-driven client, after q's pause; the callback takes
// the answer and asks the next query. The chain holds one count of w.wg, released when it ends.
func (w *Watcher) askInstances(sw *serviceWatch, l *instanceLoop, q instancesQuery) {
	if q.pause > 0 {
		next := q
		next.pause = 0
		w.after(q.pause, func() { w.askInstances(sw, l, next) })
		return
	}
	query := url.Values{"passing": {"1"}}
	// A query that does not wait gives up as the blocking loop's client does (AnswerTimeout); a
	// blocking one once its wait, Consul's jitter and a margin have passed.
	timeout := consulclient.AnswerTimeout
	if !q.reask {
		if q.index > 0 {
			query.Set("index", strconv.FormatUint(q.index, 10))
		}
		query.Set("wait", fmt.Sprintf("%dms", max(w.waitTime/time.Millisecond, 1)))
		timeout = w.waitTime + w.waitTime/16 + answerMargin
	}
	w.mux.Get(w.ctx, "/v1/health/service/"+url.PathEscape(sw.name), query, timeout, func(resp *consulclient.Response, err error) {
		if w.ctx.Err() != nil {
			w.wg.Done()
			return
		}
		if errors.Is(err, consulclient.ErrNotHTTP2) {
			// The agent speaks HTTP/1.1 only: a goroutine per service, as over plain HTTP.
			w.muxOff.Store(true)
			go func() {
				defer w.wg.Done()
				w.followInstances(sw, l, q)
			}()
			return
		}
		entries, meta, err := decodeHealthService(resp, err)
		w.askInstances(sw, l, w.answered(sw, l, entries, meta, err, q.reask))
	})
}

// after runs f after d on a timer, or, when the watcher closes first, releases the chain's count
// of w.wg instead. Exactly one of the two happens.
func (w *Watcher) after(d time.Duration, f func()) {
	armed := make(chan struct{})
	var stopWatching func() bool
	t := time.AfterFunc(d, func() {
		<-armed
		stopWatching()
		if w.ctx.Err() != nil {
			w.wg.Done()
			return
		}
		f()
	})
	stopWatching = context.AfterFunc(w.ctx, func() {
		if t.Stop() {
			w.wg.Done() // the timer will not run
		}
	})
	close(armed)
}

// decodeHealthService reads an answer to /v1/health/service/NAME as the api package does: the
// entries, and the index and ACL filtering from the headers; a status other than 200 is an
// api.StatusError.
func decodeHealthService(resp *consulclient.Response, err error) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if err != nil {
		return nil, nil, err
	}
	if resp.Status != 200 {
		return nil, nil, api.StatusError{Code: resp.Status, Body: strings.TrimSpace(string(resp.Body))}
	}
	index, perr := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if perr != nil {
		// Without an index the next query would not block: fail, and ask again after a pause.
		return nil, nil, fmt.Errorf("watch: the agent's answer has no valid X-Consul-Index (%q)", resp.Header.Get("X-Consul-Index"))
	}
	var entries []*api.ServiceEntry
	if err := json.Unmarshal(resp.Body, &entries); err != nil {
		return nil, nil, fmt.Errorf("watch: the agent's answer does not decode: %v", err)
	}
	meta := &api.QueryMeta{LastIndex: index, ResultsFilteredByACLs: resp.Header.Get("X-Consul-Results-Filtered-By-ACLs") == "true"}
	return entries, meta, nil
}
