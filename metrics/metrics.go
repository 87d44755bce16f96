// Package metrics holds graylane's per-lane Prometheus metrics: the decisions the enforcers make, and
// the outcome and latency of requests per lane, on the client side (by the lane of the callee) and
// on the server side (by the lane of the instance that served).
//
// Names follow Prometheus conventions; no label holds a user ID or another unbounded value:
//
//	graylane_decisions_total{service, lane, reason}                      counter
//	graylane_client_requests_total{service, lane, operation, code}       counter
//	graylane_client_errors_total{service, lane, operation}               counter
//	graylane_client_request_duration_seconds{service, lane, operation}   histogram
//	graylane_server_requests_total{service, lane, operation, code}       counter
//	graylane_server_errors_total{service, lane, operation}               counter
//	graylane_server_request_duration_seconds{service, lane, operation}   histogram
//
// lane is the lane's name ("none" for a decision that found no lane); reason is the decision's
// reason (tag, match, weight, base, fallback, or unknown_state for a request the gateway answered
// before Consul's first answer on its service); code is the Kratos status code (HTTP-like: 200, 400,
// 500, 503, ...). Histograms use Prometheus' default buckets.
//
// Errors (5xx) also have a counter of their own. It is created at zero, together with the duration
// histogram, by the first request of its service, lane and operation, whatever that request's
// outcome. rate() and increase() need two samples of a series within their window and count nothing
// before its first sample: a code="500" series born at a canary's first error is left out of every
// window that holds only its first sample, and reads as no errors while the successes already count.
// errors_total and the histogram's _count are born with the lane's first request and seen by the
// same scrapes: they are the numbers to divide for an error ratio.
//
// Recording is safe for concurrent use. Once a label combination has been seen, recording it does
// not allocate: the series are kept in a copy-on-write map read without locks.
package metrics

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/graylane/graylane/gray"
)

// Namespace prefixes every metric name.
const Namespace = "graylane"

// NoLane is the lane label of a decision that found no lane (a fallback).
const NoLane = "none"

// Decisions counts the enforcers' decisions per service, lane and reason.
type Decisions struct {
	vec    *prometheus.CounterVec
	series seriesCache[prometheus.Counter]
}

// NewDecisions registers graylane_decisions_total on reg (nil: prometheus.DefaultRegisterer).
func NewDecisions(reg prometheus.Registerer) (*Decisions, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "decisions_total",
		Help: "Lane decisions made by graylane's enforcers, by service, lane and reason.",
	}, []string{"service", "lane", "reason"})
	vec, err := register(reg, vec)
	if err != nil {
		return nil, err
	}
	return &Decisions{vec: vec}, nil
}

// Observe counts one decision. It does not allocate once the combination has been seen.
func (d *Decisions) Observe(service, lane string, reason gray.Reason) {
	if lane == "" {
		lane = NoLane
	}
	key := [4]string{service, lane, reasonLabels[min(int(reason), len(reasonLabels)-1)]}
	d.series.get(key, func() prometheus.Counter { return d.vec.WithLabelValues(key[0], key[1], key[2]) }).Inc()
}

// UnknownReason is the reason label of a request that came before Consul's first answer for its
// service and was answered without a decision, after waiting for it (lane "none").
const UnknownReason = "unknown_state"

// ObserveUnknown counts one request answered without a decision because its service's state was
// not known yet.
func (d *Decisions) ObserveUnknown(service string) {
	key := [4]string{service, NoLane, UnknownReason}
	d.series.get(key, func() prometheus.Counter { return d.vec.WithLabelValues(key[0], key[1], key[2]) }).Inc()
}

var reasonLabels = func() []string {
	var out []string
	for r := gray.ReasonBase; r <= gray.ReasonFallback+1; r++ {
		out = append(out, r.String())
	}
	return out
}()

// Requests records request outcomes and latencies per service, lane and operation.
type Requests struct {
	total    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	counters seriesCache[prometheus.Counter]
	lanes    seriesCache[laneSeries]
}

// laneSeries are the series of one service, lane and operation that every request records into.
type laneSeries struct {
	errors  prometheus.Counter
	seconds prometheus.Observer
}

// NewServerRequests registers graylane_server_requests_total, graylane_server_errors_total and
// graylane_server_request_duration_seconds on reg (nil: prometheus.DefaultRegisterer).
func NewServerRequests(reg prometheus.Registerer) (*Requests, error) {
	return newRequests(reg, "server", "Requests served, by the lane of the serving instance")
}

// NewClientRequests registers graylane_client_requests_total, graylane_client_errors_total and
// graylane_client_request_duration_seconds on reg (nil: prometheus.DefaultRegisterer).
func NewClientRequests(reg prometheus.Registerer) (*Requests, error) {
	return newRequests(reg, "client", "Calls made, by the lane graylane chose for the callee")
}

func newRequests(reg prometheus.Registerer, side, help string) (*Requests, error) {
	r := &Requests{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: side, Name: "requests_total",
			Help: help + ", operation and status code.",
		}, []string{"service", "lane", "operation", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: side, Name: "errors_total",
			Help: help + " and operation, that ended with a 5xx status code; zero from the first request on.",
		}, []string{"service", "lane", "operation"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: side, Name: "request_duration_seconds",
			Help: help + " and operation: duration in seconds.", Buckets: prometheus.DefBuckets,
		}, []string{"service", "lane", "operation"}),
	}
	var err error
	if r.total, err = register(reg, r.total); err != nil {
		return nil, err
	}
	if r.errors, err = register(reg, r.errors); err != nil {
		return nil, err
	}
	if r.seconds, err = register(reg, r.seconds); err != nil {
		return nil, err
	}
	return r, nil
}

// Observe records one request. It does not allocate once the combination has been seen (the code's
// label is formatted once per code).
func (r *Requests) Observe(service, lane, operation string, code int, took time.Duration) {
	if lane == "" {
		lane = NoLane
	}
	key := [4]string{service, lane, operation}
	ls := r.lanes.get(key, func() laneSeries {
		return laneSeries{
			errors:  r.errors.WithLabelValues(key[0], key[1], key[2]),
			seconds: r.seconds.WithLabelValues(key[0], key[1], key[2]),
		}
	})
	if code >= 500 && code <= 599 {
		ls.errors.Inc()
	}
	ls.seconds.Observe(took.Seconds())
	key[3] = codeLabel(code)
	r.counters.get(key, func() prometheus.Counter { return r.total.WithLabelValues(key[0], key[1], key[2], key[3]) }).Inc()
}

// codeLabel formats common status codes without allocating.
func codeLabel(code int) string {
	if code >= 0 && code < len(codeLabels) {
		return codeLabels[code]
	}
	return strconv.Itoa(code)
}

var codeLabels = func() []string {
	out := make([]string, 600)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}()

// register registers c; when the same metric is registered already (a second client on one
// registry), it returns the registered one, so that both record into the same series.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// seriesCache maps label values to their series without locks on the read path.
type seriesCache[T any] struct {
	m  atomic.Pointer[map[[4]string]T]
	mu sync.Mutex
}

func (c *seriesCache[T]) get(key [4]string, create func() T) T {
	if m := c.m.Load(); m != nil {
		if s, ok := (*m)[key]; ok {
			return s
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if s, ok := (*old)[key]; ok {
			return s
		}
	}
	next := make(map[[4]string]T, 1)
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	s := create()
	next[key] = s
	c.m.Store(&next)
	return s
}
