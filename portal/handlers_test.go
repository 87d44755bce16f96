package portal

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

func TestSignedOutIsRefusedEverything(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	for _, path := range []string{"/", "/s/" + svc, "/s/" + svc + "?confirm=x"} {
		p := b.get(path)
		if p.status != http.StatusSeeOther || !strings.HasPrefix(p.location, "/login?next=") {
			t.Fatalf("GET %s signed out: %d %q", path, p.status, p.location)
		}
		mustNotContain(t, p.body, svc+"-canary-1", "data-lane")
	}
	if p := b.get("/events?service=" + svc); p.status != http.StatusUnauthorized {
		t.Fatalf("events signed out: %d", p.status)
	}
	for _, path := range []string{"/s/" + svc + "/plan", "/s/" + svc + "/confirm", "/s/" + svc + "/cancel", "/s/" + svc + "/explain", "/logout"} {
		p := b.post(path, url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"50"}, "csrf": {"guess"}})
		if p.status != http.StatusUnauthorized {
			t.Fatalf("POST %s signed out: %d", path, p.status)
		}
		mustNotContain(t, p.body, svc+"-canary-1", "data-lane")
	}
	if w := laneWeight(t, svc, "canary"); w != "10" {
		t.Fatalf("canary weight %s after signed-out posts", w)
	}
	// A wrong password, an unknown operator and a sign-in from another site are refused.
	p := b.post("/login", url.Values{"name": {"alice"}, "password": {"wrong password"}})
	if p.status != http.StatusUnauthorized || !strings.Contains(p.body, "wrong password") {
		t.Fatalf("wrong password: %d %s", p.status, p.body)
	}
	if p := b.post("/login", url.Values{"name": {"mallory"}, "password": {testPassword}}); p.status != http.StatusUnauthorized {
		t.Fatalf("unknown operator: %d", p.status)
	}
	if p := b.post("/login", url.Values{"name": {"alice"}, "password": {testPassword}}, "Origin", "http://evil.example"); p.status != http.StatusForbidden {
		t.Fatalf("cross-site sign-in: %d", p.status)
	}
	// Signing out ends the session for every request.
	b.signIn("alice")
	if p := b.get("/s/" + svc); p.status != http.StatusOK {
		t.Fatalf("signed in: %d", p.status)
	}
	b.follow("/logout", nil)
	if p := b.get("/s/" + svc); p.status != http.StatusSeeOther {
		t.Fatalf("after sign-out: %d", p.status)
	}
}

func TestServicePageShowsLanesRulesInstancesAndHistory(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	p := b.get("/")
	if p.status != http.StatusSeeOther || !strings.HasPrefix(p.location, "/s/") {
		t.Fatalf("index: %d %q", p.status, p.location)
	}
	p = b.get("/s/" + svc)
	if p.status != http.StatusOK {
		t.Fatalf("service page: %d", p.status)
	}
	mustContain(t, p.body,
		`data-lane="canary" data-share="10" data-weight="10"`,
		`data-lane="stable" data-share="90"`,
		`header userid = &#34;123&#34; and path starts with &#34;/api/user&#34;`, // readable rules, not JSON
		`<div class="or">or</div>`,
		`cookies matches /^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$/`,
		svc+"-canary-1", svc+"-1", "127.0.0.1:9103", "✓ passing",
		"canary · weight 10 % · 2 rules",
		`<a href="/s/`+svc+`" data-service="`+svc+`">`,
		`data-change="apply"`, `<span class="who-name">setup</span>`, "decision options: lane tag "+gray.DefaultTagKey,
		`class="seg lane-canary"`, `class="seg lane-stable"`)
	mustNotContain(t, p.body, `"value_match"`, `id="rollout"`, `id="rates"`)
	// An unknown service is a 404 that says so.
	if p := b.get("/s/nosuchservice"); p.status != http.StatusNotFound || !strings.Contains(p.body, "No service nosuchservice") {
		t.Fatalf("unknown service: %d", p.status)
	}
	// Problems and drift: an instance whose meta does not decode, and one that differs from the
	// record.
	r := newRegistrar(t, agent, "", "bob")
	if _, err := r.Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
	client := r.Client()
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: svc + "-canary-1", Name: svc, Address: "127.0.0.1", Port: 9103, Meta: map[string]string{"canary": "true", "weight": "7"}}); err != nil {
		t.Fatal(err)
	}
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: svc + "-broken", Name: svc, Address: "127.0.0.1", Port: 9104,
		Meta: map[string]string{"weight": "lots"}, Check: &api.AgentServiceCheck{TTL: "30s"}}); err != nil { // critical until its first heartbeat
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "drift and problems on the page", func() bool {
		body := b.get("/s/" + svc).body
		return strings.Contains(body, `<h2>Drift</h2>`) && strings.Contains(body, svc+"-broken") && strings.Contains(body, "lots")
	})
	p = b.get("/s/" + svc)
	mustContain(t, p.body, "recorded canary · weight 25 % · 2 rules, instance has canary · weight 7 %", `<span class="badge drift">drift</span>`,
		`<span class="health h-critical">✕ critical</span>`, `<h2>Problems</h2>`, svc+`-broken`,
		`data-change="weight canary 25"`, `<span class="who-name">bob</span>`, "applied")
}

func TestSetWeightAsksConfirmationAndRecordsTheOperator(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	p := b.post("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"25%"}})
	if p.status != http.StatusSeeOther || !strings.Contains(p.location, "?confirm=") {
		t.Fatalf("plan: %d %q %s", p.status, p.location, p.body)
	}
	p = b.get(p.location)
	mustContain(t, p.body, "Confirm: weight canary 25 on "+svc, "canary · weight 10 % · 2 rules", "<b>canary · weight 25 % · 2 rules</b>", "Recorded as <b>alice</b>")
	if w := laneWeight(t, svc, "canary"); w != "10" {
		t.Fatalf("planning changed the weight to %s", w)
	}
	id := regexpFind(t, p.body, `name="id" value="([^"]+)"`)
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, `flash-ok`, "weight canary 25 on "+svc+": done ("+svc+"-canary-1)", `data-change="weight canary 25"`, `<span class="who-name">alice</span>`)
	if w := laneWeight(t, svc, "canary"); w != "25" {
		t.Fatalf("canary weight %s after the confirmation", w)
	}
	hist, err := newRegistrar(t, agent, "", "check").History(context.Background(), svc)
	if err != nil || len(hist) != 2 || hist[1].Who != "alice" || hist[1].Outcome != registrar.OutcomeApplied {
		t.Fatalf("history %+v, %v", hist, err)
	}
	// The confirmation is used up: a second post changes nothing and says so.
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, "expired or was used already")
	// Asking for what is there already is "nothing to change"; a bad weight is named.
	p = b.follow("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"25"}})
	mustContain(t, p.body, "flash-info", "nothing to change")
	p = b.follow("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"250"}})
	mustContain(t, p.body, "flash-error", `weight &#34;250&#34; for lane canary`)
	p = b.follow("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"nolane"}, "weight": {"5"}})
	mustContain(t, p.body, "flash-error", `has no lane &#34;nolane&#34;`)
	// Cancel drops a planned change.
	p = b.post("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"30"}})
	id = strings.TrimSuffix(strings.SplitN(p.location, "?confirm=", 2)[1], "#confirm")
	b.follow("/s/"+svc+"/cancel", url.Values{"id": {id}})
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, "expired or was used already")
	if w := laneWeight(t, svc, "canary"); w != "25" {
		t.Fatalf("canary weight %s after a cancelled change", w)
	}
}

func TestConflictIsShownAsAConflict(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	p := b.post("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"30"}})
	id := strings.TrimSuffix(strings.SplitN(p.location, "?confirm=", 2)[1], "#confirm")
	// Someone else changes the service between plan and confirmation.
	if _, err := newRegistrar(t, agent, "", "bob").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 4000}); err != nil {
		t.Fatal(err)
	}
	p = b.follow("/s/"+svc+"/confirm", url.Values{"id": {id}})
	mustContain(t, p.body, "flash-conflict", "Conflict: weight canary 30 on "+svc+" was not made", `&#34;weight canary 40&#34; by bob`, "Nothing was changed")
	if w := laneWeight(t, svc, "canary"); w != "40" {
		t.Fatalf("canary weight %s, want bob's 40", w)
	}
}

func TestPromoteRollbackAndDrain(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("bob")
	b.get("/s/" + svc)
	confirm := func(form url.Values, want ...string) page {
		t.Helper()
		p := b.post("/s/"+svc+"/plan", form)
		if !strings.Contains(p.location, "?confirm=") {
			t.Fatalf("plan %v: %d %q", form, p.status, p.location)
		}
		p = b.get(p.location)
		mustContain(t, p.body, want...)
		return b.follow("/s/"+svc+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	}
	p := confirm(url.Values{"op": {"rollback"}, "lane": {"canary"}}, "Confirm: rollback canary", "<b>canary · weight 0 % · 2 rules</b>")
	mustContain(t, p.body, "rollback canary on "+svc+": done")
	if w := laneWeight(t, svc, "canary"); w != "0" {
		t.Fatalf("weight after rollback: %s", w)
	}
	p = confirm(url.Values{"op": {"drain"}, "instance": {svc + "-1"}, "keep": {"1"}}, "Confirm: drain "+svc+"-1", "<b>stable · weight 0 % · draining</b>", "stays registered")
	mustContain(t, p.body, "drain "+svc+"-1 on "+svc+": done", `<span class="badge">draining</span>`)
	p = confirm(url.Values{"op": {"promote"}, "lane": {"canary"}}, "Confirm: promote canary", "<b>stable</b>", "stable now",
		`<p class="effect">`+svc+`&#39;s instances of lane canary become stable`)
	mustContain(t, p.body, "promote canary on "+svc+": done")
	p = confirm(url.Values{"op": {"drain"}, "instance": {svc + "-2"}}, "then the instance is deregistered")
	mustContain(t, p.body, "drain "+svc+"-2 on "+svc+": done")
	insts, _, err := newRegistrar(t, agent, "", "check").Instances(context.Background(), svc)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, inst := range insts {
		ids = append(ids, inst.ID)
		if inst.ID == svc+"-canary-1" && (inst.GrayErr != nil || inst.Gray.LaneName() != gray.StableLane) {
			t.Fatalf("promoted canary: %+v", inst.Gray)
		}
	}
	if strings.Join(ids, ",") != svc+"-1,"+svc+"-canary-1" {
		t.Fatalf("instances after draining %s-2: %v", svc, ids)
	}
	// History names the operator on every change, newest first.
	mustContain(t, b.get("/s/"+svc).body, `data-change="deregister `+svc+`-2"`, `data-change="promote canary"`, `data-change="rollback canary"`)
	if strings.Count(b.get("/s/"+svc).body, `<span class="who-name">bob</span>`) != 5 {
		t.Fatal("history does not name bob on each of the five changes")
	}
}

func TestStateChangesNeedTheCSRFToken(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	form := url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"50"}}
	for name, tc := range map[string]struct {
		csrf   []string
		header []string
	}{
		"no token":      {csrf: []string{""}},
		"wrong token":   {csrf: []string{"AAAA" + b.csrf[4:]}},
		"other origin":  {header: []string{"Origin", "http://evil.example"}},
		"cross-site":    {header: []string{"Sec-Fetch-Site", "cross-site"}},
		"token in form": {}, // the valid case, last
	} {
		if name == "token in form" {
			continue
		}
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		if tc.csrf != nil {
			f["csrf"] = tc.csrf
		}
		for _, path := range []string{"/s/" + svc + "/plan", "/s/" + svc + "/confirm", "/s/" + svc + "/explain", "/logout"} {
			if p := b.post(path, f, tc.header...); p.status != http.StatusForbidden || !strings.Contains(p.body, "CSRF") {
				t.Fatalf("%s: POST %s: %d %s", name, path, p.status, p.body)
			}
		}
	}
	if w := laneWeight(t, svc, "canary"); w != "10" {
		t.Fatalf("weight %s after refused requests", w)
	}
	if p := b.post("/s/"+svc+"/plan", form); p.status != http.StatusSeeOther || !strings.Contains(p.location, "confirm=") {
		t.Fatalf("with the token: %d %q", p.status, p.location)
	}
}

func TestReadOnlyRefusesChanges(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{ReadOnly: true})
	b := newBrowser(t, ts)
	b.signIn("alice")
	p := b.get("/s/" + svc)
	mustContain(t, p.body, "read-only", `data-lane="canary"`, "Explain a request")
	mustNotContain(t, p.body, "Set weight", "Promote", "Drain<")
	for _, op := range []url.Values{{"op": {"weight"}, "lane": {"canary"}, "weight": {"50"}}, {"op": {"drain"}, "instance": {svc + "-1"}}} {
		if p := b.post("/s/"+svc+"/plan", op); p.status != http.StatusForbidden {
			t.Fatalf("read-only plan %v: %d", op, p.status)
		}
	}
	if p := b.post("/s/"+svc+"/confirm", url.Values{"id": {"x"}}); p.status != http.StatusForbidden {
		t.Fatalf("read-only confirm: %d", p.status)
	}
	// A wall dashboard: no sign-in, read-only, explain still works.
	_, open := startPortal(t, nil, Config{ReadOnly: true, Open: true})
	w := newBrowser(t, open)
	p = w.get("/s/" + svc)
	if p.status != http.StatusOK {
		t.Fatalf("open portal: %d", p.status)
	}
	mustNotContain(t, p.body, "Sign out", "Set weight")
	if p := w.post("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"50"}}); p.status != http.StatusForbidden {
		t.Fatalf("open portal plan: %d", p.status)
	}
	p = w.post("/s/"+svc+"/explain", url.Values{"headers": {"userid: 123"}, "path": {"/api/user/1"}})
	mustContain(t, p.body, `<span id="explain-lane">canary</span>`)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, open.URL+"/events?service="+svc, nil)
	resp, err := http.DefaultClient.Do(req) // no cookie: the wall needs none
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events of the open portal: %v %v", resp, err)
	}
	cancel()
	resp.Body.Close()
	if _, err := New(Config{Open: true, Consul: registrar.NewConfig(agent.HTTPAddr)}); err == nil {
		t.Fatal("an open portal that can change traffic was accepted")
	}
	if _, err := New(Config{Consul: registrar.NewConfig(agent.HTTPAddr)}); err == nil {
		t.Fatal("a portal without passwords was accepted")
	}
}

func TestExplainAnswersLikeTheCommand(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	p := b.post("/s/"+svc+"/explain", url.Values{"headers": {"UserID: 123\r\nx-other: 1"}, "path": {"/api/user/7"}, "method": {"get"}})
	mustContain(t, p.body, `<span id="explain-lane">canary</span>`, `<b id="explain-reason">match</b> (rule 1)`, svc+"-canary-1 (127.0.0.1:9103)",
		"x-md-global-gray-lane: canary", "UserID: 123") // the form keeps what was asked
	p = b.post("/s/"+svc+"/explain", url.Values{"cookie": {"email=li@some-company-name.com"}})
	mustContain(t, p.body, `<span id="explain-lane">canary</span>`, "(rule 2)")
	key := 0 // a user outside the canary's 10 %
	for gray.Bucket(svc, fmt.Sprint("user-", key)) < 1000 {
		key++
	}
	p = b.post("/s/"+svc+"/explain", url.Values{"key": {fmt.Sprint("user-", key)}})
	mustContain(t, p.body, `<span id="explain-lane">stable</span>`, `<b id="explain-reason">base</b>`, fmt.Sprintf("<dd>%d of 10000</dd>", gray.Bucket(svc, fmt.Sprint("user-", key))))
	p = b.post("/s/"+svc+"/explain", url.Values{"lane": {"canary"}})
	mustContain(t, p.body, `<b id="explain-reason">tag</b>`)
	p = b.post("/s/"+svc+"/explain", url.Values{"ip": {"not-an-ip"}})
	mustContain(t, p.body, "flash-error", "is not an IP address")
	p = b.post("/s/"+svc+"/explain", url.Values{"headers": {"no colon here"}})
	mustContain(t, p.body, "write &#39;Name: value&#39;")
}

// readEvents follows a stream: after each event it sends the page's regions as the events so far
// have left them, and the event's name.
func readEvents(t *testing.T, resp *http.Response) <-chan map[string]any {
	out := make(chan map[string]any, 64)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		event := ""
		state := map[string]any{}
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var m map[string]any
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &m) == nil {
					merged := map[string]any{}
					for k, v := range state {
						merged[k] = v
					}
					for k, v := range m {
						merged[k] = v
					}
					merged["event"] = event
					state = merged
					out <- merged
				}
			}
		}
	}()
	return out
}

func TestEventsFollowChangesMadeAnywhere(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	b.get("/s/" + svc)
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/events?service="+svc+"&since=0", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := b.c.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, ct)
	}
	events := readEvents(t, resp)
	var last map[string]any // the page as the events so far left it
	waitEvent := func(what string, cond func(map[string]any) bool) time.Time {
		t.Helper()
		if last != nil && cond(last) {
			return time.Now()
		}
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("stream ended waiting for %s", what)
				}
				last = ev
				if cond(ev) {
					return time.Now()
				}
			case <-timeout:
				t.Fatalf("no event with %s; the last:\n%v", what, last)
			}
		}
	}
	main := func(want string) func(map[string]any) bool {
		return func(ev map[string]any) bool { s, _ := ev["main"].(string); return strings.Contains(s, want) }
	}
	waitEvent("the first state", main(`data-lane="canary" data-share="10"`))
	// A change made with the registrar, as the command makes it.
	r := newRegistrar(t, agent, "", "cli")
	var worst time.Duration
	for _, w := range []gray.Weight{700, 1500, 300} {
		start := time.Now()
		if _, err := r.Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: w}); err != nil {
			t.Fatal(err)
		}
		got := waitEvent("weight "+w.String(), main(`data-lane="canary" data-share="`+w.String()+`"`))
		worst = max(worst, got.Sub(start))
	}
	t.Logf("change to event, worst of 3: %v (BenchmarkChangeToEvent measures it)", worst)
	// History arrives too, with the outcome once applied.
	waitEvent("the history entry", func(ev map[string]any) bool {
		s, _ := ev["history"].(string)
		return strings.Contains(s, `data-change="weight canary 3"`) && strings.Contains(s, `<span class="who-name">cli</span>`) &&
			strings.Count(s, `<div class="outcome o-ok">applied</div>`) == 4
	})
	// An instance going away (a restart, a crash) reaches the page.
	if err := r.Client().Agent().ServiceDeregister(svc + "-2"); err != nil {
		t.Fatal(err)
	}
	waitEvent("the instance leaving", func(ev map[string]any) bool {
		s, ok := ev["main"].(string)
		return ok && !strings.Contains(s, `data-instance="`+svc+`-2"`)
	})
	// Signing out ends the stream.
	b.follow("/logout", nil)
	if _, err := r.Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 100}); err != nil {
		t.Fatal(err)
	}
	waitEvent("the sign-out", func(ev map[string]any) bool { return ev["event"] == "signedout" })
}

// fakeRollouts stands in for the rollout and metrics sources, which graylane does not have yet: the
// portal only renders what a source gives it.
type fakeRollouts struct {
	mu      sync.Mutex
	rollout *Rollout
	rates   map[string]LaneRates
}

func (f *fakeRollouts) Rollout(context.Context, string) (*Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rollout, nil
}

func (f *fakeRollouts) Rates(context.Context, string) (map[string]LaneRates, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rates, nil
}

func TestRolloutAndRatePanelsAppearWithTheirData(t *testing.T) {
	svc := registerRelease(t, agent, "")
	src := &fakeRollouts{}
	p, ts := startPortal(t, nil, Config{Rollouts: src, Rates: src})
	b := newBrowser(t, ts)
	b.signIn("alice")
	mustNotContain(t, b.get("/s/"+svc).body, `id="rollout"`, `id="rates"`)
	src.mu.Lock()
	src.rollout = &Rollout{Lane: "canary", Step: 2, Steps: 5, Weight: "10", State: "progressing", NextStep: time.Now().Add(90 * time.Second),
		Gates: []Gate{{Name: "error rate", Value: "0.2 %", Threshold: "< 1 %", OK: true}, {Name: "p99 latency", Value: "310ms", Threshold: "< 250ms"}}}
	src.rates = map[string]LaneRates{"canary": {RequestsPerSecond: 12.5, ErrorRatio: 0.002, P99: 310 * time.Millisecond}, "stable": {RequestsPerSecond: 112}}
	src.mu.Unlock()
	p.Notify(svc)
	waitFor(t, 5*time.Second, "the panels", func() bool { return strings.Contains(b.get("/s/"+svc).body, `id="rollout"`) })
	mustContain(t, b.get("/s/"+svc).body, "step <b>2</b> of 5", "✓ ok", "✕ failing", "p99 latency", `id="rates"`, "12.5", "0.20 %", "310ms", "112.0")
}

func TestNothingSecretReachesThePage(t *testing.T) {
	a := consultest.StartACL(t)
	svc := registerRelease(t, a, a.Token)
	_, ts := startPortal(t, a, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	pages := []page{b.get("/s/" + svc)}
	pages = append(pages, b.post("/s/"+svc+"/explain", url.Values{"headers": {"userid: 123"}}))
	pages = append(pages, b.follow("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"20"}}))
	for _, p := range pages {
		mustNotContain(t, p.body, a.Token, testPassword, "pbkdf2")
	}
	// A token the registrar may not use for changes: the page says Consul refused, nothing changes.
	rb := newBrowser(t, startWithToken(t, a))
	rb.signIn("alice")
	rb.get("/s/" + svc)
	p := rb.post("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"30"}})
	if !strings.Contains(p.location, "confirm=") {
		t.Fatalf("plan with a read token: %d %q", p.status, p.location)
	}
	p = rb.get(p.location)
	p = rb.follow("/s/"+svc+"/confirm", url.Values{"id": {regexpFind(t, p.body, `name="id" value="([^"]+)"`)}})
	mustContain(t, p.body, "Refused by Consul", "permission denied")
	mustNotContain(t, p.body, a.Token)
}

// startWithToken runs a portal whose Consul token may read everything and write nothing.
func startWithToken(t *testing.T, a *consultest.Agent) *httptest.Server {
	t.Helper()
	client := newRegistrar(t, a, a.Token, "setup").Client()
	pol, _, err := client.ACL().PolicyCreate(&api.ACLPolicy{Name: "portal-read", Rules: `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" } key_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = tok.SecretID
	_, ts := startPortal(t, a, Config{Consul: cfg})
	return ts
}

func regexpFind(t *testing.T, body, re string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in:\n%s", re, body)
	}
	return m[1]
}

func TestConsulAwayShowsTheLastStateMarkedStale(t *testing.T) {
	a := consultest.StartPersistent(t)
	svc := registerRelease(t, a, "")
	p, ts := startPortal(t, a, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	mustContain(t, b.get("/s/"+svc).body, `<span class="conn-text">live</span>`)
	a.Stop()
	p.Notify(svc) // a read while Consul is away keeps the last state
	waitFor(t, 10*time.Second, "the page to say Consul is away", func() bool {
		return strings.Contains(b.get("/s/"+svc).body, "Consul cannot be reached")
	})
	mustContain(t, b.get("/s/"+svc).body, `data-lane="canary" data-share="10"`, svc+"-canary-1", `data-change="apply"`)
	// Consul back: live again, and changes flow.
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the page to be live again", func() bool {
		body := b.get("/s/" + svc).body
		return strings.Contains(body, `<span class="conn-text">live</span>`) && strings.Contains(body, `data-lane="canary"`)
	})
	if _, err := newRegistrar(t, a, "", "bob").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 1500}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a change after the outage", func() bool {
		return strings.Contains(b.get("/s/"+svc).body, `data-lane="canary" data-share="15"`)
	})
}

func TestNextStepLeadsToTheConfirmation(t *testing.T) {
	svc := registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	p := b.get("/s/" + svc)
	mustContain(t, p.body, "Next: weight 25 %")
	p = b.follow("/s/"+svc+"/plan", url.Values{"op": {"weight"}, "lane": {"canary"}, "weight": {"25"}})
	mustContain(t, p.body, "Confirm: weight canary 25")
	if _, err := newRegistrar(t, agent, "", "bob").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 5000}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the promotion offered", func() bool { return strings.Contains(b.get("/s/"+svc).body, "Next: promote canary") })
	// In a blue/green service the colour that is not live is offered the switch.
	bg := registerBlueGreen(t, fmt.Sprintf("payments%d", serviceSeq.Add(1)))
	waitFor(t, 5*time.Second, "the switch offered", func() bool { return strings.Contains(b.get("/s/"+bg).body, "Switch: promote green") })
	mustNotContain(t, b.get("/s/"+bg).body, "Switch: promote blue")
}

// TestNoRedirectOffThePortal: a next parameter that a browser would read as another host (a tab or
// a newline it drops, a backslash it reads as a slash) sends the operator to the portal's own front
// page: for a signed-in operator, after a sign-in, and on a portal without sign-in.
func TestNoRedirectOffThePortal(t *testing.T) {
	registerRelease(t, agent, "")
	_, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	hostile := []string{"/\t/evil.example/", "/\n/evil.example/", "/\\/evil.example/", "//evil.example/", "/\u00a0/evil.example/", "https://evil.example/"}
	for _, next := range hostile {
		p := b.post("/login", url.Values{"name": {"alice"}, "password": {testPassword}, "next": {next}})
		if p.status != http.StatusSeeOther || p.location != "/" {
			t.Fatalf("sign-in with next %q: %d to %q, want 303 to /", next, p.status, p.location)
		}
	}
	for _, next := range hostile {
		if p := b.get("/login?next=" + url.QueryEscape(next)); p.status != http.StatusSeeOther || p.location != "/" {
			t.Fatalf("signed in, /login?next=%q: %d to %q, want 303 to /", next, p.status, p.location)
		}
	}
	if p := b.get("/login?next=" + url.QueryEscape("/s/x?tab=history")); p.location != "/s/x?tab=history" {
		t.Fatalf("a path on the portal: redirected to %q", p.location)
	}
	_, open := startPortal(t, nil, Config{Open: true, ReadOnly: true})
	for _, next := range hostile {
		if p := newBrowser(t, open).get("/login?next=" + url.QueryEscape(next)); p.location != "/" {
			t.Fatalf("open portal, /login?next=%q: redirected to %q", next, p.location)
		}
	}
}
