package main

// The load generator: a closed loop, as wrk runs one. Each of N keep-alive HTTP/1.1 connections
// sends a request, reads the whole answer, and sends the next, until the run's time is up. The
// requests are prepared bytes written straight to the connection and the answers are read with
// net/http's parser, without http.Client's per-connection goroutines: on a small machine the
// generator shares the cores with the gateway, so it should take as little of them as it can.
//
// A connection that breaks (or that the gateway asks to close) is dialled again; a failed dial, a
// broken connection and an answer other than 2xx each count as one error. Latency is recorded for
// the 2xx answers only, from the write of the request to the last byte of the answer.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// load sends requests to one address over a number of connections.
type load struct {
	addr  string   // host:port of the gateway
	reqs  [][]byte // requests, sent in turn by every connection (each starting at its own offset)
	conns int
}

// loadResult is what one run of a load measured.
type loadResult struct {
	OK       int             // 2xx answers
	Errors   int             // other answers, failed dials, broken connections
	FirstErr string          // the first error, to say what went wrong
	Elapsed  time.Duration   // from the start to the last answer
	Latency  []time.Duration // of the 2xx answers, sorted
}

// Rate returns the 2xx answers per second.
func (r *loadResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// Percentile returns the latency at p (0 < p < 1), or 0 without answers.
func (r *loadResult) Percentile(p float64) time.Duration {
	if len(r.Latency) == 0 {
		return 0
	}
	i := int(p * float64(len(r.Latency)))
	return r.Latency[min(i, len(r.Latency)-1)]
}

// run opens the connections, calls atStart once they are all open (the CPU counters are read
// there), then sends requests for d or until ctx ends. It returns once every connection has had its
// last answer; run is not safe for concurrent use with itself (one load at a time on the gateway).
func (l *load) run(ctx context.Context, d time.Duration, atStart func()) loadResult {
	ws := make([]*worker, l.conns)
	for i := range ws {
		ws[i] = &worker{addr: l.addr, reqs: l.reqs, next: i * len(l.reqs) / l.conns, lat: make([]time.Duration, 0, 1<<14)}
		if err := ws[i].dial(time.Now().Add(d + time.Minute)); err != nil {
			ws[i].fail(err)
		}
	}
	atStart()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop(ctx, deadline)
		}()
	}
	wg.Wait()
	res := loadResult{Elapsed: time.Since(start)}
	for _, w := range ws {
		w.close()
		res.OK += len(w.lat)
		res.Errors += w.errs
		if res.FirstErr == "" && w.firstErr != nil {
			res.FirstErr = w.firstErr.Error()
		}
		res.Latency = append(res.Latency, w.lat...)
	}
	slices.Sort(res.Latency)
	return res
}

// worker is one connection's loop; only its own goroutine touches it while the load runs.
type worker struct {
	addr     string
	reqs     [][]byte
	next     int
	conn     net.Conn
	br       *bufio.Reader
	lat      []time.Duration
	errs     int
	firstErr error
}

func (w *worker) dial(deadline time.Time) error {
	c, err := net.DialTimeout("tcp", w.addr, 5*time.Second)
	if err != nil {
		return err
	}
	c.SetDeadline(deadline) // a gateway that stops answering ends the run instead of hanging it
	w.conn = c
	if w.br == nil {
		w.br = bufio.NewReaderSize(c, 32<<10)
	} else {
		w.br.Reset(c)
	}
	return nil
}

func (w *worker) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

func (w *worker) fail(err error) {
	w.errs++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

func (w *worker) loop(ctx context.Context, deadline time.Time) {
	connDeadline := deadline.Add(30 * time.Second)
	if w.conn != nil {
		w.conn.SetDeadline(connDeadline)
	}
	for now := time.Now(); now.Before(deadline) && ctx.Err() == nil; {
		if w.conn == nil {
			if err := w.dial(connDeadline); err != nil {
				w.fail(err)
				time.Sleep(50 * time.Millisecond)
				now = time.Now()
				continue
			}
		}
		req := w.reqs[w.next%len(w.reqs)]
		w.next++
		status, err := w.roundTrip(req)
		end := time.Now()
		switch {
		case err != nil:
			w.fail(err)
			w.close()
		case status < 200 || status > 299:
			w.fail(fmt.Errorf("answer %d", status))
		default:
			w.lat = append(w.lat, end.Sub(now))
		}
		now = end
	}
}

// roundTrip writes one request and reads its whole answer, keeping the connection for the next
// unless the gateway closes it.
func (w *worker) roundTrip(req []byte) (int, error) {
	if _, err := w.conn.Write(req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.Close {
		w.close()
	}
	return resp.StatusCode, nil
}

// requests returns n GET requests for path on host, with the headers a browser-like client sends
// and one of n users in the sticky header, so that the runner hashes a different key from request
// to request.
func requests(host, path, stickyHeader string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "GET %s HTTP/1.1\r\n"+
			"Host: %s\r\n"+
			"User-Agent: graylane-gatewaybench/1.0\r\n"+
			"Accept: application/json, text/plain, */*\r\n"+
			"Accept-Language: en-US,en;q=0.9\r\n"+
			"Accept-Encoding: identity\r\n"+
			"Referer: http://%s/app/orders\r\n"+
			"%s: bench-user-%d\r\n"+
			"\r\n", path, host, host, stickyHeader, i)
	}
	return out
}
