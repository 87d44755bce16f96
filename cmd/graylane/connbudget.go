package main

// The agent's connection limit, before it bites. A Consul agent refuses more than
// limits.http_max_conns_per_client connections from one address (default 200) with 429. A process
// that follows services (the plugin runner, the sync, the portal) holds one blocking query per
// service and one for every service's options: over plain HTTP each query holds a connection; over
// HTTPS they share HTTP/2 connections, 250 to a connection. graylane status compares what following
// every service graylane knows would take with what the agent allows, and warns when it is more.
// The limit is read from the agent (/v1/agent/self); when it cannot be read (the token may not read
// the agent, an agent that does not report it) status says nothing of it rather than guess, and
// never says there is room.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/registrar"
)

// streamsPerConn is how many concurrent requests Consul's HTTP/2 server takes on one connection
// (not configurable).
const streamsPerConn = 250

// connBudget is what following every service graylane knows takes in connections to one agent,
// against what the agent allows one client address.
type connBudget struct {
	// Agent is the agent's address as the command reaches it; HTTPS says how.
	Agent string
	HTTPS bool
	// Services is how many services graylane knows: those whose instances carry gray meta, and
	// those with a graylane record, that are in the catalog.
	Services int
	// Limit is the agent's limits.http_max_conns_per_client; 0 means no limit.
	Limit int
}

// Needed returns about how many connections one process that follows all of b.Services holds: one
// blocking query per service and one for the options, each on a connection of its own over plain
// HTTP; over HTTPS, the services' queries 250 to a connection and the options' on one more.
func (b connBudget) Needed() int {
	if b.HTTPS {
		return (b.Services+streamsPerConn-1)/streamsPerConn + 1
	}
	return b.Services + 1
}

// Warning returns the lines that say the agent's limit is below what following every service
// needs, or "" when it is not.
func (b connBudget) Warning() string {
	if b.Limit <= 0 || b.Needed() <= b.Limit {
		return ""
	}
	over, fix := "plain HTTP", "serve the agent over HTTPS (HTTP/2 carries 250 queries a connection) or raise the limit in its configuration"
	if b.HTTPS {
		over, fix = "HTTPS", "raise the limit in the agent's configuration"
	}
	return fmt.Sprintf("graylane: warning: one process that follows all %d services with gray meta or a graylane record over %s "+
		"(one blocking query per service, one for the options) needs about %d connections to the agent at %s, which allows %d "+
		"from one address (limits.http_max_conns_per_client)\n  %s\n", b.Services, over, b.Needed(), b.Agent, b.Limit, fix)
}

// errLimitUnknown: the agent's answer to /v1/agent/self has no DebugConfig.HTTPMaxConnsPerClient.
var errLimitUnknown = errors.New("the agent does not report limits.http_max_conns_per_client")

// agentConnLimit reads the agent's limits.http_max_conns_per_client from /v1/agent/self
// (DebugConfig.HTTPMaxConnsPerClient; it needs agent read on the agent's node).
func agentConnLimit(ctx context.Context, client *api.Client) (int, error) {
	var self struct {
		DebugConfig struct {
			HTTPMaxConnsPerClient *int
		}
	}
	if _, err := client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return 0, err
	}
	if self.DebugConfig.HTTPMaxConnsPerClient == nil {
		return 0, errLimitUnknown
	}
	return *self.DebugConfig.HTTPMaxConnsPerClient, nil
}

// grayMetaFilter selects the catalog's service instances that carry a gray meta key (a long match
// value's chunks come with the match key).
var grayMetaFilter = func() string {
	var terms []string
	for _, k := range []string{gray.KeyCanary, gray.KeyBlueGreen, gray.KeyWeight, gray.KeyMatch, gray.KeyLane, gray.KeyDrain, gray.KeyExcludeSegment} {
		terms = append(terms, fmt.Sprintf("%q in ServiceMeta", k))
	}
	return strings.Join(terms, " or ")
}()

// knownServices counts the services graylane knows on the agent: those in the catalog whose
// instances carry gray meta or that have a record under prefix. A record of a service no longer in
// the catalog is no service a process follows.
func knownServices(ctx context.Context, client *api.Client, prefix string) (int, error) {
	q := func() *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }
	catalog, _, err := client.Catalog().Services(q())
	if err != nil {
		return 0, err
	}
	withMeta := q()
	withMeta.Filter = grayMetaFilter
	grayServices, _, err := client.Catalog().Services(withMeta)
	if err != nil {
		return 0, err
	}
	folder := record.ServicesFolder(prefix)
	records, _, err := client.KV().Keys(folder, "/", q())
	if err != nil {
		return 0, err
	}
	known := map[string]bool{}
	for name := range grayServices {
		known[name] = true
	}
	for _, key := range records {
		name := strings.TrimSuffix(strings.TrimPrefix(key, folder), "/")
		if _, ok := catalog[name]; ok {
			known[name] = true
		}
	}
	return len(known), nil
}

// warnConnBudget writes to w the warning of connBudget.Warning for the agent client reaches at addr
// as cfg says, or the connection-limit hint when the agent refuses these requests with 429 already.
// Anything else that keeps it from knowing the limit or the services (a token that may not read the
// agent) leaves it silent.
func warnConnBudget(ctx context.Context, w io.Writer, client *api.Client, cfg *api.Config, prefix string) {
	scheme := consulclient.Scheme(cfg)
	if scheme != consulclient.SchemeHTTP && scheme != consulclient.SchemeHTTPS {
		return // a unix socket: no client address for the agent to count
	}
	b := connBudget{Agent: cfg.Address, HTTPS: scheme == consulclient.SchemeHTTPS}
	var err error
	if b.Limit, err = agentConnLimit(ctx, client); err == nil && b.Limit > 0 {
		b.Services, err = knownServices(ctx, client, prefix)
	}
	if err != nil {
		if consulclient.IsConnLimit(err) {
			fmt.Fprintln(w, consulHint(err, cfg.Address))
		}
		return
	}
	fmt.Fprint(w, b.Warning())
}

// connectionWarnings writes to stderr what graylane status found about the agent's connection
// limit: the hint when the agent refused, with 429, a read that status reports as a problem (a
// segment's), else the warning when following every service graylane knows needs more connections
// than the agent allows.
func (e *env) connectionWarnings(ctx context.Context, r *registrar.Registrar, problems []error) {
	cfg := registrar.NewConfig(e.o.consul)
	for _, p := range problems {
		if consulclient.IsConnLimit(p) {
			fmt.Fprintln(e.stderr, consulHint(p, cfg.Address))
			return
		}
	}
	warnConnBudget(ctx, e.stderr, r.Client(), cfg, r.KVPrefix())
}
