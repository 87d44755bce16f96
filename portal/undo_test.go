package portal

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/registrar"
)

// instanceMeta reads every instance's whole meta, gray keys and others, by instance ID.
func instanceMeta(t *testing.T, service string) map[string]map[string]string {
	t.Helper()
	insts, _, err := newRegistrar(t, agent, "", "check").Instances(context.Background(), service)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, inst := range insts {
		out[inst.ID] = maps.Clone(inst.Meta)
	}
	return out
}

// history reads a service's recorded changes, oldest first.
func history(t *testing.T, service string) []registrar.HistoryEntry {
	t.Helper()
	hist, err := newRegistrar(t, agent, "", "check").History(context.Background(), service)
	if err != nil {
		t.Fatal(err)
	}
	return hist
}

// entryID is how the page names a history entry in its undo form.
func entryID(h registrar.HistoryEntry) string { return h.Time.UTC().Format(time.RFC3339Nano) }

// undoForm is the undo form of an entry as the page renders it.
func undoForm(h registrar.HistoryEntry) string { return `name="entry" value="` + entryID(h) + `"` }

// planUndo asks for the undo of an entry and returns its confirmation page.
func planUndo(t *testing.T, b *browser, service string, h registrar.HistoryEntry) page {
	t.Helper()
	p := b.post("/s/"+service+"/plan", url.Values{"op": {"undo"}, "entry": {entryID(h)}})
	if p.status != http.StatusSeeOther || !strings.Contains(p.location, "?confirm=") {
		t.Fatalf("plan the undo of %q: %d %q\n%s", h.Action, p.status, p.location, p.body)
	}
	return b.get(p.location)
}

func TestUndoOfAPromoteRestoresTheCanaryLane(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	before := instanceMeta(t, svc)
	if _, err := newRegistrar(t, agent, "", "bob").Do(context.Background(), svc, registrar.Promote{Lane: "canary"}); err != nil {
		t.Fatal(err)
	}
	promoted := instanceMeta(t, svc)
	hist := history(t, svc)
	promote := hist[len(hist)-1]
	if promote.Action != "promote canary" {
		t.Fatalf("last entry %q", promote.Action)
	}
	waitFor(t, 5*time.Second, "the promotion's undo button", func() bool { return strings.Contains(b.get("/s/"+svc).body, undoForm(promote)) })

	p := planUndo(t, b, svc, promote)
	action := "undo promote canary at " + promote.Time.UTC().Format(time.DateTime)
	mustContain(t, p.body, "Confirm: "+action+" on "+svc, svc+"-canary-1", "<td>stable</td>", "<b>canary · weight 10 % · 2 rules</b>",
		"match rules before", `header userid = &#34;123&#34; and path starts with &#34;/api/user&#34;`, "Recorded as <b>alice</b>")
	if now := instanceMeta(t, svc); !maps.EqualFunc(now, promoted, maps.Equal) {
		t.Fatalf("planning the undo changed the instances:\n%v\nwant\n%v", now, promoted)
	}
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "flash-ok", action+" on "+svc+": done ("+svc+"-canary-1)")

	if after := instanceMeta(t, svc); !maps.EqualFunc(after, before, maps.Equal) {
		t.Fatalf("after the undo the instances hold\n%v\nbefore the promotion they held\n%v", after, before)
	}
	if w := laneWeight(t, svc, "canary"); w != "10" {
		t.Fatalf("canary weight %s after the undo", w)
	}
	hist = history(t, svc)
	if last := hist[len(hist)-1]; last.Action != action || last.Who != "alice" || last.Outcome != registrar.OutcomeApplied {
		t.Fatalf("last entry %+v", last)
	}
	// The undo is a change like any other: it can be undone in turn.
	waitFor(t, 5*time.Second, "the undo's own undo button", func() bool { return strings.Contains(b.get("/s/"+svc).body, undoForm(hist[len(hist)-1])) })
	p = planUndo(t, b, svc, hist[len(hist)-1])
	mustContain(t, p.body, "Confirm: undo "+action, "<b>stable</b>")
}

func TestUndoOfAnEntryThatChangedNothingIsRefused(t *testing.T) {
	svc := registerRelease(t, agent, "")
	other := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	if err := newRegistrar(t, agent, "", "release-bot").RecordEvent(context.Background(), svc, "rollout of canary rolled back", "gate failed"); err != nil {
		t.Fatal(err)
	}
	hist := history(t, svc)
	event := hist[len(hist)-1]
	if len(event.Before) != 0 {
		t.Fatalf("the event records instance changes: %+v", event)
	}
	// The page offers no undo of the event, and says why.
	waitFor(t, 5*time.Second, "the event in the history", func() bool {
		return strings.Contains(b.get("/s/"+svc).body, `data-change="rollout of canary rolled back"`)
	})
	body := b.get("/s/" + svc).body
	mustContain(t, body, `<button class="small-btn" disabled title="changed no instance: nothing to undo">Undo</button>`, undoForm(hist[0]))
	mustNotContain(t, body, undoForm(event))

	// The server refuses it too, naming the service and the entry.
	p := b.post("/s/"+svc+"/plan", url.Values{"op": {"undo"}, "entry": {entryID(event)}})
	if p.status != http.StatusUnprocessableEntity {
		t.Fatalf("undo of an event: %d %q", p.status, p.location)
	}
	mustContain(t, p.body, "flash-error", "Undo on "+svc+": the history entry &#34;rollout of canary rolled back&#34; of "+svc+" at "+
		event.Time.UTC().Format(time.DateTime)+" UTC changed no instance", "nothing to undo")
	mustNotContain(t, p.body, "Confirm: undo")

	// An entry that is not in the service's history, or not a time at all.
	otherHist := history(t, other)
	for name, tc := range map[string]struct {
		entry  string
		status int
		want   string
	}{
		"another service's entry": {entryID(otherHist[0]), http.StatusNotFound, svc + " has no history entry at " + entryID(otherHist[0])},
		"no such entry":           {time.Now().UTC().Format(time.RFC3339Nano), http.StatusNotFound, svc + " has no history entry at"},
		"the time to the second":  {event.Time.UTC().Format(time.RFC3339), http.StatusNotFound, svc + " has no history entry at"},
		"not a time":              {"yesterday", http.StatusBadRequest, "&#34;yesterday&#34; is not the time of a history entry"},
		"no entry":                {"", http.StatusBadRequest, "Undo on " + svc + ": the request names no history entry"},
	} {
		p := b.post("/s/"+svc+"/plan", url.Values{"op": {"undo"}, "entry": {tc.entry}})
		if p.status != tc.status || !strings.Contains(p.body, tc.want) {
			t.Fatalf("%s: %d, want %d with %q:\n%s", name, p.status, tc.status, tc.want, p.body)
		}
	}
	if n := len(history(t, svc)); n != len(hist) {
		t.Fatalf("%d history entries after refused undos, want %d", n, len(hist))
	}
}

func TestUndoConflictChangesNothing(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	bob := newRegistrar(t, agent, "", "bob")
	if _, err := bob.Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
	hist := history(t, svc)
	weight := hist[len(hist)-1]
	b.get("/s/" + svc)
	p := planUndo(t, b, svc, weight)
	action := "undo weight canary 25 at " + weight.Time.UTC().Format(time.DateTime)
	mustContain(t, p.body, "Confirm: "+action+" on "+svc, "canary · weight 25 % · 2 rules", "<b>canary · weight 10 % · 2 rules</b>")
	// Someone else changes the service between the plan and the confirmation.
	if _, err := bob.Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 4000}); err != nil {
		t.Fatal(err)
	}
	meta := instanceMeta(t, svc)
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "flash-conflict", "Conflict: "+action+" on "+svc+" was not made", `&#34;weight canary 40&#34; by bob`, "Nothing was changed")
	if w := laneWeight(t, svc, "canary"); w != "40" {
		t.Fatalf("canary weight %s, want bob's 40", w)
	}
	if now := instanceMeta(t, svc); !maps.EqualFunc(now, meta, maps.Equal) {
		t.Fatalf("the conflicting undo changed the instances:\n%v\nwant\n%v", now, meta)
	}
	if got := history(t, svc); len(got) != len(hist)+1 || got[len(got)-1].Action != "weight canary 40" {
		t.Fatalf("history after the conflict ends with %q (%d entries)", got[len(got)-1].Action, len(got))
	}
}

func TestUndoNeedsASignedInOperatorTheTokenAndAWritablePortal(t *testing.T) {
	svc := registerRelease(t, agent, "")
	if _, err := newRegistrar(t, agent, "", "bob").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
	hist := history(t, svc)
	form := url.Values{"op": {"undo"}, "entry": {entryID(hist[len(hist)-1])}}
	_, ts := startPortal(t, nil, Config{})

	signedOut := newBrowser(t, ts)
	for _, path := range []string{"/s/" + svc + "/plan", "/s/" + svc + "/confirm"} {
		if p := signedOut.post(path, form); p.status != http.StatusUnauthorized {
			t.Fatalf("signed out, POST %s: %d", path, p.status)
		}
	}
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	noToken := maps.Clone(form)
	noToken.Set("csrf", "")
	if p := b.post("/s/"+svc+"/plan", noToken); p.status != http.StatusForbidden || !strings.Contains(p.body, "CSRF") {
		t.Fatalf("without the CSRF token: %d %s", p.status, p.body)
	}
	if p := b.post("/s/"+svc+"/plan", form, "Origin", "http://evil.example"); p.status != http.StatusForbidden {
		t.Fatalf("from another site: %d", p.status)
	}

	_, ro := startPortal(t, nil, Config{ReadOnly: true})
	rb := newBrowser(t, ro)
	rb.signIn("alice")
	mustNotContain(t, rb.get("/s/"+svc).body, `value="undo"`, "Undo<")
	if p := rb.post("/s/"+svc+"/plan", form); p.status != http.StatusForbidden {
		t.Fatalf("read-only portal: %d", p.status)
	}

	if w := laneWeight(t, svc, "canary"); w != "25" {
		t.Fatalf("canary weight %s after refused undos", w)
	}
	if n := len(history(t, svc)); n != len(hist) {
		t.Fatalf("%d history entries after refused undos, want %d", n, len(hist))
	}
}

func TestUndoRefusedWhileARolloutDrivesTheLane(t *testing.T) {
	svc := registerRelease(t, agent, "")
	src := &fakeRollouts{rollout: &Rollout{Lane: "canary", Step: 2, Steps: 4, Weight: "25", State: "progressing"}}
	p, ts := startPortal(t, nil, Config{Rollouts: src, Rates: src})
	b := newBrowser(t, ts)
	b.signIn("alice")
	if _, err := newRegistrar(t, agent, "", "bob").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
	hist := history(t, svc)
	weight := hist[len(hist)-1]
	const reason = "lane canary is driven by a rollout: use its controls"
	waitFor(t, 5*time.Second, "the undo offered no more", func() bool {
		body := b.get("/s/" + svc).body
		return strings.Contains(body, `data-change="weight canary 25"`) && strings.Contains(body, reason)
	})
	mustNotContain(t, b.get("/s/"+svc).body, undoForm(weight))
	// The server refuses it as it refuses the lane's other changes.
	page := b.follow("/s/"+svc+"/plan", url.Values{"op": {"undo"}, "entry": {entryID(weight)}})
	mustContain(t, page.body, "flash-error", "lane canary of "+svc+" is driven by a rollout: use its controls")
	mustNotContain(t, page.body, "Confirm: undo")
	if w := laneWeight(t, svc, "canary"); w != "25" {
		t.Fatalf("canary weight %s after a refused undo", w)
	}
	// Once the rollout is over, the undo goes through the confirmation.
	src.mu.Lock()
	src.rollout = &Rollout{Lane: "canary", Step: 2, Steps: 4, Weight: "25", State: "aborted", Done: true}
	src.mu.Unlock()
	p.Notify(svc)
	waitFor(t, 5*time.Second, "the undo offered again", func() bool { return strings.Contains(b.get("/s/"+svc).body, undoForm(weight)) })
	page = planUndo(t, b, svc, weight)
	mustContain(t, page.body, "Confirm: undo weight canary 25", "<b>canary · weight 10 % · 2 rules</b>")
}

// unknownRollouts is a rollout source that cannot answer.
type unknownRollouts struct{}

func (unknownRollouts) Rollout(context.Context, string) (*Rollout, error) {
	return nil, errors.New("the rollout store does not answer")
}

// TestChangesRefusedWhileTheRolloutIsUnknown: a rollout source that cannot answer may hide a rollout
// that drives the lane, so a change to it, an undo included, is refused with the source's error.
func TestChangesRefusedWhileTheRolloutIsUnknown(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{Rollouts: unknownRollouts{}, Rates: &fakeRollouts{}})
	b := newBrowser(t, ts)
	b.signIn("alice")
	if _, err := newRegistrar(t, agent, "", "bob").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
	hist := history(t, svc)
	b.get("/s/" + svc)
	for _, form := range []url.Values{
		{"op": {"undo"}, "entry": {entryID(hist[len(hist)-1])}},
		{"op": {"weight"}, "lane": {"canary"}, "weight": {"50"}},
	} {
		p := b.follow("/s/"+svc+"/plan", form)
		mustContain(t, p.body, "flash-error", "Nothing was planned: reading the rollout of "+svc+", which may drive lane", "the rollout store does not answer")
		mustNotContain(t, p.body, "Confirm:")
	}
	if w := laneWeight(t, svc, "canary"); w != "25" {
		t.Fatalf("canary weight %s after refused changes", w)
	}
}
