package portal

// Segments in the portal: the list of every segment (/segments), a segment's page
// (/segments/NAME: its head, first values, history and the lanes that name it), and the forms that
// add and remove values, which lead to a confirmation as a change of a service does and are made
// through the registrar under the signed-in operator's name.
//
// The list is followed as the services are: one blocking query on the key names under the segments
// folder wakes followSegments on any change of any segment, which reads the heads again and, when
// they changed, wakes every open page. A segment's values and history are read when a page shows
// the segment, and kept while its head's index stays the same, so that an open segment page does
// not read 100,000 values each time some service changes. The lanes that name a segment come from
// the service models the portal keeps anyway: nothing more is asked of Consul for them. What the
// pages show, and the work that asks nothing of Consul (reading a form, planning a change, saying
// what it did), are in segmentchange.go.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/internal/retry"
	"github.com/graylane/graylane/registrar"
)

const (
	// segmentShownValues is how many of a segment's values its page shows; `graylane segment
	// export` prints them all.
	segmentShownValues = 50
	// maxSegmentForm bounds the form that adds or removes values: some 100,000 short IDs. Longer
	// lists are the command's (graylane segment add NAME -f FILE).
	maxSegmentForm = 1 << 20
	// maxSegmentDetails bounds the segments whose first values and history are kept.
	maxSegmentDetails = 64
)

// segmentsState is the segment list as followSegments last read it. It is a value: the list is
// never changed once stored.
type segmentsState struct {
	list    []registrar.SegmentInfo // sorted by name
	known   bool                    // read at least once: before that the list is unknown, not empty
	err     string                  // the last read failed; list is the one read before
	version uint64                  // counts the changes of list
	seq     uint64                  // the read that list came from (see readSegments)
}

// followSegments follows the segments with a blocking query on the key names under their folder,
// and reads every head again when something under it changed.
func (s *Server) followSegments() {
	defer s.wg.Done()
	kv := s.reader.Client().KV()
	folder := record.SegmentsFolder(s.cfg.KVPrefix)
	var index uint64
	failures := 0
	for {
		_, meta, err := kv.Keys(folder, "/", (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(s.ctx))
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			index = 0
			s.noteRefusal(err)
			s.segmentsFailed(consulclient.Redact(err, s.cfg.Consul.Token))
			retry.Sleep(s.ctx, time.Duration(min(failures, 20))*250*time.Millisecond)
			continue
		}
		failures = 0
		if meta.LastIndex == index {
			continue // the wait ended without a change
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		s.readSegments(ctx)
		cancel()
	}
}

// readSegments reads every segment's head and stores the list, unless a read that started later
// was stored already; it wakes the open pages when the list or its error changed. Safe for
// concurrent use.
func (s *Server) readSegments(ctx context.Context) {
	seq := s.segReads.Add(1)
	list, err := s.reader.Segments(ctx)
	if err != nil && ctx.Err() != nil {
		return // the caller went away: no news of Consul
	}
	s.noteRefusal(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.segs.seq {
		return
	}
	st := s.segs
	st.seq = seq
	if err != nil {
		st.err = fmt.Sprintf("The segments could not be read (%v); the list is the one read before.", err)
	} else {
		if !st.known || !slices.Equal(list, st.list) {
			st.version++
		}
		st.list, st.known, st.err = list, true, ""
	}
	changed := st.err != s.segs.err || st.version != s.segs.version || st.known != s.segs.known
	s.segs = st
	if changed {
		s.broadcast()
	}
}

// segmentsFailed records that the segments cannot be followed.
func (s *Server) segmentsFailed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := fmt.Sprintf("The segments could not be read (%v); the list is the one read before.", err)
	if s.segs.err != msg {
		s.segs.err = msg
		s.broadcast()
	}
}

// segmentDetail is what a segment's page shows beyond its head: read together, immutable once
// read.
type segmentDetail struct {
	info    *registrar.SegmentInfo // nil: the segment does not exist
	first   []string
	history []segmentHistoryView // newest first
	histErr string
	deleted *segmentHistoryView
	version uint64 // the list's version when read, for a segment that does not exist
}

// segmentDetail returns a segment's head, first values and history: the ones kept, while the list
// in segs shows the head they were read with, else read now. Safe for concurrent use.
func (s *Server) segmentDetail(ctx context.Context, name string, segs segmentsState) (*segmentDetail, error) {
	var listed *registrar.SegmentInfo
	for i := range segs.list {
		if segs.list[i].Name == name {
			listed = &segs.list[i]
		}
	}
	s.segMu.Lock()
	kept := s.segDetails[name]
	s.segMu.Unlock()
	if kept != nil && segs.known && segs.err == "" {
		switch {
		case listed != nil && kept.info != nil && kept.info.Index == listed.Index:
			return kept, nil
		case listed == nil && kept.info == nil && kept.version == segs.version:
			return kept, nil
		}
	}
	d := &segmentDetail{version: segs.version}
	info, values, err := s.reader.Segment(ctx, name)
	switch {
	case errors.Is(err, registrar.ErrSegmentNotFound):
	case err != nil:
		return nil, err
	default:
		// Only the first values are kept: the others, up to 100,000, go with this read.
		d.info, d.first = info, slices.Clone(values[:min(len(values), segmentShownValues)])
	}
	hist, err := s.reader.SegmentHistory(ctx, name)
	var partial *registrar.HistoryError
	keep := true
	switch {
	case errors.As(err, &partial):
		d.histErr = err.Error() // the readable entries are shown
	case err != nil:
		d.histErr, keep = err.Error(), false
	}
	for i := len(hist) - 1; i >= 0 && len(d.history) < historyLimit; i-- {
		d.history = append(d.history, newSegmentHistoryView(hist[i]))
	}
	if d.info == nil && len(hist) > 0 && hist[len(hist)-1].Action == registrar.SegmentDelete {
		del := newSegmentHistoryView(hist[len(hist)-1])
		d.deleted = &del
	}
	if keep {
		s.segMu.Lock()
		if len(s.segDetails) >= maxSegmentDetails {
			clear(s.segDetails)
		}
		s.segDetails[name] = d
		s.segMu.Unlock()
	}
	return d, nil
}

// segmentReadProblem says why a segment could not be read, and segmentStatus answers it with a
// status: a segment that does not exist or a name that names none is 404, a refusal of the
// token 403, and Consul away or a segment whose keys do not make one 503. Never a 500.
func segmentReadProblem(name string, err error) string {
	switch {
	case errors.Is(err, registrar.ErrPermission):
		return fmt.Sprintf("Refused by Consul: segment %s cannot be read with the portal's token: %v", name, err)
	case errors.Is(err, registrar.ErrSegmentNotFound):
		return fmt.Sprintf("Segment %s does not exist (graylane segment create %s makes it).", name, name)
	}
	var bad *registrar.SegmentNameError
	if errors.As(err, &bad) {
		return fmt.Sprintf("No segment can be called %q: %v.", name, bad.Err)
	}
	return fmt.Sprintf("Segment %s could not be read: %v", name, err)
}

func segmentStatus(err error) int {
	var bad *registrar.SegmentNameError
	switch {
	case errors.Is(err, registrar.ErrSegmentNotFound), errors.As(err, &bad):
		return http.StatusNotFound
	case errors.Is(err, registrar.ErrPermission):
		return http.StatusForbidden
	}
	return http.StatusServiceUnavailable
}

func segmentURL(name string) string { return "/segments/" + url.PathEscape(name) }

// segmentsData builds the page of every segment.
func (s *Server) segmentsData(ctx context.Context, sess *session) pageData {
	s.mu.Lock()
	known := s.segs.known
	s.mu.Unlock()
	if !known {
		s.readSegments(ctx) // the first page after start does not wait for followSegments
	}
	d := s.page(ctx, sess, "")
	d.SegNav.Current = true
	v := &segmentListView{Known: d.segs.known, Err: d.segs.err}
	for _, info := range d.segs.list {
		row := segmentRow{SegmentInfo: info}
		for _, u := range segmentUses(d.models, info.Name) {
			if !slices.Contains(row.UsedBy, u.Service) {
				row.UsedBy = append(row.UsedBy, u.Service)
			}
		}
		v.Rows = append(v.Rows, row)
	}
	d.Segments = v
	return d
}

// segmentData builds a segment's page and the status to answer it with.
func (s *Server) segmentData(ctx context.Context, sess *session, name string) (pageData, int) {
	d := s.page(ctx, sess, "")
	d.SegNav.Current = true
	v := &segmentView{Name: name}
	d.Segment = v
	if err := gray.ValidateSegmentName(name); err != nil {
		v.Err = segmentReadProblem(name, &registrar.SegmentNameError{Name: name, Err: err})
		return d, http.StatusNotFound
	}
	v.Uses = segmentUses(d.models, name)
	det, err := s.segmentDetail(ctx, name, d.segs)
	if err != nil {
		v.Err = segmentReadProblem(name, err)
		return d, segmentStatus(err)
	}
	v.Info, v.Values, v.History, v.HistErr, v.Deleted = det.info, det.first, det.history, det.histErr, det.deleted
	if det.info == nil {
		return d, http.StatusNotFound
	}
	v.More = max(det.info.Count-len(det.first), 0)
	return d, http.StatusOK
}

func (s *Server) segmentsPage(w http.ResponseWriter, r *http.Request, sess *session) {
	d := s.segmentsData(r.Context(), sess)
	sess.mu.Lock()
	d.Flash, sess.flash = sess.flash, nil
	sess.mu.Unlock()
	s.render(w, http.StatusOK, "page", d)
}

func (s *Server) segmentPage(w http.ResponseWriter, r *http.Request, sess *session) {
	name := r.PathValue("segment")
	d, status := s.segmentData(r.Context(), sess, name)
	sess.mu.Lock()
	d.Flash, sess.flash = sess.flash, nil
	if id := r.URL.Query().Get("confirm"); id != "" {
		if p := sess.plans[id]; p != nil && p.segment != nil && p.segment.name == name && time.Since(p.made) <= pendingTTL {
			d.SegConfirm = p.segment.view(p.id)
		}
	}
	sess.mu.Unlock()
	s.render(w, status, "page", d)
}

// planSegment shows what adding or removing the values of the form does to the segment, for the
// operator to confirm. Values that cannot be in a segment, a segment that does not exist or cannot
// be read, and a change after which the segment would be too large are answered with the
// segment's page, the problem shown and the form as it was sent.
func (s *Server) planSegment(w http.ResponseWriter, r *http.Request, sess *session) {
	name := r.PathValue("segment")
	if s.cfg.ReadOnly {
		http.Error(w, "refused: this portal is read-only", http.StatusForbidden)
		return
	}
	action := r.PostFormValue("op")
	if action != registrar.SegmentAdd && action != registrar.SegmentRemove {
		http.Error(w, "unknown action", http.StatusBadRequest)
		return
	}
	form := segmentForm{Op: action, Values: r.PostFormValue("values")}
	refuse := func(status int, format string, args ...any) {
		d, pageStatus := s.segmentData(r.Context(), sess, name)
		d.Segment.Form = form
		d.Flash = &flash{Kind: "error", Text: "Nothing was planned: " + fmt.Sprintf(format, args...)}
		if pageStatus != http.StatusOK {
			status = pageStatus
		}
		s.render(w, status, "page", d)
	}
	if err := gray.ValidateSegmentName(name); err != nil {
		refuse(http.StatusNotFound, "%s", segmentReadProblem(name, &registrar.SegmentNameError{Name: name, Err: err}))
		return
	}
	values, problems := parseSegmentValues(form.Values)
	switch {
	case len(problems) == 1:
		refuse(http.StatusUnprocessableEntity, "segment %s: %s.", name, problems[0])
		return
	case len(problems) > 1:
		refuse(http.StatusUnprocessableEntity, "segment %s: %s (and %d more bad values).", name, problems[0], len(problems)-1)
		return
	case len(values) == 0:
		refuse(http.StatusUnprocessableEntity, "no values to %s segment %s: write one a line, or separate them with commas.", toOrFrom(action), name)
		return
	case len(values) > gray.MaxSegmentValues:
		refuse(http.StatusUnprocessableEntity, "segment %s: %s values given; a segment holds at most %s.", name, thousands(len(values)), thousands(gray.MaxSegmentValues))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	_, current, err := s.reader.Segment(ctx, name)
	if err != nil {
		refuse(segmentStatus(err), "%s", segmentReadProblem(name, err))
		return
	}
	p := planSegmentChange(name, action, current, values)
	switch {
	case p.changing == 0:
		held := "it holds every value given already"
		if action == registrar.SegmentRemove {
			held = "it holds none of the values given"
		}
		s.setFlash(sess, "info", "%s on segment %s: nothing to change (%s), nothing recorded.", action, name, held)
		http.Redirect(w, r, segmentURL(name), http.StatusSeeOther)
		return
	case p.after > gray.MaxSegmentValues:
		refuse(http.StatusUnprocessableEntity, "segment %s would hold %s values; a segment holds at most %s.", name, thousands(p.after), thousands(gray.MaxSegmentValues))
		return
	}
	id := s.addPending(sess, &pending{segment: p})
	http.Redirect(w, r, segmentURL(name)+"?confirm="+id+"#confirm", http.StatusSeeOther)
}

// confirmSegment makes a planned add or remove, recorded under the operator's name.
func (s *Server) confirmSegment(w http.ResponseWriter, r *http.Request, sess *session) {
	name := r.PathValue("segment")
	if s.cfg.ReadOnly {
		http.Error(w, "refused: this portal is read-only", http.StatusForbidden)
		return
	}
	sess.mu.Lock()
	p := sess.plans[r.PostFormValue("id")]
	delete(sess.plans, r.PostFormValue("id"))
	sess.mu.Unlock()
	defer http.Redirect(w, r, segmentURL(name), http.StatusSeeOther)
	if p == nil || p.segment == nil || p.segment.name != name || time.Since(p.made) > pendingTTL {
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
	var res *registrar.SegmentResult
	if p.segment.action == registrar.SegmentAdd {
		res, err = reg.AddToSegment(ctx, name, p.segment.values)
	} else {
		res, err = reg.RemoveFromSegment(ctx, name, p.segment.values)
	}
	f := segmentOutcome(p.segment, sess.operator, res, err)
	sess.mu.Lock()
	sess.flash = &f
	sess.mu.Unlock()
	s.readSegments(ctx) // the page this redirects to shows the change
}

func (s *Server) cancelSegmentPlan(w http.ResponseWriter, r *http.Request, sess *session) {
	sess.mu.Lock()
	if p := sess.plans[r.PostFormValue("id")]; p != nil && p.segment != nil {
		delete(sess.plans, r.PostFormValue("id"))
	}
	sess.mu.Unlock()
	http.Redirect(w, r, segmentURL(r.PathValue("segment")), http.StatusSeeOther)
}
