package portal

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// chromium finds the browser: $GRAYLANE_CHROMIUM, else chromium on PATH (`make test` installs
// Debian's chromium when it is missing). Without it the test fails: it never skips.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("GRAYLANE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: run make test (it installs Debian's chromium) or set GRAYLANE_CHROMIUM")
	return ""
}

// awaitPromise makes Evaluate wait for a promise's value.
func awaitPromise(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }

// TestBrowser drives the portal in a real headless Chromium through a release: sign-in, a weight
// set through the form, a change made outside the page arriving without reload, explain, an undo
// from the history, and the refusals. The steps share one browser and one service, in order.
func TestBrowser(t *testing.T) {
	svc := registerReleaseAs(t, agent, "", "checkout") // the other tests' services are numbered
	bg := registerBlueGreen(t, "payments")
	seg := newSegmentName("beta-testers-")
	createSegment(t, agent, "", seg, "users who try things first", "carol", "u1001", "u1002", "u1003")
	_, ts := startPortal(t, nil, Config{})

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.WindowSize(1440, 900),
		chromedp.Flag("disable-gpu", true), chromedp.Flag("hide-scrollbars", true), chromedp.Flag("disable-dev-shm-usage", true))...)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { // before the portal closes (cleanups run last first)
		cancelBrowser()
		cancelAlloc()
	})
	if err := chromedp.Run(browserCtx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	// run runs browser actions with a deadline: a wait that never ends fails the step, it does not
	// hang the test.
	run := func(t *testing.T, what string, actions ...chromedp.Action) {
		t.Helper()
		ctx, cancel := context.WithTimeout(browserCtx, 20*time.Second)
		defer cancel()
		if err := chromedp.Run(ctx, actions...); err != nil {
			var html string
			hctx, hcancel := context.WithTimeout(browserCtx, 2*time.Second)
			chromedp.Run(hctx, chromedp.OuterHTML("body", &html, chromedp.ByQuery))
			hcancel()
			t.Fatalf("%s: %v\npage:\n%s", what, err, html)
		}
	}
	url := func(path string) string { return ts.URL + path }
	canaryRow := `tr[data-lane="canary"]`

	t.Run("signed out, everything is refused", func(t *testing.T) {
		var location string
		var planStatus, eventsStatus, confirmStatus int
		run(t, "open the service page signed out",
			chromedp.Navigate(url("/s/"+svc)),
			chromedp.WaitVisible(`form.login`, chromedp.ByQuery),
			chromedp.Location(&location),
			chromedp.Evaluate(`fetch("/s/`+svc+`/plan", {method: "POST", body: new URLSearchParams({op: "weight", lane: "canary", weight: "50", csrf: "x"})}).then(r => r.status)`, &planStatus, awaitPromise),
			chromedp.Evaluate(`fetch("/s/`+svc+`/confirm", {method: "POST", body: new URLSearchParams({id: "x"})}).then(r => r.status)`, &confirmStatus, awaitPromise),
			chromedp.Evaluate(`fetch("/events?service=`+svc+`").then(r => r.status)`, &eventsStatus, awaitPromise),
		)
		if !strings.Contains(location, "/login?next=") || planStatus != 401 || confirmStatus != 401 || eventsStatus != 401 {
			t.Fatalf("signed out: at %s, plan %d, confirm %d, events %d", location, planStatus, confirmStatus, eventsStatus)
		}
	})

	t.Run("sign in and see the service", func(t *testing.T) {
		var nav, share string
		run(t, "sign in",
			chromedp.SendKeys(`input[name=name]`, "alice", chromedp.ByQuery),
			chromedp.SendKeys(`input[name=password]`, testPassword, chromedp.ByQuery),
			chromedp.Click(`form.login button`, chromedp.ByQuery),
			chromedp.WaitVisible(canaryRow, chromedp.ByQuery),
			chromedp.Text(`#region-nav`, &nav, chromedp.ByQuery),
			chromedp.AttributeValue(canaryRow, "data-share", &share, nil, chromedp.ByQuery),
		)
		if !strings.Contains(nav, svc) || !strings.Contains(nav, bg) || share != "10" {
			t.Fatalf("after sign-in: nav %q, canary share %q", nav, share)
		}
	})

	t.Run("set a weight through the form", func(t *testing.T) {
		var confirm, width, history string
		run(t, "plan, confirm and see the change",
			chromedp.SetValue(canaryRow+` .laneform input[name=weight]`, "25", chromedp.ByQuery),
			chromedp.Click(canaryRow+` .laneform button[value=weight]`, chromedp.ByQuery),
			chromedp.WaitVisible(`#confirm`, chromedp.ByQuery),
			chromedp.Text(`#confirm`, &confirm, chromedp.ByQuery),
			chromedp.Click(`#confirm-btn`, chromedp.ByQuery),
			chromedp.WaitVisible(`tr[data-lane="canary"][data-share="25"]`, chromedp.ByQuery),
			chromedp.AttributeValue(`.trafficbar .seg[data-lane="canary"]`, "style", &width, nil, chromedp.ByQuery),
			chromedp.Text(`#region-history li:first-child`, &history, chromedp.ByQuery),
		)
		confirm = strings.ToLower(confirm)
		if !strings.Contains(confirm, "weight canary 25") || !strings.Contains(confirm, "weight 10 %") || !strings.Contains(confirm, "weight 25 %") {
			t.Fatalf("confirmation: %q", confirm)
		}
		if !strings.Contains(width, "width:25%") && !strings.Contains(width, "width: 25%") {
			t.Fatalf("canary bar style %q", width)
		}
		if !strings.Contains(history, "weight canary 25") || !strings.Contains(history, "alice") {
			t.Fatalf("latest history entry: %q", history)
		}
		if w := laneWeight(t, svc, "canary"); w != "25" {
			t.Fatalf("recorded weight %s", w)
		}
	})

	t.Run("a change made with the command appears without reload", func(t *testing.T) {
		var before int
		run(t, "mark the page",
			chromedp.Evaluate(`window.samePage = "yes"; Number(document.body.dataset.updates || 0)`, &before))
		// The command's path: Plan and Commit on a registrar with the operator's name.
		r := newRegistrar(t, agent, "", "cli")
		var worst time.Duration
		for _, w := range []gray.Weight{500, 1250, 3000} {
			p, err := r.Plan(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: w})
			if err != nil {
				t.Fatal(err)
			}
			committed := time.Now()
			if _, err := r.Commit(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			var shownAt float64
			run(t, "see weight "+w.String(),
				chromedp.WaitVisible(fmt.Sprintf(`tr[data-lane="canary"][data-share="%s"]`, w), chromedp.ByQuery),
				chromedp.Evaluate(`window.graylaneLastUpdate`, &shownAt))
			worst = max(worst, time.UnixMilli(int64(shownAt)).Sub(committed))
		}
		var same, history string
		run(t, "check the page",
			chromedp.Evaluate(`window.samePage || "reloaded"`, &same),
			chromedp.Text(`#region-history li:first-child`, &history, chromedp.ByQuery))
		if same != "yes" || !strings.Contains(history, "weight canary 30") || !strings.Contains(history, "cli") {
			t.Fatalf("page %s, latest history %q", same, history)
		}
		t.Logf("commit to page updated, worst of 3: %v", worst)
	})

	t.Run("an update waits while the operator types", func(t *testing.T) {
		var before, typed int
		run(t, "type a weight",
			chromedp.Evaluate(`Number(document.body.dataset.updates || 0)`, &before),
			chromedp.Click(canaryRow+` .laneform input[name=weight]`, chromedp.ByQuery),
			chromedp.Evaluate(`document.activeElement.value = "42"; 0`, nil))
		if _, err := newRegistrar(t, agent, "", "cli").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 3100}); err != nil {
			t.Fatal(err)
		}
		var value, share string
		run(t, "the update arrives, the input keeps what was typed",
			chromedp.Poll(fmt.Sprintf(`Number(document.body.dataset.updates || 0) > %d`, before), nil, chromedp.WithPollingTimeout(10*time.Second)),
			chromedp.Value(canaryRow+` .laneform input[name=weight]`, &value, chromedp.ByQuery),
			chromedp.AttributeValue(canaryRow, "data-share", &share, nil, chromedp.ByQuery))
		if value != "42" || share != "30" {
			t.Fatalf("while typing: input %q, shown share %q (want the typed 42 and the old 30 until the focus leaves)", value, share)
		}
		run(t, "the focus leaves, the update applies",
			chromedp.Evaluate(`document.activeElement.blur(); 0`, &typed),
			chromedp.WaitVisible(`tr[data-lane="canary"][data-share="31"]`, chromedp.ByQuery))
		if _, err := newRegistrar(t, agent, "", "cli").Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: 3000}); err != nil {
			t.Fatal(err)
		}
		run(t, "back to 30", chromedp.WaitVisible(`tr[data-lane="canary"][data-share="30"]`, chromedp.ByQuery))
	})

	t.Run("explain a request", func(t *testing.T) {
		var lane, reason string
		run(t, "explain",
			chromedp.SetValue(`textarea[name=headers]`, "userid: 123", chromedp.ByQuery),
			chromedp.SetValue(`#explain input[name=path]`, "/api/user/1", chromedp.ByQuery),
			chromedp.Click(`.explainform button`, chromedp.ByQuery),
			chromedp.WaitVisible(`#explain-result`, chromedp.ByQuery),
			chromedp.Text(`#explain-lane`, &lane, chromedp.ByQuery),
			chromedp.Text(`#explain-reason`, &reason, chromedp.ByQuery))
		if lane != "canary" || reason != "match" {
			t.Fatalf("explain: lane %q, reason %q", lane, reason)
		}
	})

	t.Run("screenshot during the release", func(t *testing.T) {
		var shot []byte
		run(t, "screenshot",
			chromedp.EmulateViewport(1440, 900),
			chromedp.Evaluate(`window.scrollTo(0, 0)`, nil),
			chromedp.WaitVisible(`.trafficbar`, chromedp.ByQuery),
			chromedp.CaptureScreenshot(&shot))
		img, err := png.Decode(bytes.NewReader(shot))
		if err != nil || img.Bounds().Dx() != 1440 {
			t.Fatalf("screenshot: %v, %v", err, img.Bounds())
		}
		path := filepath.Join(t.TempDir(), "portal.png") // the README's picture is make try's (make screenshot)
		if err := os.WriteFile(path, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	})

	t.Run("undo a change from the history, then undo the undo", func(t *testing.T) {
		latest := `#region-history li:first-child`
		for _, step := range []struct{ undone, share string }{
			{"weight canary 30", "31"},      // the command's last change: 31 % to 30 %
			{"undo weight canary 30", "30"}, // the undo just made
		} {
			var confirm, history string
			run(t, "undo "+step.undone,
				chromedp.Navigate(url("/s/"+svc)),
				chromedp.WaitVisible(latest+` .undoform button[value=undo]`, chromedp.ByQuery),
				chromedp.Text(latest+` .what`, &history, chromedp.ByQuery),
				chromedp.Click(latest+` .undoform button[value=undo]`, chromedp.ByQuery),
				chromedp.WaitVisible(`#confirm`, chromedp.ByQuery),
				chromedp.Text(`#confirm`, &confirm, chromedp.ByQuery))
			confirm = strings.ToLower(confirm) // the heading is shown in capitals
			if !strings.HasPrefix(history, step.undone) || !strings.Contains(confirm, "undo "+step.undone+" at ") ||
				!strings.Contains(confirm, "weight "+step.share+" %") {
				t.Fatalf("undo of the latest entry %q: confirmation %q", history, confirm)
			}
			if w := laneWeight(t, svc, "canary"); w == step.share {
				t.Fatalf("the undo changed the weight before the confirmation")
			}
			run(t, "confirm the undo",
				chromedp.Click(`#confirm-btn`, chromedp.ByQuery),
				chromedp.WaitVisible(`.flash-ok`, chromedp.ByQuery),
				chromedp.WaitVisible(fmt.Sprintf(`tr[data-lane="canary"][data-share="%s"]`, step.share), chromedp.ByQuery),
				chromedp.Text(latest, &history, chromedp.ByQuery))
			if !strings.Contains(history, "undo "+step.undone) || !strings.Contains(history, "alice") {
				t.Fatalf("latest history entry after the undo: %q", history)
			}
			if w := laneWeight(t, svc, "canary"); w != step.share {
				t.Fatalf("recorded weight %s after the undo, want %s", w, step.share)
			}
		}
	})

	t.Run("the segments page lists the segment and leads to it", func(t *testing.T) {
		var count, values string
		run(t, "open the segments from the navigation",
			chromedp.Click(`#nav-segments`, chromedp.ByQuery),
			chromedp.WaitVisible(`tr[data-segment="`+seg+`"]`, chromedp.ByQuery),
			chromedp.AttributeValue(`tr[data-segment="`+seg+`"]`, "data-count", &count, nil, chromedp.ByQuery),
			chromedp.Click(`tr[data-segment="`+seg+`"] a.seglink`, chromedp.ByQuery),
			chromedp.WaitVisible(`#segment-values`, chromedp.ByQuery),
			chromedp.Text(`#segment-values`, &values, chromedp.ByQuery))
		if count != "3" || !strings.Contains(values, "u1001") || !strings.Contains(values, "u1003") {
			t.Fatalf("segment %s: count %q, values %q", seg, count, values)
		}
	})

	t.Run("an action without the CSRF token is refused", func(t *testing.T) {
		var status int
		var body string
		run(t, "post without the token",
			chromedp.Navigate(url("/s/"+svc)),
			chromedp.WaitVisible(canaryRow, chromedp.ByQuery),
			chromedp.Evaluate(`fetch("/s/`+svc+`/plan", {method: "POST", body: new URLSearchParams({op: "weight", lane: "canary", weight: "50"})}).then(r => r.status)`, &status, awaitPromise),
			// The form itself, with its token taken out.
			chromedp.Evaluate(`document.querySelector('tr[data-lane="canary"] .laneform input[name=csrf]').remove()`, nil),
			chromedp.SetValue(canaryRow+` .laneform input[name=weight]`, "50", chromedp.ByQuery),
			chromedp.Click(canaryRow+` .laneform button[value=weight]`, chromedp.ByQuery))
		// The form's answer replaces the page: read it once the navigation is over.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(body, "CSRF") && time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(browserCtx, time.Second)
			chromedp.Run(ctx, chromedp.Evaluate(`document.body ? document.body.innerText : ""`, &body))
			cancel()
		}
		if status != 403 || !strings.Contains(body, "refused") {
			t.Fatalf("without the token: fetch %d, form %q", status, body)
		}
		if w := laneWeight(t, svc, "canary"); w != "30" {
			t.Fatalf("weight %s after refused requests", w)
		}
	})

	t.Run("signed out again, everything is refused", func(t *testing.T) {
		var status int
		run(t, "sign out",
			chromedp.Navigate(url("/s/"+svc)),
			chromedp.WaitVisible(canaryRow, chromedp.ByQuery),
			chromedp.Evaluate(`window.oldToken = document.querySelector("input[name=csrf]").value`, nil),
			chromedp.Click(`.who button.link`, chromedp.ByQuery),
			chromedp.WaitVisible(`form.login`, chromedp.ByQuery),
			chromedp.Evaluate(`fetch("/s/`+svc+`/plan", {method: "POST", body: new URLSearchParams({op: "weight", lane: "canary", weight: "50", csrf: window.oldToken})}).then(r => r.status)`, &status, awaitPromise))
		if status != 401 {
			t.Fatalf("a change with the old token after sign-out: %d", status)
		}
	})
}

// registerBlueGreen registers a second service in a blue/green release, so that the page lists more
// than one.
func registerBlueGreen(t *testing.T, name string) string {
	t.Helper()

	specs := []registrar.Spec{
		{Name: name, ID: name + "-blue-1", Address: "127.0.0.1", Port: 9201, Gray: gray.Meta{BlueGreen: gray.Blue}},
		{Name: name, ID: name + "-green-1", Address: "127.0.0.1", Port: 9202, Gray: gray.Meta{BlueGreen: gray.Green, Weight: 3000}},
	}
	applyForTest(t, agent, "", specs)
	return name
}
