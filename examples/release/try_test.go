package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/graylane/graylane/gray"
)

// screenshotPortal signs in to the portal of make try in a real headless Chromium, opens bservice
// and checks that it shows the canary at 25 % in the traffic bar, then takes the README's picture:
// into docs/portal.png with GRAYLANE_UPDATE_SCREENSHOT=1 (make screenshot), else into a temporary file.
func screenshotPortal(t *testing.T, s *tryStack) {
	t.Helper()
	browser := os.Getenv("GRAYLANE_CHROMIUM")
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if browser != "" {
			break
		}
		browser, _ = exec.LookPath(name)
	}
	if browser == "" {
		t.Fatal("no chromium on PATH: run make test (it installs Debian's chromium) or set GRAYLANE_CHROMIUM")
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.WindowSize(1440, 900),
		chromedp.Flag("disable-gpu", true), chromedp.Flag("hide-scrollbars", true), chromedp.Flag("disable-dev-shm-usage", true))...)
	defer cancelAlloc()
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(browserCtx, time.Minute)
	defer cancel()
	var shot []byte
	var share string
	canary := `tr[data-lane="canary"][data-share="25"]`
	if err := chromedp.Run(ctx,
		chromedp.Navigate(s.Portal+"/s/bservice"),
		chromedp.WaitVisible(`form.login`, chromedp.ByQuery),
		chromedp.SendKeys(`input[name=name]`, s.Operator, chromedp.ByQuery),
		chromedp.SendKeys(`input[name=password]`, s.Password, chromedp.ByQuery),
		chromedp.Click(`form.login button`, chromedp.ByQuery),
		chromedp.WaitVisible(canary, chromedp.ByQuery),
		chromedp.WaitVisible(`.trafficbar .seg[data-lane="canary"]`, chromedp.ByQuery),
		chromedp.AttributeValue(canary, "data-share", &share, nil, chromedp.ByQuery),
		chromedp.EmulateViewport(1440, 900),
		chromedp.Evaluate(`window.scrollTo(0, 0)`, nil),
		chromedp.CaptureScreenshot(&shot),
	); err != nil {
		t.Fatalf("the portal of make try in a browser: %v", err)
	}
	path := filepath.Join(t.TempDir(), "portal.png")
	if os.Getenv("GRAYLANE_UPDATE_SCREENSHOT") != "" {
		path = "../../docs/portal.png"
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
}

// TestTry runs `make try` as a user would explore it: the printed entry sends a tester to the canary
// through the gateway path and a user through a Kratos client, the printed graylane command shows
// the canary at 5 %, the portal asks for sign-in, and Ctrl-C (the context's end) stops everything.
func TestTry(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan *tryStack, 1)
	done := make(chan error, 1)
	var out strings.Builder
	lw := &lockedWriter{w: &out}
	go func() { done <- tryMain(ctx, lw, t.TempDir(), func(s *tryStack) { started <- s }) }()
	var s *tryStack
	select {
	case s = <-started:
	case err := <-done:
		t.Fatalf("make try ended before it was ready: %v", err)
	case <-time.After(4 * time.Minute):
		t.Fatal("make try was not ready in 4 minutes")
	}

	get := func(url string, header ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	served := func(via, who string, header ...string) reply {
		t.Helper()
		code, body := get(s.Entry+"/bservice"+via, header...)
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", who, code, body)
		}
		var r reply
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("%s: %v: %s", who, err, body)
		}
		return r
	}
	for _, via := range []string{"", "?via=mesh"} {
		if r := served(via, "tester"+via, "userid", "123"); r.Serves != "canary" || r.Next == nil {
			t.Errorf("tester%s served by %s (%s), next %v; want the canary, calling cservice", via, r.Instance, r.Serves, r.Next)
		}
		// Users outside the 5 % stay on stable, in both planes.
		stable := 0
		for _, u := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"} {
			if served(via, u+via, "x-user-id", u).Serves == "stable" {
				stable++
			}
		}
		if stable < 5 {
			t.Errorf("via %q: %d of 8 users on stable at 5 %%", via, stable)
		}
	}
	// A lane header from outside does not pick a lane at the gateway.
	if r := served("", "spoofer", gray.DefaultTagKey, "canary", "x-user-id", "alice"); r.Serves != served("", "alice", "x-user-id", "alice").Serves {
		t.Errorf("a spoofed lane header moved alice to %s", r.Serves)
	}

	cmd := exec.Command(filepath.Join(s.Dir, "graylane"), "status", "bservice")
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+s.Consul)
	status, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(status), "canary") || !strings.Contains(string(status), "5") {
		t.Errorf("graylane status bservice: %v\n%s", err, status)
	}
	if code, body := get(s.Portal + "/"); code != http.StatusOK || !strings.Contains(body, "sign in") && !strings.Contains(body, "Sign in") {
		t.Errorf("portal: %d, want its sign-in page: %.300s", code, body)
	}
	// The printed command changes the release, and the portal shows it: the README's picture.
	cmd = exec.Command(filepath.Join(s.Dir, "graylane"), "weight", "bservice", "canary", "25", "--who", "alice")
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+s.Consul)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("graylane weight bservice canary 25: %v\n%s", err, b)
	}
	screenshotPortal(t, s)

	lw.mu.Lock()
	printed := out.String()
	lw.mu.Unlock()
	for _, want := range []string{s.Portal, s.Password, s.Entry, "graylane weight bservice canary 25"} {
		if !strings.Contains(printed, want) {
			t.Errorf("make try did not print %q:\n%s", want, printed)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("make try stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("make try did not stop in 30 s")
	}
	for _, u := range []string{s.Consul + "/v1/status/leader", s.Portal + "/", s.Entry + "/bservice"} {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			t.Errorf("%s still answers after the stop", u)
		}
	}
}
