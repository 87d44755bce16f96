// Package apisixtest holds stand-ins for the parts of APISIX that cannot run where graylane's tests
// run: an Admin API (this file) and a gateway that routes as APISIX does for graylane's routes
// (gateway.go).
//
// AdminAPI answers the way a real gateway (APISIX 3.11, etcd, traditional mode) was seen to answer:
// it checks the key, each upstream against APISIX's upstream schema (the fields graylane can send),
// ids, ports, body ids, a route's own upstream_id (traffic-split's are not checked, as in APISIX),
// plugin conf values that must be strings and _meta filters, and refuses to delete an upstream a
// route still uses. It counts writes and can fail the next writes with 503.
package apisixtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// DefaultKey is the admin key the stand-in takes.
const DefaultKey = "edd1c9f034335f136f87ad84b625c8f1"

// AdminAPI is the stand-in Admin API. Its methods are safe for concurrent use.
type AdminAPI struct {
	srv *httptest.Server
	// URL is the server's address; Key the admin key it takes.
	URL, Key string

	mu        sync.Mutex
	upstreams map[string]map[string]any
	routes    map[string]map[string]any
	writes    int // successful PUTs and DELETEs
	failNext  int // answer the next writes with 500
	failed    int
	rejected  []string // 4xx answers to writes, for tests to show
	// dangling records traffic-split rules written while their upstream did not exist: APISIX
	// accepts them and answers the matching requests with 500.
	dangling []string
}

// NewAdminAPI starts the stand-in; it stops when the test ends.
func NewAdminAPI(tb testing.TB) *AdminAPI {
	s := &AdminAPI{upstreams: map[string]map[string]any{}, routes: map[string]map[string]any{}, Key: DefaultKey}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	tb.Cleanup(s.srv.Close)
	return s
}

// State returns copies of the stored upstreams and routes by id, and the count of writes.
func (s *AdminAPI) State() (upstreams, routes map[string]map[string]any, writes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	upstreams, routes = map[string]map[string]any{}, map[string]map[string]any{}
	for k, v := range s.upstreams {
		upstreams[k] = clone(v)
	}
	for k, v := range s.routes {
		routes[k] = clone(v)
	}
	return upstreams, routes, s.writes
}

// FailNextWrites makes the next n writes (PUT, PATCH, DELETE) answer 503.
func (s *AdminAPI) FailNextWrites(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = n
}

// FailedWrites returns how many writes were answered 503.
func (s *AdminAPI) FailedWrites() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Rejected returns the writes answered 4xx, each with its message.
func (s *AdminAPI) Rejected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rejected)
}

// Dangling returns the traffic-split rules written while their upstream did not exist (APISIX
// accepts them and answers matching requests with 500).
func (s *AdminAPI) Dangling() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.dangling)
}

func clone(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	var out map[string]any
	json.Unmarshal(b, &out)
	return out
}

var (
	standinID    = regexp.MustCompile(`^[a-zA-Z0-9-_.]{1,64}$`)
	standinLabel = regexp.MustCompile(`^\S{1,64}$`)
	standinHost  = regexp.MustCompile(`^\*?[0-9a-zA-Z-._]+$`)
)

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func bad(w http.ResponseWriter, msg string) { reply(w, 400, map[string]string{"error_msg": msg}) }

func (s *AdminAPI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-API-KEY") != s.Key {
		reply(w, 401, map[string]string{"description": "missing apikey", "error_msg": "failed to check token"})
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/apisix/admin/")
	if !ok {
		reply(w, 404, map[string]string{"error_msg": "404 Route Not Found"})
		return
	}
	kind, id, _ := strings.Cut(rest, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	store := map[string]map[string]map[string]any{"upstreams": s.upstreams, "routes": s.routes}[kind]
	if store == nil {
		reply(w, 404, map[string]string{"error_msg": "404 Route Not Found"})
		return
	}
	write := r.Method == http.MethodPut || r.Method == http.MethodDelete || r.Method == http.MethodPatch
	if write && s.failNext > 0 {
		s.failNext--
		s.failed++
		reply(w, 503, map[string]string{"error_msg": "etcd: request timed out"})
		return
	}
	switch {
	case r.Method == http.MethodGet && id == "":
		var list []any
		ids := make([]string, 0, len(store))
		for k := range store {
			ids = append(ids, k)
		}
		sort.Strings(ids)
		for _, k := range ids {
			list = append(list, map[string]any{"key": "/apisix/" + kind + "/" + k, "value": store[k], "modifiedIndex": 1})
		}
		if len(list) == 0 {
			// APISIX encodes an empty Lua table as an object.
			reply(w, 200, map[string]any{"total": 0, "list": map[string]any{}})
			return
		}
		reply(w, 200, map[string]any{"total": len(list), "list": list})
	case r.Method == http.MethodGet:
		v, ok := store[id]
		if !ok {
			reply(w, 404, map[string]string{"message": "Key not found"})
			return
		}
		reply(w, 200, map[string]any{"key": "/apisix/" + kind + "/" + id, "value": v})
	case r.Method == http.MethodPut:
		if !standinID.MatchString(id) {
			s.reject(w, r, "invalid configuration: property \"id\" validation failed")
			return
		}
		body, _ := io.ReadAll(r.Body)
		var obj map[string]any
		if err := json.Unmarshal(body, &obj); err != nil {
			s.reject(w, r, "invalid request body: "+err.Error())
			return
		}
		if bid, ok := obj["id"]; ok && fmt.Sprint(bid) != id {
			s.reject(w, r, "wrong "+strings.TrimSuffix(kind, "s")+" id")
			return
		}
		var msg string
		if kind == "upstreams" {
			msg = checkUpstream(obj)
		} else {
			msg = s.checkRoute(obj)
		}
		if msg != "" {
			s.reject(w, r, msg)
			return
		}
		obj["id"] = id
		obj["create_time"], obj["update_time"] = 1700000000, 1700000001
		_, existed := store[id]
		store[id] = obj
		s.writes++
		status := 201
		if existed {
			status = 200
		}
		reply(w, status, map[string]any{"key": "/apisix/" + kind + "/" + id, "value": obj})
	case r.Method == http.MethodDelete:
		if _, ok := store[id]; !ok {
			reply(w, 404, map[string]string{"message": "Key not found"})
			return
		}
		if kind == "upstreams" {
			for rid, route := range s.routes {
				if fmt.Sprint(route["upstream_id"]) == id {
					s.reject(w, r, "can not delete this upstream, route ["+rid+"] is still using it now")
					return
				}
				if mentions(route["plugins"], id) {
					s.reject(w, r, "can not delete this upstream, plugin in route ["+rid+"] is still using it now")
					return
				}
			}
		}
		delete(store, id)
		s.writes++
		reply(w, 200, map[string]any{"deleted": "1", "key": "/apisix/" + kind + "/" + id})
	default:
		reply(w, 405, map[string]string{"error_msg": "method not allowed"})
	}
}

func (s *AdminAPI) reject(w http.ResponseWriter, r *http.Request, msg string) {
	s.rejected = append(s.rejected, r.Method+" "+r.URL.Path+": "+msg)
	bad(w, msg)
}

var upstreamFields = map[string]bool{
	"create_time": true, "update_time": true, "nodes": true, "retries": true, "timeout": true, "tls": true,
	"type": true, "checks": true, "hash_on": true, "key": true, "scheme": true, "labels": true,
	"discovery_type": true, "discovery_args": true, "pass_host": true, "upstream_host": true, "name": true,
	"desc": true, "service_name": true, "id": true, "keepalive_pool": true, "retry_timeout": true,
}

// checkUpstream applies APISIX's upstream schema to the fields graylane can send.
func checkUpstream(u map[string]any) string {
	for k := range u {
		if !upstreamFields[k] {
			return fmt.Sprintf("invalid configuration: additional properties forbidden, found %s", k)
		}
	}
	switch u["type"] {
	case "roundrobin", "chash", "ewma", "least_conn":
	case nil:
		return "invalid configuration: value should match only one schema, but matches none"
	default:
		return fmt.Sprintf("invalid configuration: property \"type\" validation failed: matches none of the enum values")
	}
	if name, ok := u["name"]; ok {
		if s, _ := name.(string); s == "" || len(s) > 100 {
			return "invalid configuration: property \"name\" validation failed"
		}
	}
	if desc, ok := u["desc"]; ok {
		if s, ok := desc.(string); !ok || len(s) > 256 {
			return "invalid configuration: property \"desc\" validation failed"
		}
	}
	if labels, ok := u["labels"]; ok {
		m, ok := labels.(map[string]any)
		if !ok || len(m) > 16 {
			return "invalid configuration: property \"labels\" validation failed"
		}
		for k, v := range m {
			if s, ok := v.(string); !ok || !standinLabel.MatchString(s) {
				return fmt.Sprintf("invalid configuration: property \"labels\" validation failed: property %q validation failed", k)
			}
		}
	}
	switch nodes := u["nodes"].(type) {
	case nil:
		return "invalid configuration: value should match only one schema, but matches none"
	case map[string]any:
		for addr, weight := range nodes {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				host, port = addr, "80"
			}
			if p, err := strconv.Atoi(port); err == nil && (p < 1 || p > 65535) {
				return "invalid port " + port
			}
			if host == "" {
				return "invalid configuration: nodes: empty host"
			}
			if f, ok := weight.(float64); !ok || f < 0 || f != float64(int(f)) {
				return "invalid configuration: property \"nodes\" validation failed: weight must be an integer >= 0"
			}
		}
	case []any:
		for _, n := range nodes {
			m, _ := n.(map[string]any)
			host, _ := m["host"].(string)
			port, _ := m["port"].(float64)
			if !standinHost.MatchString(host) || port < 1 || port > 65535 {
				return "invalid configuration: property \"nodes\" validation failed"
			}
		}
	default:
		return "invalid configuration: property \"nodes\" validation failed"
	}
	return ""
}

var routeFields = map[string]bool{
	"create_time": true, "update_time": true, "uri": true, "uris": true, "name": true, "desc": true,
	"priority": true, "methods": true, "host": true, "hosts": true, "remote_addr": true, "remote_addrs": true,
	"timeout": true, "vars": true, "filter_func": true, "script": true, "script_id": true, "plugins": true,
	"plugin_config_id": true, "upstream": true, "labels": true, "service_id": true, "upstream_id": true,
	"service_protocol": true, "enable_websocket": true, "id": true, "status": true,
}

func (s *AdminAPI) checkRoute(rt map[string]any) string {
	for k := range rt {
		if !routeFields[k] {
			return fmt.Sprintf("invalid configuration: additional properties forbidden, found %s", k)
		}
	}
	if rt["uri"] == nil && rt["uris"] == nil {
		return "invalid configuration: value should match only one schema, but matches none"
	}
	if up, ok := rt["upstream_id"]; ok {
		if _, exists := s.upstreams[fmt.Sprint(up)]; !exists {
			return fmt.Sprintf("failed to fetch upstream info by upstream id [%v], response code: 404", up)
		}
	}
	plugins, _ := rt["plugins"].(map[string]any)
	for _, name := range []string{"ext-plugin-pre-req", "ext-plugin-post-req"} {
		p, ok := plugins[name].(map[string]any)
		if !ok {
			continue
		}
		confs, _ := p["conf"].([]any)
		for i, c := range confs {
			m, _ := c.(map[string]any)
			if _, ok := m["value"].(string); !ok {
				return fmt.Sprintf("failed to check the configuration of plugin %s err: property \"conf\" validation failed: failed to validate item %d: property \"value\" validation failed: wrong type: expected string, got table", name, i+1)
			}
		}
	}
	if ts, ok := plugins["traffic-split"].(map[string]any); ok {
		rules, _ := ts["rules"].([]any)
		for _, r := range rules {
			rule, _ := r.(map[string]any)
			ws, _ := rule["weighted_upstreams"].([]any)
			for _, w := range ws {
				m, _ := w.(map[string]any)
				if id, ok := m["upstream_id"]; ok {
					if _, exists := s.upstreams[fmt.Sprint(id)]; !exists {
						s.dangling = append(s.dangling, fmt.Sprintf("route %v -> %v", rt["id"], id))
					}
				}
			}
		}
	}
	if p, ok := plugins["proxy-rewrite"].(map[string]any); ok {
		if meta, ok := p["_meta"].(map[string]any); ok {
			if f, ok := meta["filter"]; ok {
				if msg := checkFilter(f); msg != "" {
					return "failed to check the configuration of plugin proxy-rewrite err: " + msg
				}
			}
		}
	}
	return ""
}

// checkFilter checks a _meta.filter the way lua-resty-expr does for the forms graylane emits: an
// array of rules, "!" as its own element, ipmatch with a list.
func checkFilter(f any) string {
	rules, ok := f.([]any)
	if !ok || len(rules) == 0 {
		return "filter: rule should be wrapped inside brackets"
	}
	for _, r := range rules {
		rule, ok := r.([]any)
		if !ok || len(rule) < 3 {
			return "filter: rule should be wrapped inside brackets"
		}
		op := rule[1]
		if op == "!" {
			op = rule[2]
		}
		switch op {
		case "==", "~=", ">", "<", "~~", "~*", "in", "has", "ipmatch":
		default:
			return fmt.Sprintf("filter: invalid operator '%v'", op)
		}
	}
	return ""
}

// mentions reports whether an upstream_id field anywhere under v names id.
func mentions(v any, id string) bool {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if k == "upstream_id" && fmt.Sprint(e) == id {
				return true
			}
			if mentions(e, id) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if mentions(e, id) {
				return true
			}
		}
	}
	return false
}
