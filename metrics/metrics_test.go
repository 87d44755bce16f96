package metrics_test

import (
	"context"
	"strings"
	"testing"
	"time"

	kerrors "github.com/go-kratos/kratos/v2/errors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/metrics"
)

func TestDecisionsAreCountedPerLaneAndReason(t *testing.T) {
	reg := prometheus.NewRegistry()
	d, err := metrics.NewDecisions(reg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		d.Observe("bservice", "canary", gray.ReasonMatch)
	}
	d.Observe("bservice", "stable", gray.ReasonBase)
	d.Observe("bservice", "", gray.ReasonFallback)
	want := `
# HELP graylane_decisions_total Lane decisions made by graylane's enforcers, by service, lane and reason.
# TYPE graylane_decisions_total counter
graylane_decisions_total{lane="canary",reason="match",service="bservice"} 3
graylane_decisions_total{lane="none",reason="fallback",service="bservice"} 1
graylane_decisions_total{lane="stable",reason="base",service="bservice"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "graylane_decisions_total"); err != nil {
		t.Fatal(err)
	}
	// A second enforcer on the same registry records into the same series.
	d2, err := metrics.NewDecisions(reg)
	if err != nil {
		t.Fatal(err)
	}
	d2.Observe("bservice", "canary", gray.ReasonMatch)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, "} 3", "} 4", 1)), "graylane_decisions_total"); err != nil {
		t.Fatalf("a second enforcer on the same registry: %v", err)
	}
	if allocs := testing.AllocsPerRun(1000, func() { d.Observe("bservice", "canary", gray.ReasonMatch) }); allocs != 0 {
		t.Fatalf("Observe allocates %v times per call", allocs)
	}
}

func TestServerMiddlewareRecordsTheInstancesLane(t *testing.T) {
	reg := prometheus.NewRegistry()
	req, err := metrics.NewServerRequests(reg)
	if err != nil {
		t.Fatal(err)
	}
	lane := "canary"
	h := metrics.Server(req, "bservice", func() string { return lane })(func(ctx context.Context, in any) (any, error) {
		if in == "fail" {
			return nil, kerrors.InternalServer("BOOM", "failed")
		}
		return "ok", nil
	})
	h(context.Background(), "ok")
	h(context.Background(), "fail")
	lane = "stable" // promoted
	h(context.Background(), "ok")
	want := `
# HELP graylane_server_requests_total Requests served, by the lane of the serving instance, operation and status code.
# TYPE graylane_server_requests_total counter
graylane_server_requests_total{code="200",lane="canary",operation="",service="bservice"} 1
graylane_server_requests_total{code="200",lane="stable",operation="",service="bservice"} 1
graylane_server_requests_total{code="500",lane="canary",operation="",service="bservice"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "graylane_server_requests_total"); err != nil {
		t.Fatal(err)
	}
	// Errors have a series per lane from its first request on, at zero until the first error.
	wantErrors := `
# HELP graylane_server_errors_total Requests served, by the lane of the serving instance and operation, that ended with a 5xx status code; zero from the first request on.
# TYPE graylane_server_errors_total counter
graylane_server_errors_total{lane="canary",operation="",service="bservice"} 1
graylane_server_errors_total{lane="stable",operation="",service="bservice"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantErrors), "graylane_server_errors_total"); err != nil {
		t.Fatal(err)
	}
	req.Observe("bservice", "stable", "", 404, time.Millisecond) // a client's error
	req.Observe("bservice", "stable", "", 503, time.Millisecond)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(wantErrors, "} 0", "} 1", 1)), "graylane_server_errors_total"); err != nil {
		t.Fatalf("after a 404 and a 503: %v", err)
	}
	if n := testutil.CollectAndCount(reg, "graylane_server_request_duration_seconds"); n != 2 {
		t.Fatalf("%d duration series, want one per lane", n)
	}
	if allocs := testing.AllocsPerRun(1000, func() { req.Observe("bservice", "canary", "/x", 200, time.Millisecond) }); allocs != 0 {
		t.Fatalf("Observe allocates %v times per call", allocs)
	}
}
