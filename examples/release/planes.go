package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	A6 "github.com/api7/ext-plugin-proto/go/A6"
	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	"github.com/go-kratos/kratos/v2/metadata"
	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	kselector "github.com/go-kratos/kratos/v2/selector"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/examples/echo"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/runnerclient"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// stickyHeader is the sticky key of every data plane in the demo: the gateway's plugin conf, the
// Kratos clients' selector option and the example services' calls to their next hop.
const stickyHeader = "x-user-id"

// request is one client request, as sent through either plane.
type request struct {
	User    string      // the x-user-id header ("" for none)
	Headers [][2]string // other headers (the Cookie header among them)
	Method  string      // default GET
	Path    string      // default /api/order
	Query   string
	IP      string // the client's address ("" for none)
}

func (r *request) headers() [][2]string {
	h := r.Headers
	if r.User != "" {
		h = append([][2]string{{stickyHeader, r.User}}, h...)
	}
	return h
}

// reply is what the example service answered: the instance that served a request, its lane, and
// the next hop's.
type reply = echo.Reply

// plane sends a request to a service and returns who served it.
type plane interface {
	Name() string
	Do(ctx context.Context, service string, r *request) (*reply, error)
}

// gateway is the APISIX data path without APISIX: the request goes to graylane's real plugin runner
// over APISIX's protocol (PrepareConf, HTTPReqCall), the runner's answer sets or removes the lane
// header, and the request is then routed as the route `graylane apisix route` writes routes it
// (traffic-split on the lane header to graylane-SERVICE-LANE, else the route's upstream
// graylane-SERVICE) over the upstreams `graylane apisix sync` would write (apisix.Desired), and sent
// to a node of that upstream over HTTP.
type gateway struct {
	sock  string
	w     *watch.Watcher
	conns chan *runnerclient.Conn
	http  *http.Client
	id    atomic.Uint32
	rr    atomic.Uint64

	mu     sync.Mutex
	tokens map[string]uint32 // plugin conf -> token
	ups    map[string]*upstreamCache
}

type upstreamCache struct {
	snap  *gray.Snapshot[watch.Endpoint]
	nodes map[string][]string // upstream id -> "host:port" nodes
}

func newGateway(sock string, w *watch.Watcher) *gateway {
	return &gateway{sock: sock, w: w, conns: make(chan *runnerclient.Conn, 16), tokens: map[string]uint32{},
		ups: map[string]*upstreamCache{}, http: &http.Client{Timeout: 10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
}

func (g *gateway) Name() string { return "gateway: plugin runner" }

func (g *gateway) close() {
	for {
		select {
		case c := <-g.conns:
			c.Close()
		default:
			g.http.CloseIdleConnections()
			return
		}
	}
}

// conf is the plugin conf of the service's route (what `graylane apisix route --sticky-header` writes).
func conf(service string) string {
	b, _ := json.Marshal(map[string]string{"service": service, "sticky_header": stickyHeader})
	return string(b)
}

// decide sends the request to the runner and returns the lane header the upstream would receive.
// When the runner fails the request (it restarted: its connections and conf tokens are gone), the
// gateway forgets its connections and tokens and tries once more, as APISIX does.
func (g *gateway) decide(service string, r *request) (string, error) {
	lane, err := g.decideOnce(service, r)
	if err != nil {
		g.reset()
		lane, err = g.decideOnce(service, r)
	}
	return lane, err
}

// reset forgets the runner's connections and conf tokens.
func (g *gateway) reset() {
	g.mu.Lock()
	clear(g.tokens)
	g.mu.Unlock()
	for {
		select {
		case c := <-g.conns:
			c.Close()
		default:
			return
		}
	}
}

func (g *gateway) decideOnce(service string, r *request) (string, error) {
	var c *runnerclient.Conn
	select {
	case c = <-g.conns:
	default:
		var err error
		if c, err = runnerclient.DialConn(g.sock); err != nil {
			return "", err
		}
	}
	cf := conf(service)
	g.mu.Lock()
	token, ok := g.tokens[cf]
	g.mu.Unlock()
	if !ok {
		t, err := c.PrepareConf("route-"+service, [2]string{"graylane", cf})
		if err != nil {
			c.Close()
			return "", err
		}
		g.mu.Lock()
		g.tokens[cf], token = t, t
		g.mu.Unlock()
	}
	req := &runnerclient.Request{Token: token, ID: g.id.Add(1), Method: A6.MethodGET, Path: r.Path, Headers: r.headers()}
	if m, ok := methods[strings.ToUpper(r.Method)]; ok {
		req.Method = m
	}
	if req.Path == "" {
		req.Path = "/api/order"
	}
	if r.Query != "" {
		q, _ := url.ParseQuery(r.Query)
		for k, vs := range q {
			for _, v := range vs {
				req.Args = append(req.Args, [2]string{k, v})
			}
		}
	}
	if r.IP != "" {
		req.IP, _ = netip.ParseAddr(r.IP)
	}
	ans, err := c.Call(req)
	if err != nil {
		c.Close()
		return "", err
	}
	select {
	case g.conns <- c:
	default:
		c.Close()
	}
	return ans.Final(req, gray.DefaultTagKey), nil
}

var methods = map[string]A6.Method{"GET": A6.MethodGET, "POST": A6.MethodPOST, "PUT": A6.MethodPUT, "DELETE": A6.MethodDELETE}

// upstream returns the nodes of the upstream traffic-split picks for the lane header; none before
// Consul has answered for the service, as `graylane apisix sync` writes none before that.
func (g *gateway) upstream(service, lane string) []string {
	v := g.w.Service(service)
	select {
	case <-v.Ready():
	default:
		return nil
	}
	snap := v.Snapshot()
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.ups[service]
	if c == nil || c.snap != snap {
		c = &upstreamCache{snap: snap, nodes: map[string][]string{}}
		ups, _ := apisix.Desired(service, snap)
		for _, u := range ups {
			for n := range u.Nodes {
				c.nodes[u.ID] = append(c.nodes[u.ID], n)
			}
			slices.Sort(c.nodes[u.ID])
		}
		g.ups[service] = c
	}
	if nodes, ok := c.nodes[apisix.LaneUpstreamID(service, lane)]; ok && lane != "" {
		return nodes // traffic-split's rule for the lane
	}
	return c.nodes[apisix.BaseUpstreamID(service)]
}

func (g *gateway) Do(ctx context.Context, service string, r *request) (*reply, error) {
	lane, err := g.decide(service, r)
	if err != nil {
		return nil, fmt.Errorf("plugin runner: %w", err)
	}
	return g.forward(ctx, service, r, lane)
}

// forward sends the request to a node of the upstream traffic-split picks for the lane header,
// round robin; when a node refuses the connection, to the next one, as APISIX retries an upstream's
// other nodes on a connection error.
func (g *gateway) forward(ctx context.Context, service string, r *request, lane string) (*reply, error) {
	nodes := g.upstream(service, lane)
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%s: upstream for lane %q has no nodes", service, lane)
	}
	first := g.rr.Add(1)
	var err error
	for i := range uint64(len(nodes)) {
		var rep *reply
		var refused bool
		if rep, refused, err = g.send(ctx, nodes[(first+i)%uint64(len(nodes))], r, lane); !refused {
			return rep, err
		}
	}
	return nil, err
}

// send sends the request to one node; refused reports a connection that was never made.
func (g *gateway) send(ctx context.Context, node string, r *request, lane string) (_ *reply, refused bool, _ error) {
	path := r.Path
	if path == "" {
		path = "/api/order"
	}
	u := "http://" + node + path
	if r.Query != "" {
		u += "?" + r.Query
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	hr, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, false, err
	}
	for _, h := range r.headers() {
		hr.Header.Add(h[0], h[1])
	}
	if lane != "" {
		hr.Header.Set(gray.DefaultTagKey, lane)
	}
	if r.IP != "" {
		hr.Header.Set("X-Forwarded-For", r.IP)
	}
	resp, err := g.http.Do(hr)
	if err != nil {
		var op *net.OpError
		return nil, errors.As(err, &op) && op.Op == "dial", err
	}
	defer resp.Body.Close()
	out := new(reply)
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil || resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("%s answered %d: %v", node, resp.StatusCode, err)
	}
	return out, false, nil
}

// kratosClient is a Kratos gRPC client per service with the selector option: the client a Go
// service uses to call another.
type kratosClient struct {
	mu      sync.Mutex
	consul  func() *kconsul.Registry
	watcher *watch.Watcher // the nodes' meta as soon as Consul commits it
	conns   map[string]*grpc.ClientConn
	nodes   map[string]*atomic.Pointer[[]kselector.Node] // per service, the nodes of the last pick
}

func (k *kratosClient) Name() string { return "Kratos client: selector" }

func (k *kratosClient) conn(ctx context.Context, service string) (*grpc.ClientConn, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c := k.conns[service]; c != nil {
		return c, nil
	}
	last := new(atomic.Pointer[[]kselector.Node])
	seen := func(_ context.Context, nodes []kselector.Node) []kselector.Node {
		last.Store(&nodes) // Kratos' default selector hands each pick its own copy
		return nodes
	}
	// One registry value per client: see the selector's README section on Kratos' Equal.
	c, err := kgrpc.DialInsecure(context.Background(),
		kgrpc.WithEndpoint("discovery:///"+service),
		kgrpc.WithDiscovery(k.consul()),
		kgrpc.WithMiddleware(mmd.Client()),
		kgrpc.WithPrintDiscoveryDebugLog(false),
		selector.GRPC(selector.WithStickyHeader(stickyHeader), selector.WithWatcher(k.watcher),
			selector.WithNodeFilters(seen)),
	)
	if err != nil {
		return nil, err
	}
	k.conns[service] = c
	k.nodes[service] = last
	return c, nil
}

// settled reports whether the nodes of the client's last pick of service carry the meta Consul
// holds, as the watcher shows it. The watcher shows a change first and the client decides by it at
// once; the Kratos registry delivers it up to a second later, and gRPC then reconnects each changed
// instance (its connection is keyed by the address and the meta): for that handshake the instance
// is missing from the nodes and its lane's calls fall back. Measuring shares after the client has
// settled keeps that moment out of them.
func (k *kratosClient) settled(service string) bool {
	k.mu.Lock()
	last := k.nodes[service]
	k.mu.Unlock()
	list := k.watcher.Service(service).Instances()
	if last == nil || last.Load() == nil || list == nil {
		return false
	}
	meta := map[string]map[string]string{}
	for _, n := range *last.Load() {
		meta[n.Address()] = n.Metadata()
	}
	for _, ep := range list.Endpoints {
		u, err := url.Parse(ep.TaggedAddresses["grpc"])
		if err != nil {
			return false
		}
		if m, ok := meta[u.Host]; !ok || !maps.Equal(m, ep.Meta) {
			return false
		}
	}
	return true
}

func (k *kratosClient) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
}

func (k *kratosClient) Do(ctx context.Context, service string, r *request) (*reply, error) {
	c, err := k.conn(ctx, service)
	if err != nil {
		return nil, err
	}
	var kv []string
	for _, h := range r.headers() {
		kv = append(kv, h[0], h[1])
	}
	if len(kv) > 0 {
		ctx = metadata.AppendToClientContext(ctx, kv...)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return echo.Who(ctx, c)
}

// sendAll sends every request through the plane with a few workers and returns the replies in
// order.
func sendAll(ctx context.Context, p plane, service string, reqs []request) ([]*reply, error) {
	out := make([]*reply, len(reqs))
	var next atomic.Int64
	var wg sync.WaitGroup
	var first error
	var once sync.Once
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) || ctx.Err() != nil {
					return
				}
				r, err := p.Do(ctx, service, &reqs[i])
				if err != nil {
					once.Do(func() { first = fmt.Errorf("%s: request %d: %w", p.Name(), i, err) })
					return
				}
				out[i] = r
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return out, first
}
