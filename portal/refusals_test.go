package portal

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// TestConnLimitRefusalsAreShown: a portal that follows more services than its agent's
// limits.http_max_conns_per_client lets it hold connections for is refused with 429 for some of its
// watches. Every page says so in a banner that names the agent, the count, the last refusal and the
// setting to raise, and the event stream carries the banner to open pages.
func TestConnLimitRefusalsAreShown(t *testing.T) {
	a := consultest.StartWith(t, "-hcl", "limits { http_max_conns_per_client = 10 }")
	// 12 services: one blocking query each over plain HTTP, with the options', the catalog's, the
	// records' and the segments' queries 16 connections held, against 10 allowed. They are
	// registered before the portal starts, by a client that gives its connections back.
	const services = 12
	var spec strings.Builder
	for i := range services {
		fmt.Fprintf(&spec, "- {name: lim-%d, id: lim-%d-1, port: %d}\n", i, i, 9000+i)
	}
	specs, err := registrar.ParseSpecs("lim.yaml", []byte(spec.String()))
	if err != nil {
		t.Fatal(err)
	}
	cfg := registrar.NewConfig(a.HTTPAddr)
	r, err := registrar.New(cfg, registrar.WithOperator("setup"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg.Transport.CloseIdleConnections()

	started := time.Now()
	_, ts := startPortal(t, a, Config{ReadOnly: true, Open: true, Logf: t.Logf})
	b := newBrowser(t, ts)
	var body string
	// Generous: the first refusal comes as soon as the watches start; the banner at the next poll.
	waitFor(t, 60*time.Second, "the banner of a refused portal on a service's page", func() bool {
		body = b.get("/s/lim-0").body
		return strings.Contains(body, `id="consul-refused"`)
	})
	mustContain(t, body, "The Consul agent at http://"+a.HTTPAddr+" refused",
		"429 Too Many Requests", "<code>limits.http_max_conns_per_client</code>", "serve the agent over HTTPS")
	if n := bannerNumber(t, body, "data-count"); n < 1 {
		t.Fatalf("the banner counts %d refusals:\n%s", n, body)
	}
	last := regexp.MustCompile(`title="([^"]+)">[^<]+ UTC</span>`).FindStringSubmatch(banner(body))
	if last == nil {
		t.Fatalf("the banner does not say when the last refusal came:\n%s", body)
	}
	if at, err := time.Parse(time.RFC3339, last[1]); err != nil || at.Before(started.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Fatalf("the last refusal at %q (%v), not between the portal's start %v and now", last[1], err, started)
	}
	// A watch refused now is a service whose page misses changes: the banner says how many.
	waitFor(t, 60*time.Second, "the banner to count the services not followed", func() bool {
		body = b.get("/segments").body
		return bannerNumber(t, body, "data-unfollowed") > 0
	})
	mustContain(t, body, "not followed now", `class="refused refused-now"`)

	// An open page learns of it through its event stream: the region "refused" carries the banner.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/events?service=lim-0&since=0", nil)
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := readEvents(t, resp)
	timeout := time.After(60 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the event stream ended before it carried the banner")
			}
			if region, _ := ev["refused"].(string); strings.Contains(region, `id="consul-refused"`) {
				return
			}
		case <-timeout:
			t.Fatal("no event carried the banner in 60 s")
		}
	}
}

// TestNoBannerWithoutRefusals: a portal whose agent refused nothing shows no banner.
func TestNoBannerWithoutRefusals(t *testing.T) {
	svc := registerRelease(t, agent, "")
	p, ts := startPortal(t, nil, Config{ReadOnly: true, Open: true})
	b := newBrowser(t, ts)
	mustContain(t, b.get("/s/"+svc).body, `<div id="region-refused"></div>`, `<span class="conn-text">live</span>`)
	p.checkRefusals(time.Now())
	mustNotContain(t, b.get("/s/"+svc).body, "consul-refused", "http_max_conns_per_client")
}

// TestRefusalBannerWords: what the banner says while refusals go on, once they stopped, and to a
// portal that reaches its agent over HTTPS already (raising the limit is the only way then).
func TestRefusalBannerWords(t *testing.T) {
	tmpl, err := template.New("").Funcs(funcs).ParseFS(templateFS, "web/templates/*.html")
	if err != nil {
		t.Fatal(err)
	}
	last := time.Date(2025, 6, 1, 10, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		state  refusalState
		want   []string
		unwant []string
	}{
		{"going on", refusalState{Agent: "http://10.0.0.5:8500", Count: 247, Last: last, Unfollowed: 3, Active: true},
			[]string{`class="refused refused-now"`, "The Consul agent at http://10.0.0.5:8500 refused 247 of this portal's requests with 429 Too Many Requests",
				"the last at <span title=\"2025-06-01T10:04:05Z\">2025-06-01 10:04:05 UTC</span>; 3 services are not followed now, and their pages miss changes.",
				"raise <code>limits.http_max_conns_per_client</code> in the agent's configuration (default 200), or serve the agent over HTTPS"},
			[]string{"none since"}},
		{"one service", refusalState{Agent: "http://10.0.0.5:8500", Count: 1, Last: last, Unfollowed: 1, Active: true},
			[]string{"1 service is not followed now, and its page misses changes."}, nil},
		{"stopped", refusalState{Agent: "http://10.0.0.5:8500", Count: 247, Last: last},
			[]string{`class="refused refused-past"`, "2025-06-01 10:04:05 UTC</span>; none since."}, []string{"not followed now"}},
		{"over HTTPS", refusalState{Agent: "https://10.0.0.5:8501", HTTPS: true, Count: 9, Last: last, Active: true},
			[]string{"The Consul agent at https://10.0.0.5:8501 refused 9", "(default 200)."}, []string{"serve the agent over HTTPS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tmpl.ExecuteTemplate(&buf, "refused", pageData{Refused: &tc.state}); err != nil {
				t.Fatal(err)
			}
			html := strings.Join(strings.Fields(buf.String()), " ")
			mustContain(t, html, tc.want...)
			mustNotContain(t, html, tc.unwant...)
		})
	}
}

// banner returns the refusal banner of a page, or "".
func banner(body string) string {
	_, after, ok := strings.Cut(body, `id="consul-refused"`)
	if !ok {
		return ""
	}
	b, _, _ := strings.Cut(after, "</div>")
	return b
}

// bannerNumber reads a numeric attribute of the banner; -1 when the page has no banner.
func bannerNumber(t *testing.T, body, attr string) int {
	t.Helper()
	m := regexp.MustCompile(`^[^>]*` + attr + `="(\d+)"`).FindStringSubmatch(banner(body))
	if m == nil {
		return -1
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
