package registrar

import (
	"context"
	"encoding/json"
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
)

// DefaultKVPrefix is the Consul KV folder where graylane keeps the desired gray state of each service
// and its change history.
const DefaultKVPrefix = "graylane"

// NodeMetaHTTPAddr is the node meta key an agent may set to tell graylane where its HTTP API is
// (host:port), when that is not the node address on the port graylane was given.
const NodeMetaHTTPAddr = "graylane-http-addr"

// Sentinel errors, for errors.Is.
var (
	// ErrConflict: the service's gray state changed between planning and committing a change.
	ErrConflict = errors.New("registrar: the service changed since the change was planned")
	// ErrNotFound: no such service, lane or instance.
	ErrNotFound = errors.New("registrar: not found")
)

// Registrar registers instances with gray meta and changes that meta in place. Every change is
// recorded in Consul KV (the desired state of each changed instance, and a history entry) with
// check-and-set, then applied by re-registering each instance through the agent that owns it, which
// keeps the instance's checks and their status. A Registrar is safe for concurrent use.
type Registrar struct {
	cfg        api.Config
	client     *api.Client
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
// set, and a transport that keeps enough idle connections for many concurrent blocking queries.
func NewConfig(addr string) *api.Config {
	cfg := api.DefaultConfig()
	if addr != "" {
		cfg.Address = addr
	}
	cfg.Transport.MaxIdleConnsPerHost = 64
	cfg.Transport.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return cfg
}

// newClient returns a Consul client for cfg (nil: NewConfig("")) and the configuration it used.
func newClient(cfg *api.Config) (*api.Client, *api.Config, error) {
	if cfg == nil {
		cfg = NewConfig("")
	}
	client, err := api.NewClient(cfg)
	return client, cfg, redact(err, cfg.Token)
}

// New returns a Registrar for the Consul agent in cfg (nil: NewConfig("")).
func New(cfg *api.Config, opts ...Option) (*Registrar, error) {
	client, cfg, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	r := &Registrar{cfg: *cfg, client: client, prefix: DefaultKVPrefix, now: time.Now, agents: map[string]*api.Client{}}
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

// Client returns the Consul client of the configured agent.
func (r *Registrar) Client() *api.Client { return r.client }

// redact removes a secret from an error's text: a token never appears in a log or an error.
func redact(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), secret, "[redacted]"))
}

func (r *Registrar) wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return redact(fmt.Errorf(format+": %w", append(args, err)...), r.cfg.Token)
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

// desiredState is the state graylane keeps in KV for one service: the gray meta of each instance
// that a graylane change touched, which wins over the instance's own spec when it registers again.
type desiredState struct {
	Instances map[string]map[string]string `json:"instances"`
}

func (r *Registrar) stateKey(service string) string {
	return r.prefix + "/services/" + service + "/state"
}

func (r *Registrar) historyPrefix(service string) string {
	return r.prefix + "/services/" + service + "/history/"
}

// readState returns the service's desired state and the KV index to check-and-set against (0 when
// the key does not exist yet).
func (r *Registrar) readState(ctx context.Context, service string) (desiredState, uint64, error) {
	st := desiredState{Instances: map[string]map[string]string{}}
	pair, _, err := r.client.KV().Get(r.stateKey(service), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return st, 0, r.wrap(err, "reading the gray state of %s", service)
	}
	if pair == nil {
		return st, 0, nil
	}
	if err := json.Unmarshal(pair.Value, &st); err != nil {
		return st, 0, fmt.Errorf("the gray state of %s in KV key %s is not valid: %w", service, pair.Key, err)
	}
	if st.Instances == nil {
		st.Instances = map[string]map[string]string{}
	}
	return st, pair.ModifyIndex, nil
}

// current reads a service's recorded state (with its check-and-set index) and its instances.
func (r *Registrar) current(ctx context.Context, service string) (desiredState, uint64, []Instance, error) {
	st, index, err := r.readState(ctx, service)
	if err != nil {
		return st, 0, nil, err
	}
	instances, _, err := r.Instances(ctx, service)
	return st, index, instances, err
}

// DesiredMeta returns the gray meta an instance should register with: the state recorded by graylane
// changes when there is one, else spec. A Kratos app calls it before registering, so that changes
// made with graylane survive its restarts.
func (r *Registrar) DesiredMeta(ctx context.Context, service, id string, spec gray.Meta) (gray.Meta, error) {
	st, _, err := r.readState(ctx, service)
	if err != nil {
		return spec, err
	}
	rec, ok := st.Instances[id]
	if !ok {
		return spec, nil
	}
	m, err := gray.ParseMeta(rec)
	if err != nil {
		return spec, fmt.Errorf("the recorded gray state of %s/%s does not decode: %w", service, id, err)
	}
	return m, nil
}

// HistoryEntry is one recorded change.
type HistoryEntry struct {
	Time    time.Time `json:"time"`
	Who     string    `json:"who"`
	Service string    `json:"service"`
	Action  string    `json:"action"`
	// Before and After map instance IDs to their gray meta keys.
	Before map[string]map[string]string `json:"before"`
	After  map[string]map[string]string `json:"after"`
}

// History returns a service's recorded changes, oldest first.
func (r *Registrar) History(ctx context.Context, service string) ([]HistoryEntry, error) {
	pairs, _, err := r.client.KV().List(r.historyPrefix(service), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, r.wrap(err, "reading the history of %s", service)
	}
	out := make([]HistoryEntry, 0, len(pairs))
	for _, p := range pairs {
		var h HistoryEntry
		if err := json.Unmarshal(p.Value, &h); err != nil {
			return nil, fmt.Errorf("history entry %s is not valid: %w", p.Key, err)
		}
		out = append(out, h)
	}
	slices.SortStableFunc(out, func(a, b HistoryEntry) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// ConflictError reports a change that lost a check-and-set race: someone changed the service after
// the change was planned. Nothing of the change was applied.
type ConflictError struct {
	Service string
	Action  string
	// Last is the most recent recorded change, when it can be read.
	Last *HistoryEntry
}

func (e *ConflictError) Error() string {
	msg := fmt.Sprintf("registrar: %s on %s not applied: the service's gray state changed since it was read", e.Action, e.Service)
	if e.Last != nil {
		msg += fmt.Sprintf(" (%q by %s at %s)", e.Last.Action, e.Last.Who, e.Last.Time.Format(time.RFC3339))
	}
	return msg + "; check `graylane status` and run the command again"
}

func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// InstanceChange is the change a plan makes to one instance.
type InstanceChange struct {
	ID     string
	Before gray.Meta
	After  gray.Meta
}

// Plan is a change computed against the current state of a service, not yet applied. Commit applies
// it, unless the service changed in between.
type Plan struct {
	Service string
	Action  string
	Changes []InstanceChange
	// Notes explain side effects (another lane's weight changed to keep blue/green unambiguous).
	Notes []string

	stateIndex uint64
	state      desiredState
	instances  map[string]Instance
	deregister bool
}

// Result is what Commit did.
type Result struct {
	Plan *Plan
	// Applied lists the instances re-registered with their new meta.
	Applied []string
}

// ApplyError reports instances whose new meta was recorded but could not be re-registered through
// their agent; run the command again, or restart them (they read the recorded state).
type ApplyError struct {
	Failed map[string]error
}

func (e *ApplyError) Error() string {
	ids := slices.Sorted(maps.Keys(e.Failed))
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s: %v", id, e.Failed[id])
	}
	return "registrar: change recorded but not applied to " + strings.Join(parts, "; ")
}

// Commit records the plan in KV with check-and-set (with a history entry, in one transaction) and
// re-registers each changed instance through its agent. It returns a *ConflictError when the
// service's state changed since the plan was made.
func (r *Registrar) Commit(ctx context.Context, p *Plan) (*Result, error) {
	if err := r.record(ctx, p); err != nil {
		return nil, err
	}
	return r.applyPlan(ctx, p)
}

// record writes the plan's desired state with check-and-set and its history entry, in one
// transaction.
func (r *Registrar) record(ctx context.Context, p *Plan) error {
	entry := HistoryEntry{Time: r.now().UTC(), Who: r.operator, Service: p.Service, Action: p.Action,
		Before: map[string]map[string]string{}, After: map[string]map[string]string{}}
	for _, c := range p.Changes {
		entry.Before[c.ID], _ = c.Before.Encode()
		if !p.deregister {
			entry.After[c.ID], _ = c.After.Encode()
		}
	}
	stateJSON, err := json.Marshal(p.state)
	if err != nil {
		return err
	}
	historyJSON, err := json.Marshal(entry)
	if err != nil {
		return err
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: r.stateKey(p.Service), Value: stateJSON, Index: p.stateIndex}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: fmt.Sprintf("%s%020d", r.historyPrefix(p.Service), entry.Time.UnixNano()), Value: historyJSON}},
	}
	ok, resp, _, err := r.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return r.wrap(err, "recording %s on %s", p.Action, p.Service)
	}
	if !ok {
		if resp != nil && len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0 {
			conflict := &ConflictError{Service: p.Service, Action: p.Action}
			if hist, err := r.History(ctx, p.Service); err == nil && len(hist) > 0 {
				conflict.Last = &hist[len(hist)-1]
			}
			return conflict
		}
		return fmt.Errorf("registrar: recording %s on %s: transaction refused: %v", p.Action, p.Service, resp.Errors)
	}
	return nil
}

// applyPlan re-registers (or deregisters) the plan's instances through their agents.
func (r *Registrar) applyPlan(ctx context.Context, p *Plan) (*Result, error) {
	res := &Result{Plan: p}
	failed := map[string]error{}
	for _, c := range p.Changes {
		inst := p.instances[c.ID]
		var err error
		if p.deregister {
			err = r.deregister(ctx, &inst)
		} else {
			err = r.reregister(ctx, &inst, c.After)
		}
		if err != nil {
			failed[c.ID] = err
			continue
		}
		res.Applied = append(res.Applied, c.ID)
	}
	if len(failed) > 0 {
		return res, &ApplyError{Failed: failed}
	}
	return res, nil
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
	c, err := api.NewClient(&cfg)
	if err != nil {
		return nil, redact(err, cfg.Token)
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

// reregister writes new gray meta into an instance through its agent. The registration carries no
// checks, so the agent keeps the instance's checks and their status (a Kratos TTL heartbeat goes on).
func (r *Registrar) reregister(ctx context.Context, inst *Instance, g gray.Meta) error {
	agent, err := r.agentFor(ctx, inst)
	if err != nil {
		return err
	}
	return r.reregisterOn(ctx, agent, inst, g)
}

// reregisterOn is reregister through a known agent.
func (r *Registrar) reregisterOn(ctx context.Context, agent *api.Client, inst *Instance, g gray.Meta) error {
	svc, _, err := agent.Agent().Service(inst.ID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return r.wrap(err, "reading %s from its agent", inst.ID)
	}
	meta, err := g.Merge(svc.Meta)
	if err != nil {
		return err
	}
	if err := gray.CheckConsulLimits(meta); err != nil {
		return err
	}
	reg := &api.AgentServiceRegistration{
		Kind: svc.Kind, ID: svc.ID, Name: svc.Service, Tags: svc.Tags, Port: svc.Port, Address: svc.Address,
		TaggedAddresses: svc.TaggedAddresses, EnableTagOverride: svc.EnableTagOverride, Meta: meta,
		Weights: &svc.Weights, Proxy: svc.Proxy, Connect: svc.Connect, Namespace: svc.Namespace,
		Partition: svc.Partition, Locality: svc.Locality,
	}
	return r.wrap(agent.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)), "re-registering %s", inst.ID)
}

func (r *Registrar) deregister(ctx context.Context, inst *Instance) error {
	agent, err := r.agentFor(ctx, inst)
	if err != nil {
		return err
	}
	return r.wrap(agent.Agent().ServiceDeregisterOpts(inst.ID, (&api.QueryOptions{}).WithContext(ctx)), "deregistering %s", inst.ID)
}

// httpStatus extracts the HTTP status code of a Consul API error, or 0.
func httpStatus(err error) int {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	if err != nil && strings.Contains(err.Error(), "Unexpected response code: 404") {
		return http.StatusNotFound
	}
	return 0
}
