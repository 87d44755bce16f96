package consulclient

import (
	"net"
	"time"

	"github.com/hashicorp/consul/api"
)

// Config returns the Consul client configuration from the standard environment
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), with addr overriding the address when
// set, and a transport that keeps enough idle connections for many concurrent blocking queries (a
// watcher holds two per service).
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
	filled, timed, err := withAnswerTimeout(cfg, answerTimeoutFor)
	if err != nil {
		return nil, cfg, Redact(err, cfg.Token)
	}
	client, err := api.NewClient(timed)
	return client, filled, Redact(err, cfg.Token)
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
