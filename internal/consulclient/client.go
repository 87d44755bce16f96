package consulclient

import (
	"net"
	"time"

	"github.com/hashicorp/consul/api"
)

// Config returns the Consul client configuration from the standard environment
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), with addr overriding the address when
// set, and a transport that keeps enough idle connections for many concurrent blocking queries over
// plain HTTP (a watcher holds one per service there, and one for every service's options).
func Config(addr string) *api.Config {
	cfg := api.DefaultConfig()
	if addr != "" {
		cfg.Address = addr
	}
	cfg.Transport.MaxIdleConnsPerHost = 512
	cfg.Transport.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return cfg
}

// New returns a Consul client for cfg (nil: Config("")) whose requests that are not blocking
// queries give up after AnswerTimeout, and the configuration it used, filled with the defaults
// api.NewClient would give it. An error never shows cfg's token.
func New(cfg *api.Config) (*api.Client, *api.Config, error) {
	if cfg == nil {
		cfg = Config("")
	}
	filled, timed, _, err := withAnswerTimeout(cfg, answerTimeoutFor, false)
	if err != nil {
		return nil, cfg, Redact(err, cfg.Token)
	}
	client, err := api.NewClient(timed)
	return client, filled, Redact(err, cfg.Token)
}

// Pooled is a Consul client for a process that holds many blocking queries at once, such as a
// watcher with one per service. Over HTTPS its requests share a few HTTP/2 connections, each
// carrying up to the agent's 250 concurrent streams, opened one at a time as they fill (so that
// 2,000 queries started together hold 8 connections, far below the agent's
// limits.http_max_conns_per_client). Over plain HTTP (Consul has no unencrypted HTTP/2) each request
// in flight holds a connection of the configuration's transport, as with New. Requests that are not
// blocking queries give up after AnswerTimeout, as with New. Close closes its connections. It is
// safe for concurrent use.
type Pooled struct {
	// Client is the Consul client.
	Client *api.Client
	// Config is the configuration it used, filled with the defaults api.NewClient would give it.
	Config *api.Config

	pool *h2Pool // nil over plain HTTP
}

// NewPooled returns a Pooled client for cfg (nil: Config("")). An error never shows cfg's token.
func NewPooled(cfg *api.Config) (*Pooled, error) {
	if cfg == nil {
		cfg = Config("")
	}
	filled, timed, pool, err := withAnswerTimeout(cfg, answerTimeoutFor, true)
	if err != nil {
		return nil, Redact(err, cfg.Token)
	}
	client, err := api.NewClient(timed)
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, Redact(err, cfg.Token)
	}
	return &Pooled{Client: client, Config: filled, pool: pool}, nil
}

// Multiplexed reports whether the client's requests share HTTP/2 connections (the agent is reached
// over HTTPS and negotiated HTTP/2, or has not been reached yet).
func (p *Pooled) Multiplexed() bool { return p.pool != nil && !p.pool.h1.Load() }

// Conns returns how many HTTP/2 connections the client holds open to the agent; 0 over plain HTTP.
func (p *Pooled) Conns() int {
	if p.pool == nil {
		return 0
	}
	return p.pool.open()
}

// Close closes the client's HTTP/2 connections, or the idle connections of its transport over plain
// HTTP. Requests in flight fail; it is for when the last request has ended.
func (p *Pooled) Close() error {
	if p.pool != nil {
		return p.pool.Close()
	}
	p.Config.Transport.CloseIdleConnections()
	return nil
}

// answerTimeoutFor is AnswerTimeout; the tests shorten it with SetAnswerTimeout.
var answerTimeoutFor = AnswerTimeout

// SetAnswerTimeout shortens AnswerTimeout, for the clients New returns from now on, and returns the
// function that restores it. It is for tests only, and not safe to call while clients are made.
func SetAnswerTimeout(d time.Duration) (restore func()) {
	old := answerTimeoutFor
	answerTimeoutFor = d
	return func() { answerTimeoutFor = old }
}
