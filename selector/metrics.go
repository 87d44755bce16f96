package selector

import (
	"context"
	"strings"
	"time"

	"github.com/go-kratos/kratos/v2/middleware"
	"github.com/go-kratos/kratos/v2/transport"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/metrics"
)

// Metrics records a client's decisions (graylane_decisions_total) and the outcome and latency of its
// calls by the lane chosen for the callee (graylane_client_requests_total and
// graylane_client_request_duration_seconds). Give it to the filter with WithMetrics and add its
// Middleware to the client:
//
//	m, err := selector.NewMetrics(prometheus.DefaultRegisterer)
//	conn, err := grpc.DialInsecure(ctx,
//		grpc.WithEndpoint("discovery:///bservice"),
//		grpc.WithDiscovery(r),
//		grpc.WithMiddleware(m.Middleware()),
//		selector.GRPC(selector.WithMetrics(m)),
//	)
//
// One Metrics may serve many clients; it is safe for concurrent use.
type Metrics struct {
	decisions *metrics.Decisions
	requests  *metrics.Requests
}

// NewMetrics registers the selector's metrics on reg (nil: prometheus.DefaultRegisterer). Clients
// that register on the same registry share the series.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	d, err := metrics.NewDecisions(reg)
	if err != nil {
		return nil, err
	}
	r, err := metrics.NewClientRequests(reg)
	if err != nil {
		return nil, err
	}
	return &Metrics{decisions: d, requests: r}, nil
}

// WithMetrics counts each decision in m and tells m's Middleware the lane of each call.
func WithMetrics(m *Metrics) Option { return func(c *config) { c.metrics = m } }

// laneKey finds a call's laneRecord in its context.
type laneKey struct{}

// laneRecord carries the decided lane from the filter, which runs inside the call, back out to the
// middleware that records the call.
type laneRecord struct {
	service, lane string
	decided       bool
}

// observe counts a decision and hands its lane to the call's middleware, if any. It does not
// allocate.
func (m *Metrics) observe(ctx context.Context, service string, reason gray.Reason, lane string) {
	m.decisions.Observe(service, lane, reason)
	if rec, ok := ctx.Value(laneKey{}).(*laneRecord); ok {
		rec.service, rec.lane, rec.decided = service, lane, true
	}
}

// Middleware returns a Kratos client middleware that records each call's outcome (its Kratos status
// code) and latency under the lane the filter chose for the callee. A call that failed before a
// lane was chosen (no instance at all) is recorded under lane "none". For a gRPC stream only the
// stream's opening is seen by Kratos' middleware: streams are counted by their decisions.
func (m *Metrics) Middleware() middleware.Middleware {
	return func(next middleware.Handler) middleware.Handler {
		return func(ctx context.Context, req any) (any, error) {
			rec := &laneRecord{}
			start := time.Now()
			reply, err := next(context.WithValue(ctx, laneKey{}, rec), req)
			operation, service := "", rec.service
			if tr, ok := transport.FromClientContext(ctx); ok {
				operation = tr.Operation()
				if service == "" {
					service = strings.TrimPrefix(tr.Endpoint(), "discovery:///")
				}
			}
			m.requests.Observe(service, rec.lane, operation, metrics.StatusCode(err), time.Since(start))
			return reply, err
		}
	}
}
