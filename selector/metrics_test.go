package selector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/selector"
)

// TestMetricsCarryTheLanes: after calls through a real client, the decision counter and the client
// request metrics hold exactly the calls of each lane, with the reason of each decision.
func TestMetricsCarryTheLanes(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Match: matchUser123}, nil)
	reg := prometheus.NewRegistry()
	m, err := selector.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kgrpc.DialInsecure(context.Background(),
		kgrpc.WithEndpoint("discovery:///bservice"),
		kgrpc.WithDiscovery(e.discovery()),
		kgrpc.WithMiddleware(m.Middleware(), mmd.Client()),
		kgrpc.WithPrintDiscoveryDebugLog(false),
		selector.GRPC(selector.WithMetrics(m)),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	waitFor(t, 10*time.Second, "both instances", func() bool {
		got := count(t, 20, func(i int) (string, error) {
			if i%2 == 0 {
				return who(ctx, conn, "userid", "123")
			}
			return who(ctx, conn)
		})
		return got["s1"] > 0 && got["c1"] > 0
	})
	before := gather(t, reg)
	count(t, 30, func(int) (string, error) { return who(ctx, conn, "userid", "123") })
	count(t, 70, func(int) (string, error) { return who(ctx, conn, "userid", "9") })
	after := gather(t, reg)
	for series, want := range map[string]float64{
		`graylane_decisions_total{lane="canary",reason="match",service="bservice"}`:                                            30,
		`graylane_decisions_total{lane="stable",reason="base",service="bservice"}`:                                             70,
		`graylane_client_requests_total{code="200",lane="canary",operation="/graylane.test.Echo/Who",service="bservice"}`:      30,
		`graylane_client_requests_total{code="200",lane="stable",operation="/graylane.test.Echo/Who",service="bservice"}`:      70,
		`graylane_client_request_duration_seconds_count{lane="canary",operation="/graylane.test.Echo/Who",service="bservice"}`: 30,
	} {
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s grew by %v, want %v", series, got, want)
		}
	}
}

// gather returns every counter and histogram count of reg by its series name.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.Metric {
			name, labels := f.GetName(), labelString(m.Label)
			switch {
			case m.Counter != nil:
				out[name+labels] = m.Counter.GetValue()
			case m.Histogram != nil:
				out[name+"_count"+labels] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func labelString(labels []*dto.LabelPair) string {
	s := "{"
	for i, l := range labels {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
	}
	return s + "}"
}
