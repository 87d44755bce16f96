package consulclient_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
)

// answerWait bounds how long a test waits for a callback that must come: generous, for a loaded
// machine.
const answerWait = 60 * time.Second

// muxResult is what a callback was called with.
type muxResult struct {
	resp *consulclient.Response
	err  error
}

func newMux(t testing.TB, cfg *api.Config) *consulclient.Mux {
	t.Helper()
	m, err := consulclient.NewMux(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// getAsync sends a request and returns the channel its callback's result arrives on.
func getAsync(m *consulclient.Mux, ctx context.Context, path string, query url.Values, timeout time.Duration) <-chan muxResult {
	ch := make(chan muxResult, 1)
	m.Get(ctx, path, query, timeout, func(resp *consulclient.Response, err error) { ch <- muxResult{resp, err} })
	return ch
}

// await returns the result on ch, failing the test if none comes within answerWait.
func await(t testing.TB, ch <-chan muxResult) muxResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(answerWait):
		t.Fatalf("no callback within %v", answerWait)
		return muxResult{}
	}
}

// getOK sends a request, waits for its answer and fails the test unless it is a 200.
func getOK(t testing.TB, m *consulclient.Mux, path string, query url.Values) *consulclient.Response {
	t.Helper()
	r := await(t, getAsync(m, context.Background(), path, query, 0))
	if r.err != nil {
		t.Fatalf("GET %s: %v", path, r.err)
	}
	if r.resp.Status != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", path, r.resp.Status, r.resp.Body)
	}
	return r.resp
}

func consulIndex(t testing.TB, resp *consulclient.Response) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		t.Fatalf("X-Consul-Index %q: %v", resp.Header.Get("X-Consul-Index"), err)
	}
	return n
}

// blockingQuery is the query of a blocking query at index.
func blockingQuery(index uint64, wait time.Duration) url.Values {
	return url.Values{"index": {strconv.FormatUint(index, 10)}, "wait": {wait.String()}}
}

// plainClient is an API client of a's plain HTTP port, for the changes a test makes.
func plainClient(t testing.TB, a *consultest.Agent, token string) *api.Client {
	t.Helper()
	cfg := consulclient.Config(a.HTTPAddr)
	cfg.Token = token
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// muxStacks returns the stacks of the goroutines that run code of a Mux, empty when there are none.
func muxStacks() string {
	buf := make([]byte, 4<<20)
	var ours []string
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "consulclient.(*Mux)") || strings.Contains(g, "consulclient.(*muxConn)") ||
			strings.Contains(g, "consulclient.(*muxStream)") {
			ours = append(ours, g)
		}
	}
	return strings.Join(ours, "\n\n")
}

// waitGoroutines waits until no more goroutines run than before, with a short eventually-loop: the
// runtime's and the TLS stack's own may take a moment to go.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 4<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(eventually.Interval)
	}
}

// TestMuxBlockingQuery: a blocking query on a service's health waits for the service to change and
// answers with the change and a higher index.
func TestMuxBlockingQuery(t *testing.T) {
	a := consultest.StartTLS(t)
	var dials atomic.Int64
	m := newMux(t, httpsConfig(a, &dials))
	agent := plainClient(t, a, "").Agent()
	if err := agent.ServiceRegister(&api.AgentServiceRegistration{ID: "x-1", Name: "x", Port: 8001}); err != nil {
		t.Fatal(err)
	}
	resp := getOK(t, m, "/v1/health/service/x", nil)
	index := consulIndex(t, resp)
	var entries []api.ServiceEntry
	if err := json.Unmarshal(resp.Body, &entries); err != nil || len(entries) != 1 {
		t.Fatalf("health of x: %d entries, %v: %s", len(entries), err, resp.Body)
	}

	answer := getAsync(m, context.Background(), "/v1/health/service/x", blockingQuery(index, 30*time.Second), 0)
	select {
	case r := <-answer:
		t.Fatalf("the blocking query answered before the service changed: %+v", r)
	default:
	}
	if err := agent.ServiceRegister(&api.AgentServiceRegistration{ID: "x-2", Name: "x", Port: 8002}); err != nil {
		t.Fatal(err)
	}
	r := await(t, answer)
	if r.err != nil || r.resp.Status != http.StatusOK {
		t.Fatalf("the blocking query: %+v", r)
	}
	if next := consulIndex(t, r.resp); next <= index {
		t.Fatalf("index %d after the change, %d before", next, index)
	}
	entries = nil
	if err := json.Unmarshal(r.resp.Body, &entries); err != nil || len(entries) != 2 {
		t.Fatalf("health of x after the change: %d entries, %v: %s", len(entries), err, r.resp.Body)
	}
	if got := r.resp.Header.Get("Content-Type"); got != "application/json" {
		t.Fatalf("Content-Type %q", got)
	}
	if n := dials.Load(); n != 1 || m.Conns() != 1 {
		t.Fatalf("%d dials, %d connections, want 1 of each", n, m.Conns())
	}
}

// TestMuxHoldsManyBlockingQueries: 1,100 blocking queries in flight hold ceil(1100/250) = 5
// connections, dialled one at a time, and a fixed handful of goroutines; every one of them wakes
// at the change it waits for.
func TestMuxHoldsManyBlockingQueries(t *testing.T) {
	a := consultest.StartTLS(t)
	kv, index := putKey(t, a)

	before := runtime.NumGoroutine()
	var dials atomic.Int64
	m := newMux(t, httpsConfig(a, &dials))
	const queries = 1100
	wantConns := (queries + 249) / 250
	results := make(chan muxResult, queries)
	for range queries {
		m.Get(context.Background(), "/v1/kv/k", blockingQuery(index, time.Minute), 0,
			func(resp *consulclient.Response, err error) { results <- muxResult{resp, err} })
	}
	eventually.Wait(t, answerWait, fmt.Sprintf("%d connections", wantConns), func() bool { return m.Conns() == wantConns })
	if grown := runtime.NumGoroutine() - before; grown >= 50 {
		buf := make([]byte, 4<<20)
		t.Fatalf("%d blocking queries in flight added %d goroutines:\n%s", queries, grown, buf[:runtime.Stack(buf, true)])
	} else {
		t.Logf("%d blocking queries in flight on %d connections: %d goroutines more", queries, m.Conns(), grown)
	}
	select {
	case r := <-results:
		t.Fatalf("a blocking query answered before the change: %+v", r)
	default:
	}

	if _, err := kv.Put(&api.KVPair{Key: "k", Value: []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	for range queries {
		r := await(t, results)
		if r.err != nil || r.resp.Status != http.StatusOK {
			t.Fatalf("a blocking query: %+v", r)
		}
		var pairs []api.KVPair
		if err := json.Unmarshal(r.resp.Body, &pairs); err != nil || len(pairs) != 1 || string(pairs[0].Value) != "1" {
			t.Fatalf("a blocking query woke with %s (%v)", r.resp.Body, err)
		}
	}
	if n := dials.Load(); n != int64(wantConns) {
		t.Fatalf("%d blocking queries dialled %d connections, want %d", queries, n, wantConns)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if s := muxStacks(); s != "" {
		t.Fatalf("goroutines of the Mux outlived Close:\n%s", s)
	}
	waitGoroutines(t, before)
}

// TestMuxLargeAnswer: an answer of several MB, larger than a stream's flow-control window, arrives
// whole.
func TestMuxLargeAnswer(t *testing.T) {
	a := consultest.StartTLS(t)
	kv := plainClient(t, a, "").KV()
	const keys, size = 24, 400 << 10 // under Consul's kv_max_value_size of 512 KiB
	for i := range keys {
		value := []byte(strings.Repeat(strconv.Itoa(i%10), size))
		if _, err := kv.Put(&api.KVPair{Key: fmt.Sprintf("big/%02d", i), Value: value}, nil); err != nil {
			t.Fatal(err)
		}
	}
	m := newMux(t, httpsConfig(a, new(atomic.Int64)))
	for range 2 { // and the connection is sound after it
		resp := getOK(t, m, "/v1/kv/big", url.Values{"recurse": {""}})
		var pairs []api.KVPair
		if err := json.Unmarshal(resp.Body, &pairs); err != nil {
			t.Fatalf("an answer of %d bytes: %v", len(resp.Body), err)
		}
		if len(pairs) != keys {
			t.Fatalf("%d keys, want %d", len(pairs), keys)
		}
		for i, p := range pairs {
			if len(p.Value) != size || p.Value[0] != byte('0'+i%10) {
				t.Fatalf("key %s: %d bytes", p.Key, len(p.Value))
			}
		}
		t.Logf("an answer of %.1f MB", float64(len(resp.Body))/(1<<20))
	}
}

// TestMuxAppliesTheToken: the configuration's token goes with every request, from the
// configuration or its token file; a token without the rights a request needs gets the agent's
// 403 as a response, and the configuration's datacenter is asked for unless the request names one.
func TestMuxAppliesTheToken(t *testing.T) {
	a := consultest.StartTLS(t, "-hcl", `acl { enabled = true
		default_policy = "allow"
		enable_token_persistence = false
		tokens { initial_management = "`+consultest.ManagementToken+`" } }`)
	acl := plainClient(t, a, consultest.ManagementToken).ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: "no-kv", Rules: `key_prefix "" { policy = "deny" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := acl.TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	anonymous := newMux(t, httpsConfig(a, new(atomic.Int64)))
	if r := await(t, getAsync(anonymous, context.Background(), "/v1/kv/k", nil, 0)); r.err != nil || r.resp.Status != http.StatusNotFound {
		t.Fatalf("a missing key without a token: %+v, want a 404", r)
	}

	withToken := httpsConfig(a, new(atomic.Int64))
	withToken.Token = token.SecretID
	fromFile := httpsConfig(a, new(atomic.Int64))
	fromFile.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(fromFile.TokenFile, []byte(token.SecretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*api.Config{"Token": withToken, "TokenFile": fromFile} {
		m := newMux(t, cfg)
		r := await(t, getAsync(m, context.Background(), "/v1/kv/k", nil, 0))
		if r.err != nil || r.resp.Status != http.StatusForbidden {
			t.Fatalf("%s: a key the token may not read: %+v, want a 403", name, r)
		}
		if !strings.Contains(string(r.resp.Body), "Permission denied") {
			t.Fatalf("%s: the 403's body: %s", name, r.resp.Body)
		}
	}

	elsewhere := httpsConfig(a, new(atomic.Int64))
	elsewhere.Datacenter = "elsewhere"
	m := newMux(t, elsewhere)
	if r := await(t, getAsync(m, context.Background(), "/v1/kv/k", nil, 0)); r.err != nil || r.resp.Status != http.StatusInternalServerError ||
		!strings.Contains(string(r.resp.Body), "No path to datacenter") {
		t.Fatalf("a request for the configuration's unknown datacenter: %+v", r)
	}
	if r := await(t, getAsync(m, context.Background(), "/v1/kv/k", url.Values{"dc": {"dc1"}}, 0)); r.err != nil || r.resp.Status != http.StatusNotFound {
		t.Fatalf("a request that names its datacenter: %+v, want a 404", r)
	}
}

// TestMuxCloseWithRequestsInFlight: Close fails every request in flight, calls every callback
// before it returns, and leaves no goroutine; a request after Close fails at once.
func TestMuxCloseWithRequestsInFlight(t *testing.T) {
	a := consultest.StartTLS(t)
	_, index := putKey(t, a)

	before := runtime.NumGoroutine()
	m, err := consulclient.NewMux(httpsConfig(a, new(atomic.Int64)))
	if err != nil {
		t.Fatal(err)
	}
	const queries = 300
	var called, closedErrs atomic.Int64
	for i := range queries {
		timeout := time.Duration(0)
		if i%2 == 0 {
			timeout = time.Hour // a timer to stop
		}
		m.Get(context.Background(), "/v1/kv/k", blockingQuery(index, time.Minute), timeout, func(resp *consulclient.Response, err error) {
			if errors.Is(err, consulclient.ErrMuxClosed) {
				closedErrs.Add(1)
			}
			called.Add(1)
		})
	}
	eventually.Wait(t, answerWait, "2 connections", func() bool { return m.Conns() == 2 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if n := called.Load(); n != queries {
		t.Fatalf("%d of %d callbacks ran before Close returned", n, queries)
	}
	if n := closedErrs.Load(); n != queries {
		t.Fatalf("%d of %d requests failed with ErrMuxClosed", n, queries)
	}
	if m.Conns() != 0 {
		t.Fatalf("%d connections after Close", m.Conns())
	}
	if s := muxStacks(); s != "" {
		t.Fatalf("goroutines of the Mux outlived Close:\n%s", s)
	}
	waitGoroutines(t, before)

	r := await(t, getAsync(m, context.Background(), "/v1/kv/k", nil, 0))
	if !errors.Is(r.err, consulclient.ErrMuxClosed) {
		t.Fatalf("a request after Close: %+v, want ErrMuxClosed", r)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestMuxContextAndTimeout: a request ends with its context's error when the context ends, with
// ErrTimeout when its timeout passes, and the streams they held serve the next requests.
func TestMuxContextAndTimeout(t *testing.T) {
	a := consultest.StartTLS(t)
	m := newMux(t, httpsConfig(a, new(atomic.Int64)))
	index := consulIndex(t, getOK(t, m, "/v1/kv/", url.Values{"recurse": {""}, "keys": {""}}))
	blocked := blockingQuery(index, 5*time.Minute)

	ctx, cancel := context.WithCancel(context.Background())
	cancelled := getAsync(m, ctx, "/v1/kv/k", blocked, 0)
	cancel()
	r := await(t, cancelled)
	var reqErr *consulclient.RequestError
	if !errors.Is(r.err, context.Canceled) || !errors.As(r.err, &reqErr) || reqErr.Path != "/v1/kv/k" {
		t.Fatalf("a cancelled request: %+v, want a RequestError for context.Canceled", r)
	}

	r = await(t, getAsync(m, context.Background(), "/v1/kv/k", blocked, 200*time.Millisecond))
	if !errors.Is(r.err, consulclient.ErrTimeout) {
		t.Fatalf("a request past its timeout: %+v, want ErrTimeout", r)
	}

	deadline, cancelDeadline := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelDeadline()
	r = await(t, getAsync(m, deadline, "/v1/kv/k", blocked, 0))
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("a request past its context's deadline: %+v, want context.DeadlineExceeded", r)
	}

	r = await(t, getAsync(m, ctx, "/v1/kv/k", nil, 0)) // ended before the request
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a request with an ended context: %+v, want context.Canceled", r)
	}
	r = await(t, getAsync(m, context.Background(), "v1/kv/k", nil, 0))
	if r.err == nil {
		t.Fatal("a path without its leading / was sent")
	}
	getOK(t, m, "/v1/status/leader", nil)
	if m.Conns() != 1 {
		t.Fatalf("%d connections, want 1", m.Conns())
	}
}

// TestNewMuxRefusesPlainHTTP: a configuration of an agent's plain HTTP port gets ErrNotHTTPS (Consul
// speaks HTTP/2 only over TLS); one that asks for TLS on a port that does not speak it fails its
// requests with the dial's error.
func TestNewMuxRefusesPlainHTTP(t *testing.T) {
	a := consultest.Start(t)
	if _, err := consulclient.NewMux(consulclient.Config(a.HTTPAddr)); !errors.Is(err, consulclient.ErrNotHTTPS) {
		t.Fatalf("NewMux of %s: %v, want ErrNotHTTPS", a.HTTPAddr, err)
	}
	if _, err := consulclient.NewMux(consulclient.Config("unix:///tmp/consul.sock")); !errors.Is(err, consulclient.ErrNotHTTPS) {
		t.Fatalf("NewMux of a unix socket: %v, want ErrNotHTTPS", err)
	}
	m := newMux(t, consulclient.Config("https://"+a.HTTPAddr))
	r := await(t, getAsync(m, context.Background(), "/v1/status/leader", nil, 0))
	var reqErr *consulclient.RequestError
	if r.err == nil || !errors.As(r.err, &reqErr) {
		t.Fatalf("a request over TLS to a plain HTTP port: %+v, want a RequestError", r)
	}
	t.Logf("over TLS to a plain HTTP port: %v", r.err)
}

// TestMuxRefusedIsAConnLimit: an agent that already holds limits.http_max_conns_per_client
// connections from this address refuses a new one with 429; the requests that waited for it fail
// with an error for which IsConnLimit reports true.
func TestMuxRefusedIsAConnLimit(t *testing.T) {
	expectConnLimit(t, func(a *consultest.Agent) error {
		m, err := consulclient.NewMux(httpsConfig(a, new(atomic.Int64)))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		return await(t, getAsync(m, context.Background(), "/v1/status/leader", nil, 0)).err
	})
}

// TestMuxAgentRestart: a blocking query in flight ends when its agent stops (with an error, or the
// answer of an agent that ends its blocking queries as it leaves); the requests made while it is
// away fail, and the first ones after it is back open a new connection.
func TestMuxAgentRestart(t *testing.T) {
	a := consultest.StartTLS(t)
	m := newMux(t, httpsConfig(a, new(atomic.Int64)))
	index := consulIndex(t, getOK(t, m, "/v1/kv/", url.Values{"recurse": {""}, "keys": {""}}))
	blocked := getAsync(m, context.Background(), "/v1/kv/k", blockingQuery(index+1000, 5*time.Minute), 0)
	a.Stop()
	if r := await(t, blocked); r.err != nil {
		t.Logf("the blocking query in flight as the agent stopped: %v", r.err)
	}
	if r := await(t, getAsync(m, context.Background(), "/v1/status/leader", nil, 0)); r.err == nil {
		t.Fatalf("a request got an answer while the agent is down: %d", r.resp.Status)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually.Wait(t, answerWait, "an answer from the restarted agent", func() bool {
		r := await(t, getAsync(m, context.Background(), "/v1/status/leader", nil, 0))
		return r.err == nil && r.resp.Status == http.StatusOK
	})
	if n := m.Conns(); n != 1 {
		t.Fatalf("%d connections after the restart, want 1", n)
	}
}

// h2Server starts an HTTPS test server that speaks HTTP/2 with at most maxStreams streams per
// connection (0: the default), and returns a configuration of a client of it whose dials are
// counted. It stands in for Consul where the test needs what an agent cannot be made to do.
func h2Server(t *testing.T, maxStreams int, h http.Handler, dials *atomic.Int64) *api.Config {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: maxStreams}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return httpsConfigFor(srv, dials)
}

// TestMuxSendsTheConfiguration: every request carries what api.Client would send for the
// configuration: its token, its basic auth, its path prefix and its query parameters unless the
// request sets them; the answer's headers have canonical keys.
func TestMuxSendsTheConfiguration(t *testing.T) {
	type seen struct {
		proto, path, token, user, pass string
		query                          url.Values
	}
	requests := make(chan seen, 1)
	cfg := h2Server(t, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		requests <- seen{r.Proto, r.URL.Path, r.Header.Get("X-Consul-Token"), user, pass, r.URL.Query()}
		w.Header().Set("X-Consul-Index", "42")
		w.Header().Add("X-Custom", "a")
		w.Header().Add("X-Custom", "b")
		fmt.Fprint(w, "answer")
	}), new(atomic.Int64))
	cfg.Address = "https://" + cfg.Address + "/consul"
	cfg.Scheme = "http" // an https:// address wins, as with api.NewClient
	cfg.Token = "s3cret"
	cfg.HttpAuth = &api.HttpBasicAuth{Username: "user", Password: "pass"}
	cfg.Datacenter, cfg.Namespace, cfg.Partition = "dc9", "team", "part"
	m := newMux(t, cfg)

	query := url.Values{"dc": {"dc2"}, "filter": {`Service == "a b"`}}
	resp := getOK(t, m, "/v1/health/service/a", query)
	got := <-requests
	want := url.Values{"dc": {"dc2"}, "ns": {"team"}, "partition": {"part"}, "filter": {`Service == "a b"`}}
	if got.proto != "HTTP/2.0" || got.path != "/consul/v1/health/service/a" || got.token != "s3cret" ||
		got.user != "user" || got.pass != "pass" || got.query.Encode() != want.Encode() {
		t.Fatalf("the server saw %+v", got)
	}
	if len(query) != 2 {
		t.Fatalf("Get changed its caller's query: %v", query)
	}
	if string(resp.Body) != "answer" || resp.Header.Get("X-Consul-Index") != "42" ||
		strings.Join(resp.Header["X-Custom"], ",") != "a,b" {
		t.Fatalf("the answer: %+v", resp)
	}

	// A request whose header block is larger than a frame goes in HEADERS and CONTINUATION frames.
	long := url.Values{"filter": {strings.Repeat("Service.Meta.k == v and ", 2000)}}
	getOK(t, m, "/v1/health/service/a", long)
	if got := <-requests; got.query.Get("filter") != long.Get("filter") {
		t.Fatalf("a %d-byte filter arrived as %d bytes", len(long.Get("filter")), len(got.query.Get("filter")))
	}
}

// TestMuxQueuesBeyondItsConnections: with MuxMaxConns connections full, requests wait in line and
// take the streams that end, oldest first, instead of dialling more.
func TestMuxQueuesBeyondItsConnections(t *testing.T) {
	arrived := make(chan int, 100)
	release := make(chan struct{})
	var dials atomic.Int64
	cfg := h2Server(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(r.URL.Query().Get("i"))
		arrived <- i
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), &dials)
	m := newMux(t, cfg)
	const beyond = 5
	total := consulclient.MuxMaxConns + beyond
	results := make(chan muxResult, total)
	for i := range total {
		m.Get(context.Background(), "/wait", url.Values{"i": {strconv.Itoa(i)}}, 0,
			func(resp *consulclient.Response, err error) { results <- muxResult{resp, err} })
	}
	started := map[int]bool{}
	for range consulclient.MuxMaxConns {
		select {
		case i := <-arrived:
			started[i] = true
		case <-time.After(answerWait):
			t.Fatalf("%d of %d requests reached the server", len(started), consulclient.MuxMaxConns)
		}
	}
	for i := range consulclient.MuxMaxConns {
		if !started[i] {
			t.Fatalf("request %d was not among the first to start: %v", i, started)
		}
	}
	for next := consulclient.MuxMaxConns; next < total; next++ {
		release <- struct{}{} // one stream ends: the oldest waiting request takes it
		select {
		case i := <-arrived:
			if i != next {
				t.Fatalf("request %d took the free stream, want %d", i, next)
			}
		case <-time.After(answerWait):
			t.Fatalf("no waiting request took the stream that ended")
		}
		if r := await(t, results); r.err != nil || r.resp.Status != http.StatusOK {
			t.Fatalf("a released request: %+v", r)
		}
	}
	close(release)
	for range consulclient.MuxMaxConns {
		if r := await(t, results); r.err != nil || r.resp.Status != http.StatusOK {
			t.Fatalf("a released request: %+v", r)
		}
	}
	if n := dials.Load(); n != consulclient.MuxMaxConns {
		t.Fatalf("%d dials, want %d", n, consulclient.MuxMaxConns)
	}
}

// TestMuxStreamReset: a stream the server resets fails its request with a StreamResetError, and the
// connection serves the next request.
func TestMuxStreamReset(t *testing.T) {
	cfg := h2Server(t, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler) // RST_STREAM
		}
		fmt.Fprint(w, "ok")
	}), new(atomic.Int64))
	m := newMux(t, cfg)
	r := await(t, getAsync(m, context.Background(), "/abort", nil, 0))
	var reset *consulclient.StreamResetError
	if !errors.As(r.err, &reset) || errors.Is(r.err, consulclient.ErrUnprocessed) {
		t.Fatalf("a reset stream: %+v, want a StreamResetError", r)
	}
	if resp := getOK(t, m, "/ok", nil); string(resp.Body) != "ok" || m.Conns() != 1 {
		t.Fatalf("after a reset: %q on %d connections", resp.Body, m.Conns())
	}
}

// TestMuxNotHTTP2: an HTTPS server that does not negotiate HTTP/2 fails the requests with
// ErrNotHTTP2, for the caller to fall back to net/http, and is not dialled again.
func TestMuxNotHTTP2(t *testing.T) {
	var dials atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.StartTLS() // HTTP/1.1 only
	t.Cleanup(srv.Close)
	cfg := httpsConfigFor(srv, &dials)
	m := newMux(t, cfg)
	for range 2 {
		if r := await(t, getAsync(m, context.Background(), "/v1/status/leader", nil, 0)); !errors.Is(r.err, consulclient.ErrNotHTTP2) {
			t.Fatalf("a request to an HTTP/1.1 server: %+v, want ErrNotHTTP2", r)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
}

// TestMuxClosesIdleConnections: a connection that carried no stream for the transport's
// IdleConnTimeout is closed; the others stay.
func TestMuxClosesIdleConnections(t *testing.T) {
	releaseA, releaseB := make(chan struct{}), make(chan struct{})
	arrived := make(chan string, 2)
	cfg := h2Server(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		release := releaseA
		if r.URL.Path == "/b" {
			release = releaseB
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), new(atomic.Int64))
	cfg.Transport.IdleConnTimeout = 100 * time.Millisecond
	m := newMux(t, cfg)
	a := getAsync(m, context.Background(), "/a", nil, 0)
	b := getAsync(m, context.Background(), "/b", nil, 0) // a second connection: one stream each
	for range 2 {
		select {
		case <-arrived:
		case <-time.After(answerWait):
			t.Fatal("the requests did not reach the server")
		}
	}
	if m.Conns() != 2 {
		t.Fatalf("%d connections, want 2", m.Conns())
	}
	close(releaseB)
	if r := await(t, b); r.err != nil {
		t.Fatal(r.err)
	}
	time.Sleep(300 * time.Millisecond) // b's connection idles past the timeout
	close(releaseA)                    // a stream that ends looks for idle connections
	if r := await(t, a); r.err != nil {
		t.Fatal(r.err)
	}
	eventually.Wait(t, answerWait, "the idle connection closed", func() bool { return m.Conns() == 1 })
	getOK(t, m, "/c", nil)
}

// scriptedServer starts an HTTPS server that negotiates HTTP/2 and hands its connection, once it
// has sent its SETTINGS and read the client's preface, to script, which plays the server's side
// frame by frame. It stands in for an agent where a test needs frames an HTTP/2 server sends only
// on its own terms (GOAWAY past a stream, CONTINUATION, padding, REFUSED_STREAM). The script's
// result arrives on the channel returned, once it has ended.
func scriptedServer(t *testing.T, script func(fr *http2.Framer) error) (*api.Config, <-chan error) {
	t.Helper()
	done := make(chan error, 1)
	srv := httptest.NewUnstartedServer(nil)
	srv.TLS = &tls.Config{NextProtos: []string{http2.NextProtoTLS}}
	srv.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		http2.NextProtoTLS: func(_ *http.Server, conn *tls.Conn, _ http.Handler) {
			defer conn.Close()
			done <- func() error {
				fr := http2.NewFramer(conn, conn)
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				// A server speaks first, as Consul does: the client reads its SETTINGS before
				// it sends its preface.
				if err := fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100}); err != nil {
					return err
				}
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(conn, preface); err != nil || string(preface) != http2.ClientPreface {
					return fmt.Errorf("the client's preface: %q, %v", preface, err)
				}
				return script(fr)
			}()
		},
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return httpsConfigFor(srv, new(atomic.Int64)), done
}

// awaitScript fails the test if the scripted server's script failed or did not end.
func awaitScript(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the scripted server: %v", err)
		}
	case <-time.After(answerWait):
		t.Fatal("the scripted server's script did not end")
	}
}

// readRequests reads frames until n requests (HEADERS) arrived, acknowledging SETTINGS, and
// returns their stream ids and paths.
func readRequests(fr *http2.Framer, n int) (ids []uint32, paths []string, err error) {
	for len(ids) < n {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					return nil, nil, err
				}
			}
		case *http2.MetaHeadersFrame:
			if !f.StreamEnded() {
				return nil, nil, fmt.Errorf("a GET on stream %d does not end its stream", f.StreamID)
			}
			ids = append(ids, f.StreamID)
			paths = append(paths, f.PseudoValue("path"))
		}
	}
	return ids, paths, nil
}

// writeResponse answers stream id with status and body: its headers split across HEADERS and
// CONTINUATION, its body in padded DATA frames of at most 3 bytes.
func writeResponse(fr *http2.Framer, id uint32, status int, body string) error {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	enc.WriteField(hpack.HeaderField{Name: "x-consul-index", Value: "7"})
	enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	b := block.Bytes()
	half := len(b) / 2
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:half]}); err != nil {
		return err
	}
	if err := fr.WriteContinuation(id, true, b[half:]); err != nil {
		return err
	}
	for len(body) > 0 {
		chunk := body[:min(3, len(body))]
		body = body[len(chunk):]
		if err := fr.WriteDataPadded(id, body == "", []byte(chunk), make([]byte, 5)); err != nil {
			return err
		}
	}
	return nil
}

// TestMuxGoAwayPastAStream: GOAWAY fails the requests on streams past its last one with
// ErrUnprocessed and lets the others finish; a PING is answered; an answer in HEADERS and
// CONTINUATION frames and padded DATA arrives whole.
func TestMuxGoAwayPastAStream(t *testing.T) {
	pinged := make(chan error, 1)
	cfg, done := scriptedServer(t, func(fr *http2.Framer) error {
		ids, _, err := readRequests(fr, 2)
		if err != nil {
			return err
		}
		data := [8]byte{'g', 'r', 'a', 'y', 'l', 'a', 'n', 'e'}
		if err := fr.WritePing(false, data); err != nil {
			return err
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return err
			}
			if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
				if p.Data != data {
					pinged <- fmt.Errorf("the PING's answer carries %q", p.Data)
				}
				close(pinged)
				break
			}
		}
		if err := fr.WriteGoAway(ids[0], http2.ErrCodeNo, nil); err != nil {
			return err
		}
		if err := writeResponse(fr, ids[0], http.StatusOK, "the first answer"); err != nil {
			return err
		}
		// The client says goodbye and hangs up once the last stream ended.
		var goAway bool
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				if !errors.Is(err, io.EOF) || !goAway {
					return fmt.Errorf("after the last stream: %v (GOAWAY: %v), want the client to send GOAWAY and close", err, goAway)
				}
				return nil
			}
			_, ok := f.(*http2.GoAwayFrame)
			goAway = goAway || ok
		}
	})
	m := newMux(t, cfg)
	first := getAsync(m, context.Background(), "/v1/first", nil, 0)
	second := getAsync(m, context.Background(), "/v1/second", nil, 0)
	if r := await(t, second); !errors.Is(r.err, consulclient.ErrUnprocessed) {
		t.Fatalf("the request past GOAWAY's last stream: %+v, want ErrUnprocessed", r)
	}
	r := await(t, first)
	if r.err != nil || r.resp.Status != http.StatusOK || string(r.resp.Body) != "the first answer" || r.resp.Header.Get("X-Consul-Index") != "7" {
		t.Fatalf("the request below GOAWAY's last stream: %+v", r)
	}
	if err := <-pinged; err != nil {
		t.Fatal(err)
	}
	awaitScript(t, done) // it saw the client close the connection once its last stream ended
	eventually.Wait(t, answerWait, "the connection that went away dropped", func() bool { return m.Conns() == 0 })
}

// TestMuxSendsARefusedRequestAgain: a request the server refuses (REFUSED_STREAM) before any answer
// is sent again once, on a new stream.
func TestMuxSendsARefusedRequestAgain(t *testing.T) {
	cfg, done := scriptedServer(t, func(fr *http2.Framer) error {
		ids, paths, err := readRequests(fr, 1)
		if err != nil {
			return err
		}
		if err := fr.WriteRSTStream(ids[0], http2.ErrCodeRefusedStream); err != nil {
			return err
		}
		again, pathsAgain, err := readRequests(fr, 1)
		if err != nil {
			return err
		}
		if again[0] <= ids[0] || pathsAgain[0] != paths[0] {
			return fmt.Errorf("sent again as %s on stream %d, after %s on stream %d", pathsAgain[0], again[0], paths[0], ids[0])
		}
		if err := writeResponse(fr, again[0], http.StatusOK, "ok"); err != nil {
			return err
		}
		ids, _, err = readRequests(fr, 1) // refused twice: the client gives up
		if err != nil {
			return err
		}
		if err := fr.WriteRSTStream(ids[0], http2.ErrCodeRefusedStream); err != nil {
			return err
		}
		ids, _, err = readRequests(fr, 1)
		if err != nil {
			return err
		}
		if err := fr.WriteRSTStream(ids[0], http2.ErrCodeRefusedStream); err != nil {
			return err
		}
		return nil
	})
	m := newMux(t, cfg)
	if r := await(t, getAsync(m, context.Background(), "/v1/kv/k", url.Values{"index": {"3"}}, 0)); r.err != nil || string(r.resp.Body) != "ok" {
		t.Fatalf("a refused request: %+v, want the answer to it sent again", r)
	}
	r := await(t, getAsync(m, context.Background(), "/v1/kv/k", nil, 0))
	var reset *consulclient.StreamResetError
	if !errors.As(r.err, &reset) || reset.Code != http2.ErrCodeRefusedStream || !errors.Is(r.err, consulclient.ErrUnprocessed) {
		t.Fatalf("a request refused twice: %+v, want a StreamResetError that is ErrUnprocessed", r)
	}
	awaitScript(t, done)
}

// httpsConfigFor is the configuration of a client of a test HTTPS server, whose dials are counted.
func httpsConfigFor(srv *httptest.Server, dials *atomic.Int64) *api.Config {
	cfg := consulclient.Config(srv.Listener.Addr().String())
	cfg.Scheme = "https"
	cfg.Transport.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	dial := cfg.Transport.DialContext
	cfg.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	return cfg
}

// BenchmarkBlockingQueriesInFlight holds 2,000 blocking queries on one agent, through a Mux and
// through a Pooled api.Client, and reports what each query in flight costs: goroutines, heap and
// goroutine stacks.
func BenchmarkBlockingQueriesInFlight(b *testing.B) {
	const queries = 2000
	a := consultest.StartTLS(b)
	kv := plainClient(b, a, "").KV()
	if _, err := kv.Put(&api.KVPair{Key: "k", Value: []byte("0")}, nil); err != nil {
		b.Fatal(err)
	}

	var rounds atomic.Int64
	// measure holds the queries start sends, calls report with what they cost once they are all
	// in flight, then wakes them and waits for them to end.
	measure := func(b *testing.B, start func(index uint64, done func()), inFlight func() bool) {
		for range b.N {
			_, meta, err := kv.Get("k", nil)
			if err != nil {
				b.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(queries)
			before := memory()
			start(meta.LastIndex, wg.Done)
			eventually.Wait(b, answerWait, "every query in flight", inFlight)
			during := memory()
			b.ReportMetric(float64(during.goroutines-before.goroutines)/queries, "goroutines/query")
			b.ReportMetric(float64(during.heap-before.heap)/queries, "heap-B/query")
			b.ReportMetric(float64(during.stack-before.stack)/queries, "stack-B/query")
			// A new value: a put that changes nothing does not move the key's index.
			if _, err := kv.Put(&api.KVPair{Key: "k", Value: []byte(strconv.FormatInt(rounds.Add(1), 10))}, nil); err != nil {
				b.Fatal(err)
			}
			wg.Wait()
		}
	}

	b.Run("Mux", func(b *testing.B) {
		m := newMux(b, httpsConfig(a, new(atomic.Int64)))
		var failed atomic.Int64
		measure(b, func(index uint64, done func()) {
			for range queries {
				m.Get(context.Background(), "/v1/kv/k", blockingQuery(index, 5*time.Minute), 0, func(resp *consulclient.Response, err error) {
					if err != nil || resp.Status != http.StatusOK {
						failed.Add(1)
					}
					done()
				})
			}
		}, func() bool { return m.Conns() == queries/250 })
		if failed.Load() > 0 {
			b.Fatalf("%d queries failed", failed.Load())
		}
	})

	b.Run("Pooled", func(b *testing.B) {
		c, err := consulclient.NewPooled(httpsConfig(a, new(atomic.Int64)))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		var failed atomic.Int64
		var started atomic.Int64
		measure(b, func(index uint64, done func()) {
			started.Store(0)
			for range queries {
				go func() {
					defer done()
					started.Add(1)
					if _, _, err := c.Client.KV().Get("k", &api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}); err != nil {
						failed.Add(1)
					}
				}()
			}
		}, steady(func() bool { return started.Load() == queries && c.Conns() == queries/250 }))
		if failed.Load() > 0 {
			b.Fatalf("%d queries failed", failed.Load())
		}
	})
}

// steady returns a condition that holds once ready holds and the number of goroutines has not
// changed for half a second: every request has reached the transport.
func steady(ready func() bool) func() bool {
	last, since := -1, time.Now()
	return func() bool {
		if n := runtime.NumGoroutine(); n != last {
			last, since = n, time.Now()
		}
		return ready() && time.Since(since) > 500*time.Millisecond
	}
}

type memoryUse struct {
	goroutines  int
	heap, stack uint64
}

// memory returns the goroutines, the live heap and the goroutine stacks in use, after a collection.
func memory() memoryUse {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memoryUse{goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc, stack: ms.StackInuse}
}

// putKey writes the key k of a's KV store and returns a client of its KV store and the key's
// index, for blocking queries that wait for the key's next change.
func putKey(t *testing.T, a *consultest.Agent) (*api.KV, uint64) {
	t.Helper()
	kv := plainClient(t, a, "").KV()
	if _, err := kv.Put(&api.KVPair{Key: "k", Value: []byte("0")}, nil); err != nil {
		t.Fatal(err)
	}
	_, meta, err := kv.Get("k", nil)
	if err != nil {
		t.Fatal(err)
	}
	return kv, meta.LastIndex
}
