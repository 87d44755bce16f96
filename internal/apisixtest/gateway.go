package apisixtest

// Gateway is a stand-in for APISIX's data plane, for the routes graylane writes, because no APISIX
// runs where the tests run. It serves HTTP with the routes and upstreams an AdminAPI holds and a real
// plugin runner on a unix socket, in the order APISIX runs them (what facts observed on APISIX 3.11
// and 3.14 say):
//
//  1. the route: uri exact, or a prefix when it ends in '*';
//  2. rewrite phase, by priority (a plugin's _meta.priority overrides its default; a plugin whose
//     _meta.filter fails does not run, see EvalFilter): proxy-rewrite (1008) removes
//     headers.remove; ext-plugin-pre-req (12000) sends
//     PrepareConf (once per conf) and HTTPReqCall to the runner and applies the Rewrite; a runner
//     failure answers 503 unless allow_degradation;
//  3. access phase: traffic-split's first rule whose vars (http_* == value) hold picks the upstream;
//  4. else the route's upstream_id; a missing upstream answers 500, an upstream without nodes 503.
//
// It knows those three plugins and nothing else (any other answers 500). APISIX's header-variable
// cache is not modelled: graylane's routes never read the lane header before the plugin.

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	A6 "github.com/api7/ext-plugin-proto/go/A6"
	A6Err "github.com/api7/ext-plugin-proto/go/A6/Err"
)

// Gateway is the stand-in data plane. Its URL is where clients send requests.
type Gateway struct {
	URL string

	admin *AdminAPI
	sock  string
	srv   *httptest.Server

	mu     sync.Mutex
	idle   []*Conn
	tokens map[string]uint32 // conf JSON -> token

	runnerCalls atomic.Int64
}

// RunnerCalls returns how many requests ext-plugin-pre-req has sent to the runner.
func (g *Gateway) RunnerCalls() int64 { return g.runnerCalls.Load() }

// NewGateway starts the stand-in on the routes of admin and the runner listening on sock. It stops
// when the test ends.
func NewGateway(tb testing.TB, admin *AdminAPI, sock string) *Gateway {
	g := &Gateway{admin: admin, sock: sock, tokens: map[string]uint32{}}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	g.URL = g.srv.URL
	tb.Cleanup(func() {
		g.srv.Close()
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range g.idle {
			c.Close()
		}
	})
	return g
}

var defaultPriority = map[string]struct{ phase, priority int }{
	"proxy-rewrite":      {0, 1008},
	"ext-plugin-pre-req": {0, 12000},
	"traffic-split":      {1, 966},
}

func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) {
	upstreams, routes, _ := g.admin.State()
	route := matchRoute(routes, r.URL.Path)
	if route == nil {
		http.Error(w, `{"error_msg":"404 Route Not Found"}`, http.StatusNotFound)
		return
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	remote, _ := netip.ParseAddr(host)
	headers := map[string]string{} // lower-case name -> first value
	for k, vs := range r.Header {
		headers[strings.ToLower(k)] = vs[0]
	}
	respHeaders := map[string]string{}

	plugins, _ := route["plugins"].(map[string]any)
	type step struct {
		name            string
		phase, priority int
	}
	var steps []step
	for name, conf := range plugins {
		d, ok := defaultPriority[name]
		if !ok {
			http.Error(w, "gateway stand-in: unknown plugin "+name, http.StatusInternalServerError)
			return
		}
		if meta, ok := conf.(map[string]any)["_meta"].(map[string]any); ok {
			if p, ok := meta["priority"].(float64); ok {
				d.priority = int(p)
			}
			if meta["disable"] == true {
				continue // as APISIX's plugin.filter: a disabled plugin does not run
			}
		}
		steps = append(steps, step{name, d.phase, d.priority})
	}
	sort.Slice(steps, func(i, j int) bool {
		if steps[i].phase != steps[j].phase {
			return steps[i].phase < steps[j].phase
		}
		return steps[i].priority > steps[j].priority
	})

	upstreamID := fmt.Sprint(route["upstream_id"])
	for _, st := range steps {
		conf := plugins[st.name].(map[string]any)
		if pass, err := filterPasses(conf, remote, headers); err != nil {
			http.Error(w, "gateway stand-in: "+st.name+": "+err.Error(), http.StatusInternalServerError)
			return
		} else if !pass {
			continue // as APISIX's meta_filter: the plugin does not run for this request
		}
		switch st.name {
		case "proxy-rewrite":
			hs, _ := conf["headers"].(map[string]any)
			rm, _ := hs["remove"].([]any)
			for _, h := range rm {
				delete(headers, strings.ToLower(fmt.Sprint(h)))
			}
		case "ext-plugin-pre-req":
			if err := g.runPlugin(conf, r, remote, headers, respHeaders); err != nil {
				if conf["allow_degradation"] != true {
					http.Error(w, "runner: "+err.Error(), http.StatusServiceUnavailable)
					return
				}
			}
		case "traffic-split":
			if id, ok := splitTarget(conf, headers); ok {
				upstreamID = id
			}
		}
	}

	up, ok := upstreams[upstreamID]
	if !ok {
		http.Error(w, "upstream "+upstreamID+" not found", http.StatusInternalServerError)
		return
	}
	nodes, _ := up["nodes"].(map[string]any)
	var addrs []string
	for a := range nodes {
		addrs = append(addrs, a)
	}
	if len(addrs) == 0 {
		http.Error(w, "no valid upstream node", http.StatusServiceUnavailable)
		return
	}
	slices.Sort(addrs)
	out, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+addrs[rand.IntN(len(addrs))]+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	for k, v := range headers {
		out.Header.Set(k, v)
	}
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	for k, v := range respHeaders {
		w.Header().Set(k, v)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func matchRoute(routes map[string]map[string]any, path string) map[string]any {
	ids := make([]string, 0, len(routes))
	for id := range routes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		uri := fmt.Sprint(routes[id]["uri"])
		if prefix, ok := strings.CutSuffix(uri, "*"); ok && strings.HasPrefix(path, prefix) || uri == path {
			return routes[id]
		}
	}
	return nil
}

// EvalFilter evaluates a plugin's _meta.filter as APISIX 3.11's lua-resty-expr does, for the forms
// graylane writes: a list of expressions that must all hold; an expression is [var, op, value] or
// [var, "!", op, value], or a logical ["OR"|"AND"|"!OR"|"!AND", expression...]. Variables are
// remote_addr and http_NAME (a request header: the name lower case, '-' read as '_'; absent is
// nil); operators ipmatch (a list of addresses and prefixes), ~~ (a regular expression that must
// occur in the value; false for nil) and ==. Anything else is an error: the stand-in knows only
// what graylane writes. headers maps lower-case names to values.
func EvalFilter(filter []any, remote netip.Addr, headers map[string]string) (bool, error) {
	for _, e := range filter {
		ok, err := evalExpr(e, remote, headers)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func evalExpr(e any, remote netip.Addr, headers map[string]string) (bool, error) {
	list, ok := e.([]any)
	if !ok || len(list) < 2 {
		return false, fmt.Errorf("filter expression %v: not a list of at least two", e)
	}
	if op, ok := list[0].(string); ok {
		switch op {
		case "OR", "!OR", "AND", "!AND":
			if len(list) < 3 {
				return false, fmt.Errorf("filter expression %v: rule too short", e)
			}
			or := strings.HasSuffix(op, "OR")
			result := !or
			for _, sub := range list[1:] {
				v, err := evalExpr(sub, remote, headers)
				if err != nil {
					return false, err
				}
				if v == or {
					result = or
					break
				}
			}
			return result != strings.HasPrefix(op, "!"), nil
		}
	}
	name, _ := list[0].(string)
	rest := list[1:]
	negate := len(rest) == 3 && rest[0] == "!"
	if negate {
		rest = rest[1:]
	}
	if len(rest) != 2 {
		return false, fmt.Errorf("filter expression %v: want [var, op, value] or [var, \"!\", op, value]", e)
	}
	var value *string
	switch {
	case name == "remote_addr":
		s := remote.Unmap().String()
		value = &s
	case strings.HasPrefix(name, "http_"):
		want := strings.ReplaceAll(strings.ToLower(name), "-", "_")
		for k, v := range headers {
			if "http_"+strings.ReplaceAll(k, "-", "_") == want {
				value = &v
				break
			}
		}
	default:
		return false, fmt.Errorf("filter expression %v: variable %q unknown to the stand-in", e, name)
	}
	var held bool
	switch op := rest[0]; op {
	case "ipmatch":
		if name != "remote_addr" {
			return false, fmt.Errorf("filter expression %v: ipmatch on %s", e, name)
		}
		list, _ := rest[1].([]any)
		if len(list) == 0 {
			return false, fmt.Errorf("filter expression %v: invalid ip address", e)
		}
		for _, c := range list {
			s := fmt.Sprint(c)
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return false, fmt.Errorf("filter expression %v: %q is no address or prefix", e, s)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if p.Contains(remote.Unmap()) || p.Contains(remote) {
				held = true
			}
		}
	case "~~":
		pattern, ok := rest[1].(string)
		if !ok {
			return false, fmt.Errorf("filter expression %v: ~~ needs a pattern", e)
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			return false, fmt.Errorf("filter expression %v: %v", e, err)
		}
		held = value != nil && re.MatchString(*value)
	case "==":
		held = value != nil && *value == fmt.Sprint(rest[1])
	default:
		return false, fmt.Errorf("filter expression %v: operator %v unknown to the stand-in", e, op)
	}
	return held != negate, nil
}

// filterPasses evaluates a plugin conf's _meta.filter (none: it passes).
func filterPasses(conf map[string]any, remote netip.Addr, headers map[string]string) (bool, error) {
	meta, _ := conf["_meta"].(map[string]any)
	filter, ok := meta["filter"].([]any)
	if !ok {
		return true, nil
	}
	return EvalFilter(filter, remote, headers)
}

// splitTarget returns the upstream of traffic-split's first rule whose vars hold.
func splitTarget(conf map[string]any, headers map[string]string) (string, bool) {
	rules, _ := conf["rules"].([]any)
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		matches, _ := rule["match"].([]any)
		ok := len(matches) == 0
		for _, m := range matches {
			vars, _ := m.(map[string]any)["vars"].([]any)
			all := true
			for _, v := range vars {
				expr, _ := v.([]any)
				if len(expr) != 3 || expr[1] != "==" || !varEquals(fmt.Sprint(expr[0]), fmt.Sprint(expr[2]), headers) {
					all = false
				}
			}
			if all {
				ok = true
			}
		}
		ws, _ := rule["weighted_upstreams"].([]any)
		if ok && len(ws) > 0 {
			if id, found := ws[0].(map[string]any)["upstream_id"]; found {
				return fmt.Sprint(id), true
			}
			return "", false // an upstream-less weighted entry: the route's upstream
		}
	}
	return "", false
}

func varEquals(name, want string, headers map[string]string) bool {
	h, ok := strings.CutPrefix(name, "http_")
	if !ok {
		return false
	}
	for k, v := range headers {
		if strings.ReplaceAll(k, "-", "_") == h {
			return v == want
		}
	}
	return false
}

// runPlugin runs ext-plugin-pre-req's confs through the runner and applies the answer.
func (g *Gateway) runPlugin(conf map[string]any, r *http.Request, remote netip.Addr, headers, respHeaders map[string]string) error {
	g.runnerCalls.Add(1)
	confs, _ := conf["conf"].([]any)
	var pairs [][2]string
	key := ""
	for _, c := range confs {
		m, _ := c.(map[string]any)
		pairs = append(pairs, [2]string{fmt.Sprint(m["name"]), fmt.Sprint(m["value"])})
		key += fmt.Sprint(m["name"], "\x00", m["value"], "\x00")
	}
	c, err := g.conn()
	if err != nil {
		return err
	}
	req := &Request{IP: remote, Method: A6.EnumValuesMethod[r.Method], Path: r.URL.Path}
	for k, v := range headers {
		req.Headers = append(req.Headers, [2]string{k, v})
	}
	for k, vs := range r.URL.Query() {
		for _, v := range vs {
			req.Args = append(req.Args, [2]string{k, v})
		}
	}
	var ans *Answer
	for attempt := 0; attempt < 3; attempt++ {
		if req.Token, err = g.token(c, key, pairs, attempt > 0); err != nil {
			break
		}
		ans, err = c.Call(req)
		var ea *ErrorAnswer
		if errors.As(err, &ea) && ea.Code == A6Err.CodeCONF_TOKEN_NOT_FOUND {
			continue // the runner restarted: prepare the conf again, as APISIX does
		}
		break
	}
	if err != nil {
		c.Close()
		return err
	}
	g.release(c)
	for k, v := range ans.Headers {
		if v == nil {
			delete(headers, strings.ToLower(k))
		} else {
			headers[strings.ToLower(k)] = *v
		}
	}
	for k, v := range ans.RespHeaders {
		respHeaders[k] = v
	}
	return nil
}

func (g *Gateway) token(c *Conn, key string, pairs [][2]string, fresh bool) (uint32, error) {
	g.mu.Lock()
	t, ok := g.tokens[key]
	g.mu.Unlock()
	if ok && !fresh {
		return t, nil
	}
	t, err := c.PrepareConf(key, pairs...)
	if err != nil {
		return 0, err
	}
	g.mu.Lock()
	g.tokens[key] = t
	g.mu.Unlock()
	return t, nil
}

func (g *Gateway) conn() (*Conn, error) {
	g.mu.Lock()
	if n := len(g.idle); n > 0 {
		c := g.idle[n-1]
		g.idle = g.idle[:n-1]
		g.mu.Unlock()
		return c, nil
	}
	g.mu.Unlock()
	return DialConn(g.sock)
}

func (g *Gateway) release(c *Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.idle = append(g.idle, c)
}
