package rollout_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/rollout"
)

// TestDefaultQueriesCountTheFirstErrors: a lane that has served only successes starts failing. Read
// at the instant of the first scrape that sees the failures, the default error query counts them.
// A query over the per-code request counter reads nothing there: the failures' code="500" series is
// born by the first failure, and increase() needs two samples of a series. That read is the one that
// once let a failing canary pass a gate; the form given for per-code gateway metrics counts them.
func TestDefaultQueriesCountTheFirstErrors(t *testing.T) {
	a := startApp(t, "shop", "canary")
	prom := promtest.Start(t, a.addr)
	prom.WaitScraped(t, 1)
	pq := &rollout.Prometheus{URL: prom.URL}
	ctx := context.Background()
	send := func(n int) {
		for range n {
			resp, err := http.Get("http://" + a.addr + "/hello")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
	const window = "30s"
	expand := func(tmpl string) string {
		return strings.NewReplacer("{{.Service}}", "shop", "{{.Lane}}", "canary", "{{.Window}}", window).Replace(tmpl)
	}
	count := `graylane_server_request_duration_seconds_count{service="shop",lane="canary"}`

	const ok200, failed = 20, 25
	send(ok200)
	waitFor(t, 20*time.Second, "two scrapes of the successes", func() bool {
		n, ok, _ := pq.Query(ctx, "count_over_time("+count+"["+window+"])")
		v, _, _ := pq.Query(ctx, count)
		return ok && n >= 2 && v == ok200
	})
	a.failRate.Store(1000)
	send(failed)
	var at time.Time
	var seen float64 // the failures that scrape saw: all of them, unless it came while they were sent
	waitFor(t, 20*time.Second, "the first scrape of the failures", func() bool {
		v, ok, _ := pq.Query(ctx, count)
		if !ok || v == ok200 {
			return false
		}
		ts, _, _ := pq.Query(ctx, "timestamp("+count+")")
		at, seen = time.UnixMilli(int64(math.Round(ts*1000))), v-ok200
		return true
	})
	// Everything below is evaluated at that scrape's instant: the same answer however late it runs.
	read := func(name, promql string) (float64, bool) {
		t.Helper()
		v, ok, err := pq.QueryAt(ctx, promql, at)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s = %.1f (%v): %s", name, v, ok, promql)
		return v, ok
	}
	near := func(v, want float64) bool { return v >= want && v <= want*1.5 } // increase() extrapolates up

	errs, ok := read("errors", expand(rollout.DefaultErrorsQuery))
	if !ok || !near(errs, seen) {
		t.Errorf("the default error query reads %.1f (%v) at the first scrape of %.0f failures", errs, ok, seen)
	}
	reqs, ok := read("requests", expand(rollout.DefaultRequestsQuery))
	if !ok || !near(reqs, seen) {
		t.Errorf("the default request query reads %.1f (%v), want about the %.0f requests since the scrape before", reqs, ok, seen)
	}

	perCode := `graylane_server_requests_total{service="shop",lane="canary",code=~"5.."}`
	if v, ok := read("per-code errors", fmt.Sprintf("sum(increase(%s[%s]))", perCode, window)); ok {
		t.Errorf("increase() over the code=\"500\" series read %.1f at its first sample; the trap this test guards against is gone, and so is its proof", v)
	}
	v, ok := read("per-code errors, series born in the window counted", perCodeErrors(perCode, window))
	if !ok || v != seen {
		t.Errorf("the per-code form reads %.1f (%v), want %.0f", v, ok, seen)
	}
}

// perCodeErrors is the README's error count for metrics with one series per status code, such as
// APISIX's apisix_http_status: the increase of the series that existed before the window, plus the
// whole value of the series born in it.
func perCodeErrors(series, window string) string {
	return fmt.Sprintf("(sum(increase(%[1]s[%[2]s]) and %[1]s offset %[2]s) or vector(0)) + (sum(%[1]s unless %[1]s offset %[2]s) or vector(0))", series, window)
}
