package consulclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// AnswerTimeout bounds how long a request to Consul that is not a blocking query may wait for the
// first byte of its answer. A Consul address that accepts connections and never answers (a
// stopped process, a wrong port held by something else) would otherwise hang every command.
// Blocking queries wait as long as they asked to.
const AnswerTimeout = 10 * time.Second

// NoAnswerError is returned when Consul at Address accepted a request and did not answer it within
// After.
type NoAnswerError struct {
	Address string
	After   time.Duration
}

func (e *NoAnswerError) Error() string {
	return fmt.Sprintf("registrar: Consul at %s accepted the connection but did not answer within %v "+
		"(is CONSUL_HTTP_ADDR the agent's HTTP API, and is the agent running?)", e.Address, e.After)
}

// answerTimeout is the RoundTripper of graylane's Consul clients: it cancels a request that is not
// a blocking query when its answer has not begun within after.
type answerTimeout struct {
	base    http.RoundTripper
	address string
	after   time.Duration
}

// withAnswerTimeout returns cfg with the defaults api.NewClient would give a bare api.Config (a
// transport, an address), and a copy of that whose HTTP client cancels non-blocking requests that
// get no answer within after. A configuration that brings its own HTTP client keeps it. When pooled
// and the agent is reached over HTTPS, the HTTP client's requests share the connections of an
// h2Pool, returned to be closed; otherwise pool is nil.
func withAnswerTimeout(cfg *api.Config, after time.Duration, pooled bool) (filled, timed *api.Config, pool *h2Pool, err error) {
	c := *cfg
	def := api.DefaultConfig()
	if c.Transport == nil {
		c.Transport = def.Transport
	}
	if c.Address == "" {
		c.Address = def.Address
	}
	t := c
	if t.HttpClient == nil {
		hc, err := api.NewHttpClient(t.Transport, t.TLSConfig)
		if err != nil {
			return nil, nil, nil, err
		}
		if addr, ok := httpsAddress(&t); ok && pooled {
			pool = newH2Pool(addr, t.Transport)
			hc.Transport = pool
		}
		hc.Transport = &answerTimeout{base: hc.Transport, address: t.Address, after: after}
		t.HttpClient = hc
	}
	return &c, &t, pool, nil
}

// httpsAddress returns the agent's host:port when cfg reaches it over HTTPS, as api.NewClient reads
// the address and the scheme.
func httpsAddress(cfg *api.Config) (string, bool) {
	addr, scheme := cfg.Address, cfg.Scheme
	if s, rest, ok := strings.Cut(addr, "://"); ok {
		addr = rest
		if s == "https" {
			scheme = s
		} else if s != "http" {
			return "", false // unix sockets
		}
	}
	if scheme == "" {
		scheme = api.DefaultConfig().Scheme
	}
	addr, _, _ = strings.Cut(addr, "/") // a reverse proxy's path prefix
	return addr, scheme == "https"
}

func (t *answerTimeout) RoundTrip(req *http.Request) (*http.Response, error) {
	if q := req.URL.Query(); q.Has("index") || q.Has("hash") { // a blocking query
		return t.base.RoundTrip(req)
	}
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(t.after, cancel)
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	fired := !timer.Stop()
	if err != nil {
		cancel()
		if fired && req.Context().Err() == nil && errors.Is(err, context.Canceled) {
			return nil, &NoAnswerError{Address: t.address, After: t.after}
		}
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose releases a request's context when its answer's body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
