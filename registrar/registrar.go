package registrar

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/user"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/watch"
)

// DefaultKVPrefix is the Consul KV folder where graylane keeps the desired gray state of each service
// and its change history.
const DefaultKVPrefix = watch.DefaultKVPrefix

// NodeMetaHTTPAddr is the node meta key an agent may set to tell graylane where its HTTP API is
// (host:port), when that is not the node address on the port graylane was given.
const NodeMetaHTTPAddr = "graylane-http-addr"

// Sentinel errors, for errors.Is.
var (
	// ErrConflict: the service's gray state changed between planning and committing a change.
	ErrConflict = errors.New("registrar: the service changed since the change was planned")
	// ErrNotFound: no such service, lane or instance.
	ErrNotFound = errors.New("registrar: not found")
	// ErrPermission: the token may not make the change; a retry with the same token will not help.
	// It is watch.ErrPermission, which a watcher's HiddenInstancesError matches too.
	ErrPermission = watch.ErrPermission
	// ErrUnchanged: the change asks for what the recorded state already holds; nothing was recorded.
	ErrUnchanged = errors.New("nothing to change: the service is in that state already")
	// ErrPrecondition: a key the plan requires (Plan.RequireAndWrite) changed since it was read; nothing
	// was recorded.
	ErrPrecondition = errors.New("registrar: a required key changed; nothing was recorded")
)

// Registrar registers instances with gray meta and changes that meta in place. Every change is
// recorded in Consul KV (the desired state of each changed instance, and a history entry) with
// check-and-set, then applied by re-registering each instance through the agent that owns it, which
// keeps the instance's checks and their status. A Registrar is safe for concurrent use.
type Registrar struct {
	cfg        api.Config
	client     *api.Client
	httpClient *http.Client // for the ACL authorize endpoint, which the API client does not cover
	prefix     string
	operator   string
	agentAddrs func(node *api.Node) string
	now        func() time.Time

	mu     sync.Mutex
	agents map[string]*api.Client // by HTTP address
	self   string                 // the local agent's node name
}

// Option configures a Registrar.
type Option func(*Registrar)

// WithKVPrefix sets the KV folder for desired state and history. Default: DefaultKVPrefix.
func WithKVPrefix(prefix string) Option {
	return func(r *Registrar) { r.prefix = strings.Trim(prefix, "/") }
}

// WithOperator names who makes changes, for the history. Default: $GRAYLANE_OPERATOR, else
// user@host.
func WithOperator(who string) Option { return func(r *Registrar) { r.operator = who } }

// WithAgentAddress tells how to reach the agent of a node (host:port). Default: the node meta key
// graylane-http-addr, else the node's address on the port of the configured agent.
func WithAgentAddress(f func(node *api.Node) string) Option {
	return func(r *Registrar) { r.agentAddrs = f }
}

// NewConfig returns the Consul client configuration from the standard environment
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...), with addr overriding the address when
// set, and a transport that keeps enough idle connections for many concurrent blocking queries (a
// watcher holds one per service over plain HTTP). It is watch.NewConfig.
func NewConfig(addr string) *api.Config { return watch.NewConfig(addr) }

// AnswerTimeout bounds how long a request to Consul that is not a blocking query may wait for the
// first byte of its answer. A Consul address that accepts connections and never answers (a
// stopped process, a wrong port held by something else) would otherwise hang every command.
// Blocking queries wait as long as they asked to.
const AnswerTimeout = consulclient.AnswerTimeout

// NoAnswerError is returned when Consul at Address accepted a request and did not answer it within
// After (AnswerTimeout). It is watch.NoAnswerError.
type NoAnswerError = watch.NoAnswerError

// New returns a Registrar for the Consul agent in cfg (nil: NewConfig("")).
func New(cfg *api.Config, opts ...Option) (*Registrar, error) {
	client, cfg, err := consulclient.New(cfg)
	if err != nil {
		return nil, err
	}
	httpClient, err := api.NewHttpClient(cfg.Transport, cfg.TLSConfig)
	if err != nil {
		return nil, consulclient.Redact(err, cfg.Token)
	}
	httpClient.Timeout = 10 * time.Second
	r := &Registrar{cfg: *cfg, client: client, httpClient: httpClient, prefix: DefaultKVPrefix, now: time.Now, agents: map[string]*api.Client{}}
	for _, o := range opts {
		o(r)
	}
	if r.operator == "" {
		r.operator = defaultOperator()
	}
	return r, nil
}

func defaultOperator() string {
	if who := os.Getenv("GRAYLANE_OPERATOR"); who != "" {
		return who
	}
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// KVPrefix returns the KV folder where graylane keeps its state ("graylane" by default).
func (r *Registrar) KVPrefix() string { return r.prefix }

// Operator returns who the history names for this Registrar's changes.
func (r *Registrar) Operator() string { return r.operator }

// Client returns the Consul client of the configured agent.
func (r *Registrar) Client() *api.Client { return r.client }

func (r *Registrar) wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return consulclient.Redact(fmt.Errorf(format+": %w", append(args, err)...), r.cfg.Token)
}

// Instance is one registered instance as the catalog and its checks show it.
type Instance struct {
	ID          string
	Service     string
	Node        string
	NodeAddress string
	Address     string
	Port        int
	Tags        []string
	// Meta is the whole service meta.
	Meta map[string]string
	// Gray is the decoded gray meta; GrayErr is set when the meta does not decode.
	Gray    gray.Meta
	GrayErr error
	// Health is the worst status of the instance's checks: passing, warning or critical.
	Health string

	nodeMeta map[string]string
}

// Lane returns the instance's lane, or "" when its meta does not decode.
func (i *Instance) Lane() string {
	if i.GrayErr != nil {
		return ""
	}
	return i.Gray.LaneName()
}

// Instances lists a service's instances, healthy or not.
func (r *Registrar) Instances(ctx context.Context, service string) ([]Instance, uint64, error) {
	entries, meta, err := r.client.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, 0, r.wrap(err, "listing instances of %s", service)
	}
	if meta.ResultsFilteredByACLs {
		return nil, 0, &watch.HiddenInstancesError{Service: service}
	}
	out := make([]Instance, 0, len(entries))
	for _, e := range entries {
		out = append(out, instanceOf(e))
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out, meta.LastIndex, nil
}

func instanceOf(e *api.ServiceEntry) Instance {
	inst := Instance{
		ID: e.Service.ID, Service: e.Service.Service, Node: e.Node.Node, NodeAddress: e.Node.Address,
		Address: e.Service.Address, Port: e.Service.Port, Tags: e.Service.Tags, Meta: e.Service.Meta,
		Health: e.Checks.AggregatedStatus(), nodeMeta: e.Node.Meta,
	}
	if inst.Address == "" {
		inst.Address = e.Node.Address
	}
	inst.Gray, inst.GrayErr = gray.ParseInstanceMeta(inst.ID, e.Service.Meta)
	return inst
}

// agentFor returns a client for the agent that owns an instance.
func (r *Registrar) agentFor(ctx context.Context, inst *Instance) (*api.Client, error) {
	addr := ""
	node := &api.Node{Node: inst.Node, Address: inst.NodeAddress, Meta: inst.nodeMeta}
	switch {
	case r.agentAddrs != nil:
		addr = r.agentAddrs(node)
	case inst.nodeMeta[NodeMetaHTTPAddr] != "":
		addr = inst.nodeMeta[NodeMetaHTTPAddr]
	default:
		self, err := r.selfNode(ctx)
		if err != nil {
			return nil, err
		}
		if self == inst.Node {
			return r.client, nil
		}
		_, port, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(r.cfg.Address, "http://"), "https://"))
		if err != nil {
			port = "8500"
		}
		addr = net.JoinHostPort(inst.NodeAddress, port)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.agents[addr]; ok {
		return c, nil
	}
	cfg := r.cfg
	cfg.Address = addr
	c, _, err := consulclient.New(&cfg)
	if err != nil {
		return nil, consulclient.Redact(err, cfg.Token)
	}
	r.agents[addr] = c
	return c, nil
}

func (r *Registrar) selfNode(ctx context.Context) (string, error) {
	r.mu.Lock()
	self := r.self
	r.mu.Unlock()
	if self != "" {
		return self, nil
	}
	name, err := r.client.Agent().NodeName()
	if err != nil {
		return "", r.wrap(err, "asking the agent its node name")
	}
	r.mu.Lock()
	r.self = name
	r.mu.Unlock()
	return name, nil
}

// reregister writes new gray meta into an instance through its agent, unless the agent holds it
// already; it reports whether it wrote. The registration carries no checks, so the agent keeps the
// instance's checks and their status (a Kratos TTL heartbeat goes on).
func (r *Registrar) reregister(ctx context.Context, inst *Instance, g gray.Meta) (bool, error) {
	agent, err := r.agentFor(ctx, inst)
	if err != nil {
		return false, err
	}
	return r.reregisterOn(ctx, agent, inst, g)
}

// reregisterOn is reregister through a known agent.
func (r *Registrar) reregisterOn(ctx context.Context, agent *api.Client, inst *Instance, g gray.Meta) (bool, error) {
	svc, _, err := agent.Agent().Service(inst.ID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, r.wrap(err, "reading %s from its agent", inst.ID)
	}
	meta, err := g.Merge(svc.Meta)
	if err != nil {
		return false, err
	}
	if maps.Equal(meta, svc.Meta) {
		return false, nil
	}
	if err := gray.CheckConsulLimits(meta); err != nil {
		return false, err
	}
	reg := &api.AgentServiceRegistration{
		Kind: svc.Kind, ID: svc.ID, Name: svc.Service, Tags: svc.Tags, Port: svc.Port, Address: svc.Address,
		TaggedAddresses: svc.TaggedAddresses, EnableTagOverride: svc.EnableTagOverride, Meta: meta,
		Weights: &svc.Weights, Proxy: svc.Proxy, Connect: svc.Connect, Namespace: svc.Namespace,
		Partition: svc.Partition, Locality: svc.Locality,
	}
	if err := agent.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return false, r.wrap(err, "re-registering %s", inst.ID)
	}
	return true, nil
}

func (r *Registrar) deregister(ctx context.Context, inst *Instance) error {
	agent, err := r.agentFor(ctx, inst)
	if err != nil {
		return err
	}
	return r.wrap(agent.Agent().ServiceDeregisterOpts(inst.ID, (&api.QueryOptions{}).WithContext(ctx)), "deregistering %s", inst.ID)
}
