package portal

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/registrar"
)

// newSegmentName names a segment of one test: segments live in KV beside every test's services.
func newSegmentName(prefix string) string { return fmt.Sprintf("%s%d", prefix, serviceSeq.Add(1)) }

// createSegment creates a segment as who, and removes it and its history when the test ends.
func createSegment(t *testing.T, a *consultest.Agent, token, name, description, who string, values ...string) {
	t.Helper()
	r := newRegistrar(t, a, token, who)
	t.Cleanup(func() {
		kv := r.Client().KV()
		for _, folder := range []string{record.SegmentFolder(registrar.DefaultKVPrefix, name), record.SegmentHistoryFolder(registrar.DefaultKVPrefix, name)} {
			if _, err := kv.DeleteTree(folder, nil); err != nil {
				t.Errorf("removing %s: %v", folder, err)
			}
		}
	})
	if _, err := r.CreateSegment(context.Background(), name, description, values); err != nil {
		t.Fatal(err)
	}
}

// segmentValues reads a segment's values through the registrar.
func segmentValues(t *testing.T, name string) []string {
	t.Helper()
	_, values, err := newRegistrar(t, agent, "", "check").Segment(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return values
}

// segmentHistory reads a segment's recorded changes, oldest first.
func segmentHistory(t *testing.T, name string) []registrar.SegmentHistoryEntry {
	t.Helper()
	hist, err := newRegistrar(t, agent, "", "check").SegmentHistory(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return hist
}

// registerSegmentRelease registers a service whose canary takes the users of segment in by a match
// rule and never the users of segment out.
func registerSegmentRelease(t *testing.T, in, out string) string {
	t.Helper()
	svc := fmt.Sprintf("orders%d", serviceSeq.Add(1))
	applyForTest(t, agent, "", []registrar.Spec{
		{Name: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9301},
		{Name: svc, ID: svc + "-canary-1", Address: "127.0.0.1", Port: 9302, Gray: gray.Meta{Canary: true, Weight: 1000, ExcludeSegments: []string{out},
			Match: []gray.Rule{{Header: []gray.HeaderMatch{{Key: "x-user-id", ValueMatch: gray.ValueMatch{InSegment: in}}}}}}},
	})
	return svc
}

// planSegment posts an add or remove form and returns its confirmation page.
func planSegment(t *testing.T, b *browser, name, op, values string) page {
	t.Helper()
	p := b.post("/segments/"+name+"/plan", url.Values{"op": {op}, "values": {values}})
	if p.status != http.StatusSeeOther || !strings.Contains(p.location, "?confirm=") {
		t.Fatalf("plan %s %q on %s: %d %q\n%s", op, values, name, p.status, p.location, p.body)
	}
	return b.get(p.location)
}

func TestSegmentsPageListsEverySegment(t *testing.T) {
	svc := registerRelease(t, agent, "")
	seg := newSegmentName("beta")
	createSegment(t, agent, "", seg, "users who try things first", "carol", "u1", "u2", "u3")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	// The navigation leads there from every page.
	mustContain(t, b.get("/s/"+svc).body, `<a href="/segments" id="nav-segments">`)
	waitFor(t, 5*time.Second, "the segment in the list", func() bool {
		return strings.Contains(b.get("/segments").body, `data-segment="`+seg+`" data-count="3"`)
	})
	p := b.get("/segments")
	if p.status != http.StatusOK {
		t.Fatalf("segments page: %d", p.status)
	}
	mustContain(t, p.body, `<a class="seglink" href="/segments/`+seg+`">`+seg+`</a>`, "users who try things first",
		`<span class="who-name">carol</span>`, `<li class="current">`, `data-view="segments"`)
	mustNotContain(t, p.body, "No service with gray lanes yet")
	if p := b.get("/segments/"); p.status != http.StatusOK || !strings.Contains(p.body, `data-segment="`+seg+`"`) {
		t.Fatalf("/segments/: %d", p.status)
	}
	// A change made with the command reaches the list.
	if _, err := newRegistrar(t, agent, "", "cli").AddToSegment(context.Background(), seg, []string{"u4"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new count", func() bool {
		return strings.Contains(b.get("/segments").body, `data-segment="`+seg+`" data-count="4"`)
	})
	mustContain(t, b.get("/segments").body, `<span class="who-name">cli</span>`)
}

func TestSegmentPageShowsValuesHistoryAndLanes(t *testing.T) {
	seg, other := newSegmentName("beta"), newSegmentName("keyaccounts")
	var values []string
	for i := range 120 {
		values = append(values, fmt.Sprintf("u%03d", i))
	}
	createSegment(t, agent, "", seg, "beta testers", "carol", values...)
	createSegment(t, agent, "", other, "", "carol", "k1")
	bob := newRegistrar(t, agent, "", "bob")
	if _, err := bob.AddToSegment(context.Background(), seg, []string{"v2", "v1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.RemoveFromSegment(context.Background(), seg, []string{"u000"}); err != nil {
		t.Fatal(err)
	}
	svc := registerSegmentRelease(t, seg, other)
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")

	// The lanes' match rules and exclusions name the segments in words.
	waitFor(t, 5*time.Second, "the service's lanes", func() bool { return strings.Contains(b.get("/s/"+svc).body, `data-lane="canary"`) })
	mustContain(t, b.get("/s/"+svc).body, `<div class="rule">header x-user-id in segment `+seg+`</div>`,
		`never the users in segment <a href="/segments/`+other+`" class="seglink">`+other+`</a>`)

	p := b.get("/segments/" + seg)
	if p.status != http.StatusOK {
		t.Fatalf("segment page: %d\n%s", p.status, p.body)
	}
	mustContain(t, p.body, "<h1>segment "+seg+"</h1>", "beta testers", `id="segment-count" data-count="121"`, `data-segment="`+seg+`"`,
		"<li>u001</li>", "<li>u050</li>", "Values: the first 50", "and 71 more", "graylane segment export "+seg,
		`<tr data-service="`+svc+`" data-lane="canary">`, "a match rule takes the requests",
		`<div class="what"><b>remove</b> <span class="muted">by</span> <span class="who-name">bob</span></div>`,
		`<span class="bad removed">−1</span>`, `removed <span class="mono">u000</span>`,
		`<span class="ok added">+2</span>`, `added <span class="mono">v1, v2</span>`,
		`<span class="who-name">carol</span>`, `<span class="ok added">+120</span>`, "and 100 more", "0 → 120 values", "122 → 121 values")
	mustNotContain(t, p.body, "<li>u000</li>", "<li>u051</li>", "<li>v1</li>")
	// Newest first.
	if r, a, c := strings.Index(p.body, `data-change="remove"`), strings.Index(p.body, `data-change="add"`), strings.Index(p.body, `data-change="create"`); !(r >= 0 && r < a && a < c) {
		t.Fatalf("history order: remove at %d, add at %d, create at %d", r, a, c)
	}
	p = b.get("/segments/" + other)
	mustContain(t, p.body, `<tr data-service="`+svc+`" data-lane="canary">`, "excluded: the lane never takes its users", "<li>k1</li>", "no description")
	mustNotContain(t, p.body, "a match rule takes")

	// A segment that does not exist, and a name that cannot be one: 404 pages that say so.
	p = b.get("/segments/nosuchsegment")
	if p.status != http.StatusNotFound {
		t.Fatalf("unknown segment: %d", p.status)
	}
	mustContain(t, p.body, `id="segment-missing"`, "No segment nosuchsegment exists", "graylane segment create nosuchsegment")
	mustNotContain(t, p.body, `id="segment-add"`)
	p = b.get("/segments/Not%20A%20Name")
	if p.status != http.StatusNotFound {
		t.Fatalf("a name that cannot be a segment's: %d", p.status)
	}
	mustContain(t, p.body, `id="segment-error"`, "No segment can be called &#34;Not A Name&#34;")
	// A deleted segment: its page says who deleted it, its history stays, and the lane that named
	// it is shown.
	if _, err := bob.DeleteSegment(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the deletion", func() bool {
		return strings.Contains(b.get("/segments/"+other).body, "it was deleted by <span class=\"who-name\">bob</span>")
	})
	p = b.get("/segments/" + other)
	mustContain(t, p.body, `data-change="delete"`, `data-change="create"`, `<tr data-service="`+svc+`" data-lane="canary">`)
	if p.status != http.StatusNotFound {
		t.Fatalf("deleted segment: %d", p.status)
	}
}

// TestExplainNamesTheSegmentThatDecided: the explain form says which segment took a request into a
// lane by a match rule, and which one kept a user out of a lane.
func TestExplainNamesTheSegmentThatDecided(t *testing.T) {
	seg, other := newSegmentName("beta"), newSegmentName("keyaccounts")
	createSegment(t, agent, "", seg, "", "carol", "u1", "k1")
	createSegment(t, agent, "", other, "", "carol", "k1")
	svc := registerSegmentRelease(t, seg, other)
	r := newRegistrar(t, agent, "", "setup")
	t.Cleanup(func() { r.Client().KV().Delete(record.OptionsKey(registrar.DefaultKVPrefix, svc), nil) })
	// An exclusion needs a user to check: the sticky key names it.
	if _, err := r.SetServiceOptions(context.Background(), svc, gray.Options{StickyHeader: "x-user-id"}); err != nil {
		t.Fatal(err)
	}
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	p := b.post("/s/"+svc+"/explain", url.Values{"headers": {"x-user-id: u1"}})
	mustContain(t, p.body, `<span id="explain-lane">canary</span>`, `<b id="explain-reason">match</b> (rule 1)`,
		`the value is in segment <b id="explain-segment">`+seg+`</b>`)
	p = b.post("/s/"+svc+"/explain", url.Values{"headers": {"x-user-id: k1"}})
	mustContain(t, p.body, `<span id="explain-lane">stable</span>`, "kept out of lane canary", `<b id="explain-segment">`+other+`</b>`)
}

// TestSegmentPagesFollowChanges: an open segment page, and the list, get a change made with the
// command without a reload, as a service page does.
func TestSegmentPagesFollowChanges(t *testing.T) {
	seg := newSegmentName("beta")
	createSegment(t, agent, "", seg, "", "carol", "u1", "u2")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream := func(query string) (<-chan map[string]any, func(what string, cond func(map[string]any) bool) map[string]any) {
		// since names no version a page had: the first event holds every region.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/events?since=999999999&"+query, nil)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		events := readEvents(t, resp)
		var last map[string]any // the page as the events so far left it
		return events, func(what string, cond func(map[string]any) bool) map[string]any {
			t.Helper()
			if last != nil && cond(last) {
				return last
			}
			timeout := time.After(5 * time.Second)
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						t.Fatalf("%s: the stream ended waiting for %s", query, what)
					}
					if last = ev; cond(ev) {
						return ev
					}
				case <-timeout:
					t.Fatalf("%s: no event with %s; the last:\n%v", query, what, last)
				}
			}
		}
	}
	region := func(name, want string) func(map[string]any) bool {
		return func(ev map[string]any) bool { s, _ := ev[name].(string); return strings.Contains(s, want) }
	}
	_, waitPage := stream("segment=" + seg)
	_, waitList := stream("view=segments")
	waitPage("the segment", region("main", `id="segment-count" data-count="2"`))
	waitList("the list", region("main", `data-segment="`+seg+`" data-count="2"`))
	if _, err := newRegistrar(t, agent, "", "cli").AddToSegment(context.Background(), seg, []string{"u3"}); err != nil {
		t.Fatal(err)
	}
	waitPage("the new count", region("main", `id="segment-count" data-count="3"`))
	waitPage("the change in the history", region("history", `<span class="who-name">cli</span>`))
	waitList("the new count in the list", region("main", `data-segment="`+seg+`" data-count="3"`))
}

func TestSegmentAddAndRemoveThroughTheForm(t *testing.T) {
	seg := newSegmentName("beta")
	createSegment(t, agent, "", seg, "", "carol", "u1", "u2")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	p := b.get("/segments/" + seg)
	mustContain(t, p.body, `id="segment-add"`, `id="segment-remove"`, `name="csrf"`)

	// Add: one a line, or separated by commas; a value held already and a repeated one change nothing.
	p = planSegment(t, b, seg, "add", "u3\r\nu4, u5\n\nu1\nu3")
	mustContain(t, p.body, "Confirm: add on segment "+seg, "3 values are added", "from 2 to <b>5</b>", `<span class="mono" id="confirm-values">u3, u4, u5</span>`,
		"Note: 1 of the values given are in the segment already", "Recorded as <b>alice</b>")
	if v := segmentValues(t, seg); len(v) != 2 {
		t.Fatalf("planning changed the segment: %v", v)
	}
	id := regexpFind(t, p.body, `name="id" value="([^"]+)"`)
	p = b.follow("/segments/"+seg+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, "flash-ok", "add on segment "+seg+": done (&#43;3), 5 values now, recorded as alice.",
		`<div class="what"><b>add</b> <span class="muted">by</span> <span class="who-name">alice</span></div>`, `id="segment-count" data-count="5"`)
	if v := segmentValues(t, seg); !slices.Equal(v, []string{"u1", "u2", "u3", "u4", "u5"}) {
		t.Fatalf("values after the add: %v", v)
	}
	if h := segmentHistory(t, seg); len(h) != 2 || h[1].Who != "alice" || h[1].Action != registrar.SegmentAdd || h[1].Added != 3 {
		t.Fatalf("history after the add: %+v", h)
	}
	// The confirmation is used up.
	p = b.follow("/segments/"+seg+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, "expired or was used already")

	// Remove, by another operator: a value the segment does not hold is ignored.
	bb := newBrowser(t, ts)
	bb.signIn("bob")
	bb.get("/segments/" + seg)
	p = planSegment(t, bb, seg, "remove", "u1,u9")
	mustContain(t, p.body, "Confirm: remove on segment "+seg, "1 value is removed", "from 5 to <b>4</b>", "Note: 1 of the values given are not in the segment")
	p = bb.follow("/segments/"+seg+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "flash-ok", "remove on segment "+seg+": done (−1), 4 values now, recorded as bob.")
	if v := segmentValues(t, seg); !slices.Equal(v, []string{"u2", "u3", "u4", "u5"}) {
		t.Fatalf("values after the remove: %v", v)
	}
	if h := segmentHistory(t, seg); len(h) != 3 || h[2].Who != "bob" || h[2].Action != registrar.SegmentRemove || !slices.Equal(h[2].RemovedSample, []string{"u1"}) {
		t.Fatalf("history after the remove: %+v", h)
	}

	// Nothing to change is said, and nothing is recorded.
	p = b.follow("/segments/"+seg+"/plan", url.Values{"op": {"add"}, "values": {"u2, u3"}})
	mustContain(t, p.body, "flash-info", "add on segment "+seg+": nothing to change (it holds every value given already), nothing recorded.")
	p = b.follow("/segments/"+seg+"/plan", url.Values{"op": {"remove"}, "values": {"u1"}})
	mustContain(t, p.body, "flash-info", "it holds none of the values given")
	// Cancel drops a planned change.
	p = planSegment(t, b, seg, "remove", "u2")
	id = regexpFind(t, p.body, `name="id" value="([^"]+)"`)
	b.follow("/segments/"+seg+"/cancel", url.Values{"id": {id}})
	p = b.follow("/segments/"+seg+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, "expired or was used already")
	// A segment's confirmation is not a service's, nor another segment's.
	p = planSegment(t, b, seg, "remove", "u2")
	id = regexpFind(t, p.body, `name="id" value="([^"]+)"`)
	mustContain(t, b.follow("/segments/other"+seg+"/confirm", url.Values{"id": {id}}).body, "expired or was used already")
	if len(segmentHistory(t, seg)) != 3 || len(segmentValues(t, seg)) != 4 {
		t.Fatal("a cancelled, repeated or misdirected confirmation changed the segment")
	}
}

func TestSegmentChangesRefusedSignedOutReadOnlyAndWithoutTheToken(t *testing.T) {
	seg := newSegmentName("beta")
	createSegment(t, agent, "", seg, "", "carol", "u1", "u2")
	form := url.Values{"op": {"add"}, "values": {"u3"}, "csrf": {"guess"}}

	// Signed out: the pages lead to the sign-in, the changes are refused.
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	for _, path := range []string{"/segments", "/segments/" + seg} {
		if p := b.get(path); p.status != http.StatusSeeOther || !strings.HasPrefix(p.location, "/login?next=") {
			t.Fatalf("GET %s signed out: %d %q", path, p.status, p.location)
		}
	}
	for _, path := range []string{"/plan", "/confirm", "/cancel"} {
		if p := b.post("/segments/"+seg+path, form); p.status != http.StatusUnauthorized {
			t.Fatalf("POST %s signed out: %d", path, p.status)
		}
	}
	if p := b.get("/events?segment=" + seg); p.status != http.StatusUnauthorized {
		t.Fatalf("events signed out: %d", p.status)
	}
	// Signed in, without the session's token or from another site.
	b.signIn("alice")
	b.get("/segments/" + seg)
	for name, header := range map[string][]string{"wrong token": nil, "other origin": {"Origin", "http://evil.example"}} {
		f := url.Values{"op": {"add"}, "values": {"u3"}}
		if header == nil {
			f.Set("csrf", "AAAA"+b.csrf[4:])
		}
		for _, path := range []string{"/plan", "/confirm"} {
			if p := b.post("/segments/"+seg+path, f, header...); p.status != http.StatusForbidden || !strings.Contains(p.body, "CSRF") {
				t.Fatalf("%s: POST %s: %d %s", name, path, p.status, p.body)
			}
		}
	}

	// Read-only: the page shows the segment and no form; the changes are refused.
	_, ro := startPortal(t, nil, Config{ReadOnly: true})
	rb := newBrowser(t, ro)
	rb.signIn("alice")
	p := rb.get("/segments/" + seg)
	mustContain(t, p.body, "read-only", "<li>u1</li>")
	mustNotContain(t, p.body, `id="segment-add"`, `id="segment-remove"`, "Add…")
	if p := rb.post("/segments/"+seg+"/plan", url.Values{"op": {"add"}, "values": {"u3"}}); p.status != http.StatusForbidden || !strings.Contains(p.body, "read-only") {
		t.Fatalf("read-only plan: %d %s", p.status, p.body)
	}
	if p := rb.post("/segments/"+seg+"/confirm", url.Values{"id": {"x"}}); p.status != http.StatusForbidden {
		t.Fatalf("read-only confirm: %d", p.status)
	}

	// A wall dashboard: no sign-in, read-only, and only on the host names it answers to.
	_, open := startPortal(t, nil, Config{ReadOnly: true, Open: true, Hosts: []string{"portal.example"}})
	get := func(host, path string) int {
		req, _ := http.NewRequest(http.MethodGet, open.URL+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get("portal.example", "/segments/"+seg); st != http.StatusOK {
		t.Fatalf("open portal, its host: %d", st)
	}
	if st := get("evil.example", "/segments/"+seg); st != http.StatusMisdirectedRequest {
		t.Fatalf("open portal, another host: %d, want 421", st)
	}
	if v := segmentValues(t, seg); !slices.Equal(v, []string{"u1", "u2"}) {
		t.Fatalf("refused requests changed the segment: %v", v)
	}
	if h := segmentHistory(t, seg); len(h) != 1 {
		t.Fatalf("refused requests recorded changes: %+v", h)
	}
}

func TestSegmentErrorsNameTheSegmentAndTheProblem(t *testing.T) {
	seg := newSegmentName("beta")
	createSegment(t, agent, "", seg, "", "carol", "u1")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/segments/" + seg)

	// Bad values: the page again, the problem named, the form as it was sent.
	p := b.post("/segments/"+seg+"/plan", url.Values{"op": {"add"}, "values": {"u7\n#comment\nx\x01y, u8"}})
	if p.status != http.StatusUnprocessableEntity {
		t.Fatalf("bad values: %d\n%s", p.status, p.body)
	}
	mustContain(t, p.body, "flash-error", "Nothing was planned: segment "+seg+": line 2: value &#34;#comment&#34; begins with &#39;#&#39;",
		"(and 1 more bad values)", "u7\n#comment\n", `id="segment-add"`)
	p = b.post("/segments/"+seg+"/plan", url.Values{"op": {"remove"}, "values": {strings.Repeat("x", 300)}})
	mustContain(t, p.body, "Nothing was planned: segment "+seg+": line 1: ")
	if p.status != http.StatusUnprocessableEntity || !strings.Contains(p.body, `<textarea name="values" rows="4" spellcheck="false" autocomplete="off">`+strings.Repeat("x", 300)) {
		t.Fatalf("a long value to remove: %d", p.status)
	}
	p = b.post("/segments/"+seg+"/plan", url.Values{"op": {"add"}, "values": {" \n , "}})
	if p.status != http.StatusUnprocessableEntity || !strings.Contains(p.body, "Nothing was planned: no values to add to segment "+seg) {
		t.Fatalf("no values: %d\n%s", p.status, p.body)
	}
	if p := b.post("/segments/"+seg+"/plan", url.Values{"op": {"import"}, "values": {"u2"}}); p.status != http.StatusBadRequest {
		t.Fatalf("an action the page does not offer: %d", p.status)
	}
	// A form too large for the page: the command's.
	p = b.post("/segments/"+seg+"/plan", url.Values{"op": {"add"}, "values": {strings.Repeat("u1\n", 400_000)}})
	if p.status != http.StatusRequestEntityTooLarge || !strings.Contains(p.body, "graylane segment add NAME -f FILE") {
		t.Fatalf("a form of 1.2 MB: %d %s", p.status, p.body)
	}
	// A segment that does not exist, or whose name cannot be one.
	p = b.post("/segments/nosuchsegment/plan", url.Values{"op": {"add"}, "values": {"u2"}})
	if p.status != http.StatusNotFound {
		t.Fatalf("plan on a segment that does not exist: %d", p.status)
	}
	mustContain(t, p.body, "Nothing was planned: Segment nosuchsegment does not exist (graylane segment create nosuchsegment makes it).")
	p = b.post("/segments/No_Such/plan", url.Values{"op": {"add"}, "values": {"u2"}})
	if p.status != http.StatusNotFound || !strings.Contains(p.body, "No segment can be called &#34;No_Such&#34;") {
		t.Fatalf("plan on a name that cannot be a segment's: %d", p.status)
	}
	// Deleted between the plan and the confirmation.
	p = planSegment(t, b, seg, "add", "u2")
	if _, err := newRegistrar(t, agent, "", "bob").DeleteSegment(context.Background(), seg); err != nil {
		t.Fatal(err)
	}
	p = b.follow("/segments/"+seg+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "flash-error", "add on segment "+seg+" was not made: segment "+seg+" does not exist any more", "Nothing was changed.")
	for _, body := range []string{p.body} {
		mustNotContain(t, body, "goroutine", "panic")
	}
}

// TestSegmentChangeRefusedByConsul: a portal whose token may read the segments and not change
// them shows the segment, and Consul's refusal of a change, naming the segment.
func TestSegmentChangeRefusedByConsul(t *testing.T) {
	a := consultest.StartACL(t)
	seg := newSegmentName("beta")
	createSegment(t, a, a.Token, seg, "", "setup", "u1")
	b := newBrowser(t, startWithToken(t, a))
	b.signIn("alice")
	waitFor(t, 5*time.Second, "the segment listed", func() bool {
		return strings.Contains(b.get("/segments").body, `data-segment="`+seg+`" data-count="1"`)
	})
	b.get("/segments/" + seg)
	p := planSegment(t, b, seg, "add", "u2")
	p = b.follow("/segments/"+seg+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "flash-error", "Refused by Consul", "add on segment "+seg+" refused: permission denied", "nothing was changed")
	mustNotContain(t, p.body, a.Token)
}

func TestParseSegmentValues(t *testing.T) {
	for _, tc := range []struct {
		text     string
		values   []string
		problems []string
	}{
		{"", nil, nil},
		{"u1\nu2\r\n\n  u3  ", []string{"u1", "u2", "u3"}, nil},
		{"u1, u2,u3\nu4", []string{"u1", "u2", "u3", "u4"}, nil},
		{" , ,\n", nil, nil},
		{"u1\n#x", []string{"u1"}, []string{`line 2: value "#x" begins with '#', which a segment file reads as a comment`}},
		{"u1, a\x00b", []string{"u1"}, []string{"line 1, item 2: "}},
	} {
		values, problems := parseSegmentValues(tc.text)
		if !slices.Equal(values, tc.values) || len(problems) != len(tc.problems) {
			t.Errorf("%q: values %q, problems %q", tc.text, values, problems)
			continue
		}
		for i := range problems {
			if !strings.HasPrefix(problems[i], tc.problems[i]) {
				t.Errorf("%q: problem %q, want %q", tc.text, problems[i], tc.problems[i])
			}
		}
	}
}

func TestPlanSegmentChange(t *testing.T) {
	current := []string{"a", "b", "c"}
	for _, tc := range []struct {
		action             string
		given              []string
		after, chg, ignore int
		sample             []string
	}{
		{registrar.SegmentAdd, []string{"d", "a", "d", "e"}, 5, 2, 1, []string{"d", "e"}},
		{registrar.SegmentAdd, []string{"a", "b"}, 3, 0, 2, nil},
		{registrar.SegmentRemove, []string{"c", "z", "a"}, 1, 2, 1, []string{"a", "c"}},
		{registrar.SegmentRemove, []string{"z"}, 3, 0, 1, nil},
	} {
		given := slices.Clone(tc.given)
		p := planSegmentChange("s", tc.action, current, given)
		if p.before != 3 || p.after != tc.after || p.changing != tc.chg || p.ignored != tc.ignore || !slices.Equal(p.sample, tc.sample) {
			t.Errorf("%s %v: %+v", tc.action, tc.given, p)
		}
		if !slices.Equal(given, tc.given) || !slices.Equal(current, []string{"a", "b", "c"}) {
			t.Errorf("%s %v: the lists handed in were changed", tc.action, tc.given)
		}
	}
	var many []string
	for i := range 30 {
		many = append(many, fmt.Sprintf("n%02d", i))
	}
	if p := planSegmentChange("s", registrar.SegmentAdd, current, many); len(p.sample) != segmentSampleShown || p.view("x").More != 10 {
		t.Errorf("30 new values: sample %d, more %d", len(p.sample), p.view("x").More)
	}
}

// TestSegmentOutcomeNamesTheSegmentAndTheProblem: what the page says after a confirmed change, for
// each way the registrar can answer.
func TestSegmentOutcomeNamesTheSegmentAndTheProblem(t *testing.T) {
	p := &segmentPlan{name: "beta", action: registrar.SegmentAdd, before: 10, after: 12}
	at := time.Date(2025, 3, 1, 10, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		res  *registrar.SegmentResult
		err  error
		kind string
		want []string
	}{
		{&registrar.SegmentResult{Before: 10, After: 12, Added: 2}, nil, "ok", []string{"add on segment beta: done (+2), 12 values now, recorded as alice."}},
		{&registrar.SegmentResult{Before: 11, After: 13, Added: 2, Retries: 1}, nil, "ok", []string{"done (+2), 13 values now", "had changed since the preview: it held 11 values, not 10"}},
		{&registrar.SegmentResult{Before: 10, After: 10, Unchanged: true}, nil, "info", []string{"add on segment beta: nothing to change"}},
		{nil, &registrar.SegmentConflictError{Segment: "beta", Action: "add", Attempts: 6,
			Last: &registrar.SegmentHistoryEntry{Action: "import", Who: "dave", Time: at}}, "conflict",
			[]string{"Conflict: add on segment beta was not made", "(6 tries)", `"import" by dave at 10:04:05 UTC`, "Nothing was changed"}},
		{nil, &registrar.SegmentPermissionError{Segment: "beta", Action: "add", Missing: []string{"key write on graylane/segments/beta/"}}, "error",
			[]string{"Refused by Consul", "add on segment beta refused", "key write on graylane/segments/beta/"}},
		{nil, &registrar.SegmentNotFoundError{Segment: "beta"}, "error", []string{"add on segment beta was not made: segment beta does not exist any more"}},
		{nil, &registrar.SegmentValueError{Segment: "beta", Position: 1, Value: "#x", Problem: "begins with '#'"}, "error", []string{`add on segment beta was not made: value "#x": begins with '#'`}},
		{nil, &registrar.SegmentLimitError{Segment: "beta", Action: "add", Count: 100_001}, "error", []string{"segment beta would hold 100,001 values; a segment holds at most 100,000"}},
		{nil, errors.New("connection refused"), "error", []string{"add on segment beta failed: connection refused"}},
	} {
		f := segmentOutcome(p, "alice", tc.res, tc.err)
		if f.Kind != tc.kind {
			t.Errorf("%v: kind %s, want %s (%s)", tc.err, f.Kind, tc.kind, f.Text)
		}
		for _, w := range tc.want {
			if !strings.Contains(f.Text, w) {
				t.Errorf("%v: %q lacks %q", tc.err, f.Text, w)
			}
		}
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 100000: "100,000", 1234567: "1,234,567", -1200: "-1,200"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
