// Package portal is graylane's release portal: one web page that shows every service's lanes,
// instances, problems, drift and history, explains how a request would be routed, and makes the
// changes the graylane command makes (weight, promote, rollback, drain, undo of a history entry)
// through the same registrar, after a confirmation that shows the planned before and after. It
// lists the user segments too, and adds and removes a segment's values the same way (segments.go).
// Pages follow Consul live: a watch.Watcher and blocking queries on the recorded state and on the
// segments feed server-sent events.
//
// Every page needs a signed-in operator (see LoadPasswords), state-changing requests carry a
// per-session token and must come from the portal's own pages, no Consul token or password reaches
// a page, and a read-only portal refuses every change.
package portal

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/retry"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

//go:embed web/templates/*.html
var templateFS embed.FS

//go:embed web/static
var staticFS embed.FS

// Config configures a portal Server.
type Config struct {
	// Consul is the agent configuration (nil: registrar.NewConfig("")). Its token never reaches a page.
	Consul *api.Config
	// KVPrefix is the KV folder of the recorded state and history (default registrar.DefaultKVPrefix).
	KVPrefix string
	// Passwords are the operators who may sign in. Required unless Open.
	Passwords *Passwords
	// ReadOnly shows everything and changes nothing: no action forms, every change refused.
	ReadOnly bool
	// Open serves pages without sign-in, for a dashboard on a wall; only together with ReadOnly.
	Open bool
	// DrainGrace is how long clients get to see a drain before the instance is deregistered
	// (default registrar.DefaultDrainGrace).
	DrainGrace time.Duration
	// Rollouts and Rates feed the rollout and per-lane rate panels (default: ConsulRollouts, the
	// rollouts of `graylane rollout` and their gate readings).
	Rollouts RolloutSource
	Rates    RateSource
	// Logf reports what operators should see in the portal's log: failed sign-ins (the operator
	// name and the client address, never the password). Default: the standard logger.
	Logf func(format string, args ...any)
	// Hosts are the host names (a port, if given, is ignored) an Open portal answers to; a request
	// naming another host gets 421, so that a page on another site cannot read the portal through
	// DNS rebinding. Empty: every host (for a portal behind a proxy that checks it).
	Hosts []string
}

// httpTimeouts bound how long a connection may hold the portal: the request's headers, the whole
// request with its body, and an idle keep-alive connection. They bound reading a request, not
// writing an answer, so a page's event stream goes on (TestConnectionsAreBounded).
type httpTimeouts struct {
	header, read, idle time.Duration
}

var defaultTimeouts = httpTimeouts{header: 10 * time.Second, read: 30 * time.Second, idle: 2 * time.Minute}

// HTTPServer returns an http.Server that serves the portal with its timeouts: 10 s for a
// request's headers, 30 s for the whole request, 2 minutes for an idle connection. Serve it on the
// listener of your choice; call Close on the portal after the server has shut down.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{Handler: s, ReadHeaderTimeout: s.timeouts.header, ReadTimeout: s.timeouts.read, IdleTimeout: s.timeouts.idle}
}

// Server is a running portal: its watches on Consul and its sessions. It is safe for concurrent use;
// Close stops every goroutine it started.
type Server struct {
	cfg      Config
	reader   *registrar.Registrar
	watcher  *watch.Watcher
	tmpl     *template.Template
	mux      *http.ServeMux
	sess     sessions
	signins  chan struct{} // bounds concurrent password checks
	throttle *signinThrottle
	timeouts httpTimeouts
	anon     *session // the session of every viewer of an open portal

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	regMu sync.Mutex
	regs  map[string]*registrar.Registrar // by operator

	mu       sync.Mutex
	services map[string]*watched
	names    []string // every service in the catalog but consul, sorted
	catErr   string   // the last error listing services, until the next success
	changed  chan struct{}
	version  uint64
	ready    chan struct{} // closed once the catalog has answered
	readyOne sync.Once
	segs     segmentsState // every segment's head, as followSegments last read them
	refusals refusalState  // the agent's refusals for its connection limit (refusals.go)

	ownRefused atomic.Uint64 // the portal's own requests the agent refused with 429 (noteRefusal)

	segReads   atomic.Uint64 // numbers the reads of the segment list (see readSegments)
	segMu      sync.Mutex
	segDetails map[string]*segmentDetail // segments' first values and history, by name (see segmentDetail)
}

// watched is one service the portal follows.
type watched struct {
	name   string
	cancel context.CancelFunc
	kick   chan struct{}
	view   *watch.ServiceView
	model  atomic.Pointer[serviceModel]
	reads  atomic.Uint64 // numbers the reads of the model, so that an older read never replaces a newer one
}

// read reads the service's model and stores it unless a read started later was stored already.
func (ws *watched) read(ctx context.Context, s *Server) bool {
	seq := ws.reads.Add(1)
	m := s.buildModel(ctx, ws.name, false) // stale only when this read fails (below)
	if ctx.Err() != nil {
		return false
	}
	m.seq = seq
	for {
		old := ws.model.Load()
		if old != nil && old.seq > seq {
			return false
		}
		if m.readFailed && old != nil && !old.readFailed {
			// Consul is away: keep showing the last state read, marked stale.
			last := *old
			last.Stale, last.seq = true, seq
			m = &last
		}
		if ws.model.CompareAndSwap(old, m) {
			return true
		}
	}
}

func (s *Server) logf(format string, args ...any) { s.cfg.Logf(format, args...) }

// New starts a portal: it begins to follow the catalog and every service in it.
func New(cfg Config) (*Server, error) {
	if cfg.Open && !cfg.ReadOnly {
		return nil, errors.New("portal: a portal without sign-in must be read-only")
	}
	if cfg.Passwords == nil && !cfg.Open {
		return nil, errors.New("portal: no password file: operators could not sign in")
	}
	if cfg.Consul == nil {
		cfg.Consul = registrar.NewConfig("")
	}
	if cfg.KVPrefix == "" {
		cfg.KVPrefix = registrar.DefaultKVPrefix
	}
	if cfg.DrainGrace == 0 {
		cfg.DrainGrace = registrar.DefaultDrainGrace
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	s := &Server{cfg: cfg, regs: map[string]*registrar.Registrar{}, services: map[string]*watched{},
		changed: make(chan struct{}), ready: make(chan struct{}), segDetails: map[string]*segmentDetail{}, signins: make(chan struct{}, 2), throttle: newSigninThrottle(), timeouts: defaultTimeouts, sess: sessions{byID: map[string]*session{}}}
	if cfg.Open {
		s.anon = &session{id: randomID(), operator: "viewer", csrf: randomID(), expires: time.Now().Add(100 * 365 * 24 * time.Hour), plans: map[string]*pending{}}
	}
	var err error
	if s.reader, err = s.registrarFor("portal"); err != nil {
		return nil, err
	}
	if s.cfg.Rollouts == nil || s.cfg.Rates == nil {
		c := NewConsulRollouts(s.reader)
		if s.cfg.Rollouts == nil {
			s.cfg.Rollouts = c
		}
		if s.cfg.Rates == nil {
			s.cfg.Rates = c
		}
	}
	// The watcher logs a refusal by the agent's connection limit at most once a minute: the
	// portal's log says it too, beside the banner on every page.
	if s.watcher, err = watch.New(cfg.Consul, watch.WithKVPrefix(cfg.KVPrefix), watch.WithWaitTime(time.Minute),
		watch.WithLogger(cfg.Logf)); err != nil {
		return nil, err
	}
	s.refusals.Agent = agentURL(cfg.Consul.Address, consulclient.Scheme(cfg.Consul))
	s.refusals.HTTPS = consulclient.Scheme(cfg.Consul) == consulclient.SchemeHTTPS
	s.tmpl, err = template.New("").Funcs(funcs).ParseFS(templateFS, "web/templates/*.html")
	if err != nil {
		return nil, err
	}
	s.routes()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(4)
	go s.followCatalog()
	go s.followRecords()
	go s.followSegments()
	go s.followRefusals()
	return s, nil
}

// Close stops following Consul, ends open event streams and waits for every goroutine.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	err := s.watcher.Close()
	// Consul limits the connections of one client address: give back the idle ones.
	if t := s.cfg.Consul.Transport; t != nil {
		t.CloseIdleConnections()
	}
	return err
}

// ServeHTTP serves the portal.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Open && len(s.cfg.Hosts) > 0 && !hostAllowed(r.Host, s.cfg.Hosts) {
		http.Error(w, "this portal does not answer to host "+r.Host, http.StatusMisdirectedRequest)
		return
	}
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	s.mux.ServeHTTP(w, r)
}

// hostAllowed reports whether the request's host, without its port, is one of hosts.
func hostAllowed(host string, hosts []string) bool {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.Trim(name, "[]")
	for _, allowed := range hosts {
		if h, _, err := net.SplitHostPort(allowed); err == nil {
			allowed = h
		}
		if strings.EqualFold(name, strings.Trim(allowed, "[]")) {
			return true
		}
	}
	return false
}

// Notify tells the portal that a service's rollout or rates changed, so that open pages update.
func (s *Server) Notify(service string) {
	s.mu.Lock()
	ws := s.services[service]
	s.mu.Unlock()
	if ws != nil {
		kick(ws.kick)
	}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// registrarFor returns the registrar that records changes under an operator's name.
func (s *Server) registrarFor(operator string) (*registrar.Registrar, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if r, ok := s.regs[operator]; ok {
		return r, nil
	}
	r, err := registrar.New(s.cfg.Consul, registrar.WithKVPrefix(s.cfg.KVPrefix), registrar.WithOperator(operator))
	if err != nil {
		return nil, err
	}
	s.regs[operator] = r
	return r, nil
}

// broadcast wakes every open event stream. s.mu must be held.
func (s *Server) broadcast() {
	s.version++
	close(s.changed)
	s.changed = make(chan struct{})
}

// followCatalog follows the list of services with a blocking query and watches each service in it.
func (s *Server) followCatalog() {
	defer s.wg.Done()
	client := s.reader.Client()
	var index uint64
	failures := 0
	for {
		svcs, meta, err := client.Catalog().Services((&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(s.ctx))
		if s.ctx.Err() != nil {
			s.mu.Lock()
			for _, ws := range s.services {
				ws.cancel()
			}
			s.mu.Unlock()
			return
		}
		if err != nil {
			failures++
			index = 0
			s.noteRefusal(err)
			s.mu.Lock()
			s.catErr = "Consul cannot be reached; the page shows the last state read"
			if consulclient.IsConnLimit(err) {
				s.catErr = "Consul refuses this portal's connections (429 Too Many Requests); the page shows the last state read"
			}
			s.broadcast()
			s.mu.Unlock()
			s.readyOne.Do(func() { close(s.ready) }) // pages need not wait for an answer that may not come
			retry.Sleep(s.ctx, time.Duration(min(failures, 20))*250*time.Millisecond)
			continue
		}
		failures = 0
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		var names []string
		for name := range svcs {
			if name != "consul" {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		s.mu.Lock()
		recovered := s.catErr != ""
		changed := !slices.Equal(names, s.names) || recovered
		s.names, s.catErr = names, ""
		if recovered { // Consul is back: read every service again, the stale marks go
			for _, ws := range s.services {
				kick(ws.kick)
			}
		}
		for _, name := range names {
			if _, ok := s.services[name]; !ok {
				s.watch(name)
			}
		}
		for name, ws := range s.services {
			if !slices.Contains(names, name) {
				ws.cancel()
				delete(s.services, name)
			}
		}
		if changed {
			s.broadcast()
		}
		s.mu.Unlock()
		s.readyOne.Do(func() { close(s.ready) })
	}
}

// followRecords follows every service's recorded state, history and rollout with one blocking query
// on the key names under the KV folder, so that the portal holds no more connections per service
// than its watcher does, however many services there are. A change of a service's keys (a new
// history entry comes with every change of its record) refreshes that service; a change of values
// alone is the outcome written into a history entry after its change was applied, which refreshes
// the services whose latest entry still says "recorded".
func (s *Server) followRecords() {
	defer s.wg.Done()
	kv := s.reader.Client().KV()
	prefix := s.cfg.KVPrefix + "/services/"
	var index uint64
	last := map[string]string{}
	for {
		keys, meta, err := kv.Keys(prefix, "", (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(s.ctx))
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			index = 0
			s.noteRefusal(err)
			retry.Sleep(s.ctx, time.Second)
			continue
		}
		if meta.LastIndex == index {
			continue
		}
		first := index == 0
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		byService := map[string][]string{}
		for _, k := range keys {
			if name, _, ok := strings.Cut(strings.TrimPrefix(k, prefix), "/"); ok {
				byService[name] = append(byService[name], k)
			}
		}
		now := map[string]string{}
		for name, ks := range byService {
			now[name] = strings.Join(ks, "\n")
		}
		s.mu.Lock()
		for name, ws := range s.services {
			m := ws.model.Load()
			pending := m != nil && len(m.History) > 0 && m.History[0].Outcome == registrar.OutcomeRecorded
			// A rollout's state changes its value only (step, readings, pause): follow it on every move.
			rolling := strings.Contains(now[name], "/"+name+"/rollout")
			if !first && (now[name] != last[name] || pending || rolling) {
				kick(ws.kick)
			}
		}
		s.mu.Unlock()
		last = now
	}
}

// watch starts following a service: its instances through the watcher, and a goroutine that reads
// the model anew on each change (followRecords adds the changes of its record and history). s.mu
// must be held.
func (s *Server) watch(name string) {
	ctx, cancel := context.WithCancel(s.ctx)
	ws := &watched{name: name, cancel: cancel, kick: make(chan struct{}, 1), view: s.watcher.Service(name)}
	s.services[name] = ws
	s.wg.Add(2)
	go func() { // instances: health, meta, registrations
		defer s.wg.Done()
		for {
			select {
			case <-ws.view.Changed():
				kick(ws.kick)
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { // the model
		defer s.wg.Done()
		kick(ws.kick)
		for {
			select {
			case <-ws.kick:
			case <-ctx.Done():
				return
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			stored := ws.read(rctx, s)
			cancel()
			if !stored {
				continue
			}
			s.mu.Lock()
			s.broadcast()
			s.mu.Unlock()
		}
	}()
}

// refresh reads a service's model now, so that the next page shows a change just made.
func (s *Server) refresh(name string) {
	s.mu.Lock()
	ws := s.services[name]
	s.mu.Unlock()
	if ws == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if !ws.read(ctx, s) {
		return
	}
	s.mu.Lock()
	s.broadcast()
	s.mu.Unlock()
}

// snapshot is the state every page is rendered from: the models as last read.
type snapshot struct {
	version  uint64
	changed  <-chan struct{}
	catErr   string
	models   []*serviceModel // every service in the catalog, by name; nil models not read yet
	names    []string
	segs     segmentsState
	refusals refusalState
}

func (s *Server) snapshot() snapshot {
	select { // the first pages after start wait for the catalog, briefly
	case <-s.ready:
	case <-time.After(5 * time.Second):
	case <-s.ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := snapshot{version: s.version, changed: s.changed, catErr: s.catErr, names: s.names, segs: s.segs, refusals: s.refusals}
	for _, name := range s.names {
		var m *serviceModel
		if ws := s.services[name]; ws != nil {
			m = ws.model.Load()
		}
		sn.models = append(sn.models, m)
	}
	return sn
}

var funcs = template.FuncMap{
	"laneColor": laneColor,
	"confirmData": func(d pageData, c *confirmView) any {
		return struct {
			D pageData
			C *confirmView
		}{d, c}
	},
	"seq": func(n int) []int {
		out := make([]int, 0, min(max(n, 0), 100))
		for i := 1; i <= n && i <= 100; i++ {
			out = append(out, i)
		}
		return out
	},
	"thousands": thousands,
	"pct":       func(f float64) string { return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", f), "0"), ".") },
	"utc":       func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") },
	"iso":       func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"unixms":    func(t time.Time) int64 { return t.UnixMilli() },
	"until": func(t time.Time) string {
		if t.IsZero() {
			return "waiting"
		}
		d := time.Until(t).Round(time.Second)
		if d < 0 {
			d = 0
		}
		return d.String()
	},
}

var staticFiles, _ = fs.Sub(staticFS, "web/static")
