package portal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/explain"
	"github.com/graylane/graylane/registrar"
)

// pageData is what a page, or one region of it, is rendered from.
type pageData struct {
	Operator string
	CSRF     string
	ReadOnly bool
	Open     bool
	Version  uint64
	CatErr   string
	// Refused is the Consul agent's refusals of the portal's requests for its connection limit;
	// nil while there have been none.
	Refused  *refusalState
	Nav      []navItem
	Hidden   int // services without gray meta, not listed
	Service  string
	Model    *serviceModel
	Flash    *flash
	Confirm  *confirmView
	Explain  *explainView
	LoginErr string
	Next     string
	NotFound bool
	// The segment pages: the list of every segment, or one segment with its confirmation.
	SegNav     segmentNav
	Segments   *segmentListView
	Segment    *segmentView
	SegConfirm *segmentConfirmView

	changed <-chan struct{} // closed when the models change after this data was taken
	models  []*serviceModel // every service's model, for the lanes that name a segment
	segs    segmentsState   // the segment list the page was built from
}

type navItem struct {
	Name     string
	Current  bool
	Lanes    []laneView
	Problems int
	Drift    bool
	Err      bool
}

type confirmView struct {
	ID, Action string
	Rows       []changeView
	Rules      []rulesChange // instances whose match rules change, with the rules in words
	Notes      []string
	Effect     string // what the change does for this service, where that depends on it
}

// rulesChange is one instance's match rules before and after a planned change.
type rulesChange struct {
	Instance      string
	Before, After []string
}

type explainView struct {
	Headers, Cookie, Path, Query, Method, IP, Lane, Key string
	Res                                                 *explain.Result
	Color                                               string
	Err                                                 string
}

const maxForm = 64 << 10

func (s *Server) routes() {
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(staticFiles)))
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", s.authed(s.logout, true))
	mux.HandleFunc("GET /{$}", s.authed(s.index, false))
	mux.HandleFunc("GET /s/{service}", s.authed(s.servicePage, false))
	mux.HandleFunc("POST /s/{service}/plan", s.authed(s.plan, true))
	mux.HandleFunc("POST /s/{service}/confirm", s.authed(s.confirm, true))
	mux.HandleFunc("POST /s/{service}/cancel", s.authed(s.cancelPlan, true))
	mux.HandleFunc("POST /s/{service}/explain", s.authed(s.explain, true))
	mux.HandleFunc("GET /segments", s.authed(s.segmentsPage, false))
	mux.HandleFunc("GET /segments/{$}", s.authed(s.segmentsPage, false))
	mux.HandleFunc("GET /segments/{segment}", s.authed(s.segmentPage, false))
	mux.HandleFunc("POST /segments/{segment}/plan", s.authedLimit(s.planSegment, true, maxSegmentForm,
		"the list is longer than the form takes; graylane segment add NAME -f FILE takes a file of any length"))
	mux.HandleFunc("POST /segments/{segment}/confirm", s.authed(s.confirmSegment, true))
	mux.HandleFunc("POST /segments/{segment}/cancel", s.authed(s.cancelSegmentPlan, true))
	mux.HandleFunc("GET /events", s.authed(s.events, false))
	s.mux = mux
}

// authed wraps a handler that needs a signed-in operator; post handlers also need the CSRF token.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, *session), post bool) http.HandlerFunc {
	return s.authedLimit(h, post, maxForm, "")
}

// authedLimit is authed with a limit on the size of a posted form; tooBig says what to do instead.
func (s *Server) authedLimit(h func(http.ResponseWriter, *http.Request, *session), post bool, limit int64, tooBig string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess := s.sess.get(r)
		if sess == nil && s.cfg.Open {
			sess = s.anon // every viewer of an open (read-only) portal shares one session
		}
		if sess == nil {
			if r.Method == http.MethodGet && r.URL.Path != "/events" {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "sign in first", http.StatusUnauthorized)
			return
		}
		if post {
			r.Body = http.MaxBytesReader(w, r.Body, limit)
			if err := r.ParseForm(); err != nil {
				var large *http.MaxBytesError
				if errors.As(err, &large) && tooBig != "" {
					http.Error(w, fmt.Sprintf("refused: the form is larger than %d KiB: %s; nothing was changed", limit>>10, tooBig), http.StatusRequestEntityTooLarge)
					return
				}
				http.Error(w, "bad form", http.StatusBadRequest)
				return
			}
			if !checkCSRF(r, sess) {
				http.Error(w, "refused: the request does not carry this session's CSRF token (reload the page and try again)", http.StatusForbidden)
				return
			}
		}
		h(w, r, sess)
	}
}

func (s *Server) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		http.Error(w, "rendering the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// safeNext keeps a post-sign-in redirect on this site.
func safeNext(next string) string {
	// Browsers drop tabs and newlines from a URL and read '\' as '/': "/\t/evil.example/" and
	// "/\\evil.example" are other hosts to them. Only a plain path on the portal itself passes.
	if strings.ContainsFunc(next, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' || unicode.IsSpace(r) }) {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.User != nil || u.Host != "" || u.Opaque != "" ||
		!strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(u.Path, "/events") {
		return "/"
	}
	return next
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Open || s.sess.get(r) != nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	s.render(w, http.StatusOK, "login", pageData{Next: safeNext(r.URL.Query().Get("next"))})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil || !sameOrigin(r) || s.cfg.Open {
		http.Error(w, "refused", http.StatusForbidden)
		return
	}
	name, password, next := strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("password"), safeNext(r.PostFormValue("next"))
	addr := clientAddr(r)
	if s.refuseSignin(w, name, addr, next) {
		return
	}
	// Password checks are slow on purpose; at most two run at once, so that a flood of sign-in
	// attempts cannot take the portal's CPU.
	select {
	case s.signins <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	if s.refuseSignin(w, name, addr, next) { // blocked while this attempt waited for its turn
		<-s.signins
		return
	}
	ok := s.cfg.Passwords.check(name, password)
	<-s.signins
	if !ok {
		s.throttle.failed(name, addr)
		s.logf("portal: failed sign-in as %q from %s", name, addr)
		s.render(w, http.StatusUnauthorized, "login", pageData{Next: next, LoginErr: "Unknown operator or wrong password."})
		return
	}
	s.throttle.succeeded(name, addr)
	sess := s.sess.create(name)
	setSessionCookie(w, r, sess.id, int(SessionTTL/time.Second))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// refuseSignin answers 429 to a sign-in as name from addr while the throttle blocks either, and
// reports whether it did.
func (s *Server) refuseSignin(w http.ResponseWriter, name, addr, next string) bool {
	wait := s.throttle.wait(name, addr)
	if wait <= 0 {
		return false
	}
	secs := int((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	s.render(w, http.StatusTooManyRequests, "login", pageData{Next: next,
		LoginErr: fmt.Sprintf("Too many failed sign-ins for this operator or from this address: try again in %d s.", secs)})
	return true
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, sess *session) {
	s.sess.drop(sess.id)
	setSessionCookie(w, r, "", -1)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// page builds the data of a page for a session from the models as last read.
func (s *Server) page(ctx context.Context, sess *session, service string) pageData {
	sn := s.snapshot()
	d := pageData{Operator: sess.operator, CSRF: sess.csrf, ReadOnly: s.cfg.ReadOnly, Open: s.cfg.Open,
		Version: sn.version, CatErr: sn.catErr, Service: service, changed: sn.changed, segs: sn.segs,
		SegNav: segmentNav{Known: sn.segs.known, Count: len(sn.segs.list)}}
	if sn.refusals.Count > 0 {
		d.Refused = &sn.refusals
	}
	for i, name := range sn.names {
		m := sn.models[i]
		if m == nil {
			m = s.buildModel(ctx, name, false) // not read by its watch yet
		}
		d.models = append(d.models, m)
		if name == service {
			d.Model = m
		}
		if m != nil && !m.Gray && name != service {
			d.Hidden++
			continue
		}
		item := navItem{Name: name, Current: name == service, Lanes: m.Lanes, Problems: len(m.Problems), Drift: len(m.Drift) > 0, Err: m.Err != ""}
		d.Nav = append(d.Nav, item)
	}
	return d
}

func (s *Server) index(w http.ResponseWriter, r *http.Request, sess *session) {
	d := s.page(r.Context(), sess, "")
	if len(d.Nav) > 0 {
		http.Redirect(w, r, "/s/"+url.PathEscape(d.Nav[0].Name), http.StatusSeeOther)
		return
	}
	s.render(w, http.StatusOK, "page", d)
}

func (s *Server) servicePage(w http.ResponseWriter, r *http.Request, sess *session) {
	service := r.PathValue("service")
	d := s.page(r.Context(), sess, service)
	sess.mu.Lock()
	d.Flash, sess.flash = sess.flash, nil
	if id := r.URL.Query().Get("confirm"); id != "" {
		if p := sess.plans[id]; p != nil && p.segment == nil && p.service == service {
			d.Confirm = confirmOf(p)
		}
	}
	sess.mu.Unlock()
	if d.Model == nil {
		d.NotFound = true
		s.render(w, http.StatusNotFound, "page", d)
		return
	}
	s.render(w, http.StatusOK, "page", d)
}

func confirmOf(p *pending) *confirmView {
	c := &confirmView{ID: p.id}
	if p.plan != nil {
		c.Action = p.plan.Action
		for _, ch := range p.plan.Changes {
			c.Rows = append(c.Rows, changeView{ch.ID, describeMeta(ch.Before), describeMeta(ch.After)})
			if gray.RulesJSON(ch.Before.Match) != gray.RulesJSON(ch.After.Match) {
				c.Rules = append(c.Rules, rulesChange{ch.ID, readableRules(ch.Before.Match), readableRules(ch.After.Match)})
			}
		}
		c.Notes, c.Effect = p.plan.Notes, p.plan.Effect
		return c
	}
	if p.rollout != nil {
		c.Action = "rollout " + p.rollout.action
		c.Rows = []changeView{{"rollout of " + p.rollout.lane, p.rollout.before, p.rollout.after}}
		c.Notes = []string{p.rollout.note}
		return c
	}
	c.Action = "drain " + p.drain.instance
	c.Rows = []changeView{{p.drain.instance, p.drain.before, p.drain.after}}
	if p.drain.keep {
		c.Notes = []string{"the instance stays registered, with weight 0 and no new traffic"}
	} else {
		c.Notes = []string{"once the catalog shows the drain, clients get " + p.drain.grace.String() + " to see it; then the instance is deregistered"}
	}
	return c
}

func (s *Server) setFlash(sess *session, kind, format string, args ...any) {
	sess.mu.Lock()
	sess.flash = &flash{Kind: kind, Text: fmt.Sprintf(format, args...)}
	sess.mu.Unlock()
}

func serviceURL(service string) string { return "/s/" + url.PathEscape(service) }

// pendingTTL bounds how long a planned change waits for its confirmation.
const pendingTTL = 10 * time.Minute

func (s *Server) plan(w http.ResponseWriter, r *http.Request, sess *session) {
	service := r.PathValue("service")
	if s.cfg.ReadOnly {
		http.Error(w, "refused: this portal is read-only", http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	lane := strings.TrimSpace(r.PostFormValue("lane"))
	var op registrar.Op
	switch r.PostFormValue("op") {
	case "weight":
		wt, err := gray.ParseWeight(strings.TrimSuffix(strings.TrimSpace(r.PostFormValue("weight")), "%"))
		if err != nil {
			s.setFlash(sess, "error", "weight %q for lane %s: %v", r.PostFormValue("weight"), lane, err)
			http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
			return
		}
		op = registrar.SetWeight{Lane: lane, Weight: wt}
	case "promote":
		op = registrar.Promote{Lane: lane}
	case "rollback":
		op = registrar.Rollback{Lane: lane}
	case "drain":
		s.planDrain(w, r, sess, service)
		return
	case "rollout-pause", "rollout-resume", "rollout-abort", "rollout-promote-now":
		s.planRollout(w, r, sess, service, strings.TrimPrefix(r.PostFormValue("op"), "rollout-"))
		return
	case "undo":
		undo, ok := s.undoOp(ctx, w, r, sess, service)
		if !ok {
			return
		}
		op, lane = undo, "" // an undo names an entry, not a lane
	default:
		http.Error(w, "unknown action", http.StatusBadRequest)
		return
	}
	// A lane a rollout drives changes through the rollout's controls only: the rollout's next step
	// would undo a change made beside it. The page hides the lane's buttons; the server refuses too.
	// An undo names no lane: the lanes it touches are known once it is planned (below).
	if lane != "" && s.refuseDriven(ctx, w, r, sess, service, []string{lane}) {
		return
	}
	reg, err := s.registrarFor(sess.operator)
	if err != nil {
		s.setFlash(sess, "error", "%v", err)
		http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
		return
	}
	p, err := reg.Plan(ctx, service, op)
	switch {
	case errors.Is(err, registrar.ErrUnchanged):
		s.setFlash(sess, "info", "%s on %s: nothing to change, nothing recorded.", op, service)
	case err != nil:
		s.setFlash(sess, "error", "%v", err)
	default:
		if _, undo := op.(registrar.Restore); undo && s.refuseDriven(ctx, w, r, sess, service, touchedLanes(p)) {
			return
		}
		id := s.addPending(sess, &pending{service: service, plan: p})
		http.Redirect(w, r, serviceURL(service)+"?confirm="+id+"#confirm", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
}

// refuseDriven refuses a change to lanes when a running rollout of the service drives one of them,
// as `graylane` does without --force, and reports whether it did. A rollout source that cannot
// answer is an unknown, not "no rollout": the change is refused with the source's error.
func (s *Server) refuseDriven(ctx context.Context, w http.ResponseWriter, r *http.Request, sess *session, service string, lanes []string) bool {
	if s.cfg.Rollouts == nil {
		return false
	}
	ro, err := s.cfg.Rollouts.Rollout(ctx, service)
	switch {
	case err != nil:
		s.setFlash(sess, "error", "Nothing was planned: reading the rollout of %s, which may drive lane %s: %v", service, strings.Join(lanes, ", "), err)
	case ro == nil || ro.Done || ro.Lane == "" || !slices.Contains(lanes, ro.Lane):
		return false
	default:
		s.setFlash(sess, "error", "lane %s of %s is driven by a rollout: use its controls (pause, abort, promote now)", ro.Lane, service)
	}
	http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
	return true
}

// touchedLanes returns the lanes a plan takes instances out of or puts them into.
func touchedLanes(p *registrar.Plan) []string {
	var lanes []string
	for _, c := range p.Changes {
		for _, lane := range []string{c.Before.LaneName(), c.After.LaneName()} {
			if !slices.Contains(lanes, lane) {
				lanes = append(lanes, lane)
			}
		}
	}
	return lanes
}

// undoOp finds the history entry an undo names and returns the change that undoes it, as
// `graylane undo` does. The form names the entry by its time exactly as the history records it
// (the entry's "time", RFC 3339 with nanoseconds), which the page puts in each entry's undo form.
// A request that names no entry of the service, or one that changed no instance, is answered here
// with a 4xx and the page saying why; ok is false then.
func (s *Server) undoOp(ctx context.Context, w http.ResponseWriter, r *http.Request, sess *session, service string) (op registrar.Restore, ok bool) {
	raw := strings.TrimSpace(r.PostFormValue("entry"))
	if raw == "" {
		s.refuse(w, r, sess, service, http.StatusBadRequest, "Undo on %s: the request names no history entry.", service)
		return op, false
	}
	at, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		s.refuse(w, r, sess, service, http.StatusBadRequest, "Undo on %s: %q is not the time of a history entry (RFC 3339, as the history records it).", service, raw)
		return op, false
	}
	hist, err := s.reader.History(ctx, service)
	var partial *registrar.HistoryError
	if err != nil && !errors.As(err, &partial) {
		s.setFlash(sess, "error", "Undo on %s: %v", service, err)
		http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
		return op, false
	}
	var found []registrar.HistoryEntry
	for _, h := range hist {
		if h.Time.Equal(at) {
			found = append(found, h)
		}
	}
	switch {
	case len(found) == 0 && partial != nil:
		s.refuse(w, r, sess, service, http.StatusNotFound, "Undo on %s: no readable history entry of %s has the time %s (%v).", service, service, raw, partial)
		return op, false
	case len(found) == 0:
		s.refuse(w, r, sess, service, http.StatusNotFound, "Undo on %s: %s has no history entry at %s.", service, service, raw)
		return op, false
	case len(found) > 1:
		s.refuse(w, r, sess, service, http.StatusConflict, "Undo on %s: %d history entries of %s have the time %s; the page cannot tell which one to undo.", service, len(found), service, raw)
		return op, false
	}
	h := found[0]
	op, err = registrar.UndoOf(h)
	switch {
	case errors.Is(err, registrar.ErrUnchanged):
		s.refuse(w, r, sess, service, http.StatusUnprocessableEntity,
			"Undo on %s: the history entry %q of %s at %s UTC changed no instance (it records an event or a change of options): there is nothing to undo.",
			service, h.Action, service, h.Time.UTC().Format(time.DateTime))
		return op, false
	case err != nil:
		s.refuse(w, r, sess, service, http.StatusUnprocessableEntity, "Undo on %s: %v", service, err)
		return op, false
	}
	return op, true
}

// refuse answers a request the portal cannot act on with status and the service's page, the reason
// shown where the outcome of a change is shown.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, sess *session, service string, status int, format string, args ...any) {
	d := s.page(r.Context(), sess, service)
	d.Flash = &flash{Kind: "error", Text: fmt.Sprintf(format, args...)}
	if d.Model == nil {
		d.NotFound, status = true, http.StatusNotFound
	}
	s.render(w, status, "page", d)
}

func (s *Server) addPending(sess *session, p *pending) string {
	p.id, p.made = randomID()[:16], time.Now()
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for id, old := range sess.plans {
		if time.Since(old.made) > pendingTTL {
			delete(sess.plans, id)
		}
	}
	sess.plans[p.id] = p
	return p.id
}

// planDrain shows what a drain will do. The registrar plans a drain when it runs it (it waits and
// deregisters too), so the preview is computed from the instance as the record has it now; the
// confirmation refuses to drain an instance whose gray meta changed since.
func (s *Server) planDrain(w http.ResponseWriter, r *http.Request, sess *session, service string) {
	id := strings.TrimSpace(r.PostFormValue("instance"))
	st, err := s.reader.Status(r.Context(), service, gray.Options{})
	if err != nil {
		s.setFlash(sess, "error", "%v", err)
		http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
		return
	}
	for _, inst := range st.Instances {
		if inst.ID != id {
			continue
		}
		before, after := inst.Gray, inst.Gray
		if inst.GrayErr != nil {
			before, after = gray.Meta{}, gray.Meta{}
		}
		after.Drain, after.Weight = true, 0
		dp := &drainPlan{instance: id, keep: r.PostFormValue("keep") != "", grace: s.cfg.DrainGrace,
			before: describeMeta(before), after: describeMeta(after), meta: grayKeys(inst.Meta)}
		if inst.GrayErr != nil {
			dp.before = "invalid meta"
		}
		pid := s.addPending(sess, &pending{service: service, drain: dp})
		http.Redirect(w, r, serviceURL(service)+"?confirm="+pid+"#confirm", http.StatusSeeOther)
		return
	}
	s.setFlash(sess, "error", "service %s has no instance %q", service, id)
	http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
}

// planRollout shows what steering the service's rollout will do.
func (s *Server) planRollout(w http.ResponseWriter, r *http.Request, sess *session, service, action string) {
	if _, ok := s.cfg.Rollouts.(RolloutControl); !ok {
		http.Error(w, "this portal's rollout source cannot be steered", http.StatusBadRequest)
		return
	}
	ro, err := s.cfg.Rollouts.Rollout(r.Context(), service)
	if err == nil && (ro == nil || ro.Done) {
		err = fmt.Errorf("%s has no running rollout", service)
	}
	if err != nil {
		s.setFlash(sess, "error", "%v", err)
		http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
		return
	}
	now := fmt.Sprintf("step %d of %d, weight %s %%, %s", ro.Step, ro.Steps, ro.Weight, ro.State)
	rp := &rolloutPlan{action: action, lane: ro.Lane, before: now}
	switch action {
	case "pause":
		rp.after, rp.note = "paused where it is", "no gate readings and no step change until it is resumed; the step keeps the time it has held"
	case "resume":
		rp.after, rp.note = "running again", "the step holds for the rest of its time, then the gates decide"
	case "abort":
		rp.after, rp.note = "aborted: lane "+ro.Lane+" back to weight 0 (test traffic only)", "the rollout ends; its controller stops"
	case "promote-now":
		rp.after, rp.note = "promoted: lane "+ro.Lane+" becomes the base", "the rollout ends without the remaining steps and gates"
	}
	id := s.addPending(sess, &pending{service: service, rollout: rp})
	http.Redirect(w, r, serviceURL(service)+"?confirm="+id+"#confirm", http.StatusSeeOther)
}

func grayKeys(meta map[string]string) string {
	var b strings.Builder
	for k, v := range meta {
		if gray.IsMetaKey(k) {
			b.WriteString(k + "=" + v + "\x00")
		}
	}
	return b.String()
}

func (s *Server) cancelPlan(w http.ResponseWriter, r *http.Request, sess *session) {
	sess.mu.Lock()
	delete(sess.plans, r.PostFormValue("id"))
	sess.mu.Unlock()
	http.Redirect(w, r, serviceURL(r.PathValue("service")), http.StatusSeeOther)
}

func (s *Server) confirm(w http.ResponseWriter, r *http.Request, sess *session) {
	service := r.PathValue("service")
	if s.cfg.ReadOnly {
		http.Error(w, "refused: this portal is read-only", http.StatusForbidden)
		return
	}
	sess.mu.Lock()
	p := sess.plans[r.PostFormValue("id")]
	delete(sess.plans, r.PostFormValue("id"))
	sess.mu.Unlock()
	defer http.Redirect(w, r, serviceURL(service), http.StatusSeeOther)
	if p == nil || p.segment != nil || p.service != service || time.Since(p.made) > pendingTTL {
		s.setFlash(sess, "error", "That confirmation has expired or was used already; nothing was changed. Plan the change again.")
		return
	}
	reg, err := s.registrarFor(sess.operator)
	if err != nil {
		s.setFlash(sess, "error", "%v", err)
		return
	}
	// The change goes on when the browser leaves: only shutting the portal down stops it.
	ctx, cancel := context.WithTimeout(s.ctx, 60*time.Second)
	defer cancel()
	var res *registrar.Result
	action := ""
	switch {
	case p.plan != nil:
		action = p.plan.Action
		res, err = reg.Commit(ctx, p.plan)
	case p.rollout != nil:
		action = "rollout " + p.rollout.action
		err = s.cfg.Rollouts.(RolloutControl).Control(ctx, reg, service, p.rollout.action)
	default:
		action = "drain " + p.drain.instance
		if err = s.checkDrainBase(ctx, service, p.drain); err == nil {
			res, err = reg.Drain(ctx, p.drain.instance, registrar.DrainOptions{Service: service, Grace: p.drain.grace, Keep: p.drain.keep})
		}
	}
	s.flashResult(sess, service, action, res, err)
	s.refresh(service) // the page this redirects to shows the change
}

// checkDrainBase refuses a drain when the instance's gray meta changed after the preview was shown.
func (s *Server) checkDrainBase(ctx context.Context, service string, d *drainPlan) error {
	insts, _, err := s.reader.Instances(ctx, service)
	if err != nil {
		return err
	}
	for _, inst := range insts {
		if inst.ID == d.instance {
			if grayKeys(inst.Meta) != d.meta {
				return &registrar.ConflictError{Service: service, Action: "drain " + d.instance}
			}
			return nil
		}
	}
	return fmt.Errorf("%w: service %s has no instance %s any more", registrar.ErrNotFound, service, d.instance)
}

func (s *Server) flashResult(sess *session, service, action string, res *registrar.Result, err error) {
	var conflict *registrar.ConflictError
	var perm *registrar.PermissionError
	var apply *registrar.ApplyError
	switch {
	case err == nil:
		applied := ""
		if res != nil && len(res.Applied) > 0 {
			applied = " (" + strings.Join(res.Applied, ", ") + ")"
		}
		s.setFlash(sess, "ok", "%s on %s: done%s.", action, service, applied)
	case errors.As(err, &conflict):
		msg := fmt.Sprintf("Conflict: %s on %s was not made. The service changed after you planned it", action, service)
		if conflict.Last != nil {
			msg += fmt.Sprintf(" (%q by %s at %s UTC)", conflict.Last.Action, conflict.Last.Who, conflict.Last.Time.UTC().Format("15:04:05"))
		}
		s.setFlash(sess, "conflict", "%s. Nothing was changed; the page shows the current state. Plan the change again if it is still wanted.", msg)
	case errors.As(err, &perm):
		s.setFlash(sess, "error", "Refused by Consul: %v", perm)
	case errors.As(err, &apply):
		s.setFlash(sess, "error", "%s on %s was recorded but not applied to every instance: %v", action, service, apply)
	case errors.Is(err, registrar.ErrUnchanged):
		s.setFlash(sess, "info", "%s on %s: nothing to change, nothing recorded.", action, service)
	default:
		s.setFlash(sess, "error", "%s on %s failed: %v", action, service, err)
	}
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request, sess *session) {
	service := r.PathValue("service")
	ev := &explainView{Headers: r.PostFormValue("headers"), Cookie: r.PostFormValue("cookie"), Path: r.PostFormValue("path"),
		Query: r.PostFormValue("query"), Method: r.PostFormValue("method"), IP: r.PostFormValue("ip"),
		Lane: r.PostFormValue("lane"), Key: r.PostFormValue("key")}
	headers, err := explain.ParseHeaders(strings.Split(ev.Headers, "\n"))
	if err == nil {
		ev.Res, err = explain.Explain(r.Context(), s.reader, service, explain.Input{Headers: headers, Cookie: ev.Cookie,
			Path: ev.Path, Query: ev.Query, Method: ev.Method, IP: ev.IP, Lane: ev.Lane, Key: ev.Key})
	}
	if err != nil {
		ev.Err = err.Error()
	} else {
		ev.Color = laneColor(ev.Res.Lane)
	}
	d := s.page(r.Context(), sess, service)
	d.Explain = ev
	if d.Model == nil {
		d.NotFound = true
		s.render(w, http.StatusNotFound, "page", d)
		return
	}
	s.render(w, http.StatusOK, "page", d)
}

// pageRegions are the regions of a page that its event stream updates, by the name of their
// template (the element's id is "region-" and the name).
var pageRegions = []string{"nav", "main", "history", "conn", "refused"}

// events streams page updates: each time the models change, the regions of the page that differ
// from what this stream sent last, as one JSON object of region name to HTML.
func (s *Server) events(w http.ResponseWriter, r *http.Request, sess *session) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	service := r.URL.Query().Get("service")
	build := func() pageData { return s.page(r.Context(), sess, service) }
	if name := r.URL.Query().Get("segment"); name != "" { // a segment's page
		build = func() pageData { d, _ := s.segmentData(r.Context(), sess, name); return d }
	} else if r.URL.Query().Get("view") == "segments" { // the list of segments
		build = func() pageData { return s.segmentsData(r.Context(), sess) }
	}
	var since uint64
	fmt.Sscan(r.URL.Query().Get("since"), &since)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 1000\n\n")
	flusher.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	sent := map[string]string{}
	first := true
	signedIn := func() bool { return sess == s.anon || s.sess.get(r) != nil }
	for {
		if !signedIn() {
			fmt.Fprint(w, "event: signedout\ndata: {}\n\n")
			flusher.Flush()
			return
		}
		d := build()
		if !first || d.Version != since {
			update := map[string]any{}
			for _, region := range pageRegions {
				var buf bytes.Buffer
				if err := s.tmpl.ExecuteTemplate(&buf, region, d); err != nil {
					return
				}
				if html := buf.String(); sent[region] != html {
					sent[region] = html
					update[region] = html
				}
			}
			if len(update) > 0 {
				update["version"] = d.Version
				data, _ := json.Marshal(update)
				fmt.Fprintf(w, "event: update\ndata: %s\n\n", data)
				flusher.Flush()
			}
		} else {
			// The page holds this version already: remember it as sent.
			for _, region := range pageRegions {
				var buf bytes.Buffer
				s.tmpl.ExecuteTemplate(&buf, region, d)
				sent[region] = buf.String()
			}
		}
		first = false
	wait:
		for {
			select {
			case <-d.changed:
				break wait
			case <-ping.C:
				fmt.Fprint(w, ": ping\n\n")
				flusher.Flush()
				if !signedIn() {
					break wait
				}
			case <-r.Context().Done():
				return
			case <-s.ctx.Done():
				return
			}
		}
	}
}
