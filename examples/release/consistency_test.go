package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/registrar"
)

// The services of the consistency test: bservice with a canary on several rules and a weight and a
// green lane on others; cservice, bservice's next hop, with a canary; and edge, a Kratos service
// whose handler calls bservice through the selector.
const consistencySpecs = `
- {name: bservice, id: bservice-1, meta: {version: v1}}
- {name: bservice, id: bservice-2, meta: {version: v1}}
- name: bservice
  id: bservice-canary-1
  meta:
    version: v2
    canary: true
    weight: 20
    match:
      - header:                     # the source article's rule
          - key: "userid"
            value_match: "123"
        cookie:
            regex: "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"
        uri:
          - prefix:
              - "/api/user"
      - client_ip: [10.1.0.0/16, "2001:db8::/64"]
      - query: [{name: beta, value_match: "1"}]
      - {method: [POST], uri: [{prefix: [/api/pay]}]}
- name: bservice
  id: bservice-green-1
  meta:
    version: v3
    bluegreen: green
    match:
      - header: [{key: x-env, value_match: green}]
      - cookie: {name: lane, value_match: green}
- {name: cservice, id: cservice-1, meta: {version: v1}}
- {name: cservice, id: cservice-canary-1, meta: {version: v2, canary: true}}
- {name: edge, id: edge-1}
`

// edgePlane sends each request to the edge service over HTTP, as a client would reach it (the
// client address in X-Forwarded-For); edge's handler calls bservice with the selector option, so
// the selector decides on the original request: its headers, cookie, path, query, method and
// client address.
type edgePlane struct {
	url  string
	http *http.Client
}

func (e *edgePlane) Name() string { return "Kratos service: selector" }

func (e *edgePlane) Do(ctx context.Context, _ string, r *request) (*reply, error) {
	path := r.Path
	if r.Query != "" {
		path += "?" + r.Query
	}
	hr, err := http.NewRequestWithContext(ctx, r.Method, e.url+path, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range r.headers() {
		hr.Header.Add(h[0], h[1])
	}
	if r.IP != "" {
		hr.Header.Set("X-Forwarded-For", r.IP)
	}
	resp, err := e.http.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := new(reply)
	if err := json.Unmarshal(body, out); err != nil || resp.StatusCode != http.StatusOK || out.Next == nil {
		return nil, fmt.Errorf("edge answered %d: %s", resp.StatusCode, body)
	}
	return out.Next, nil // bservice's answer, with cservice's under it
}

// generate returns n requests from varied users, headers, cookies, paths, queries, methods and
// client addresses. Every request has a user: without a sticky key the weight draws at random.
func generate(n int) []request {
	rnd := rand.New(rand.NewPCG(9, 9))
	pick := func(s ...string) string { return s[rnd.IntN(len(s))] }
	out := make([]request, n)
	for i := range out {
		r := request{User: fmt.Sprintf("user-%d", rnd.IntN(5000)),
			Method: pick("GET", "GET", "GET", "POST", "PUT", "DELETE"),
			Path:   pick("/api/user", "/api/user/42", "/api/users", "/api/order/7", "/api/pay/1", "/", "/API/user"),
			Query:  pick("", "", "", "beta=1", "beta=0", "x=1&beta=1", "Beta=1"),
			IP:     pick("10.1.2.3", "10.2.0.1", "192.168.1.5", "203.0.113.9", "2001:db8::7", "2001:db8:1::7", ""),
		}
		if rnd.IntN(3) == 0 {
			r.Headers = append(r.Headers, [2]string{"userid", pick("123", "1234", "12", "123")})
		}
		if c := pick("", "", "email=qa@some-company-name.com", "a=1; email=qa@some-company-name.com",
			"email=qa@other.com", "lane=green", "lane=green; email=qa@some-company-name.com", "lane=blue"); c != "" {
			r.Headers = append(r.Headers, [2]string{"cookie", c})
		}
		if rnd.IntN(8) == 0 {
			r.Headers = append(r.Headers, [2]string{pick("x-env", "X-Env"), pick("green", "blue")})
		}
		out[i] = r
	}
	return out
}

// TestGatewayAndServicesDecideAlike sends the same 1,200 generated requests through the plugin
// runner's protocol path (runner, lane header, the lane's upstream) and through a Kratos service
// calling bservice with the selector, against the same Consul services, and asserts that each is
// served by the same lane of bservice in both. Then the chain: the lane the gateway chose reaches
// bservice as the lane header, and bservice's own call to cservice stays in it (cservice's canary
// for a canary request; its stable, with the tag carried on, for green, which cservice lacks).
func TestGatewayAndServicesDecideAlike(t *testing.T) {
	ctx := context.Background()
	s := &stack{dir: t.TempDir()}
	t.Cleanup(s.close)
	if err := s.build(ctx, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := s.startConsul(false); err != nil {
		t.Fatal(err)
	}
	specs, err := registrar.ParseSpecs("consistency.yaml", []byte(consistencySpecs))
	if err != nil {
		t.Fatal(err)
	}
	next := map[string]string{"bservice": "cservice", "edge": "bservice"}
	for _, sp := range specs {
		if err := s.startInstance(ctx, sp, next[sp.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.startRunner(ctx); err != nil {
		t.Fatal(err)
	}
	entries, _, err := s.client.Health().Service("edge", "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("edge: %v %v", entries, err)
	}
	gw := newGateway(s.sock, s.w)
	defer gw.close()
	edge := &edgePlane{url: entries[0].Service.TaggedAddresses["http"].Address, http: &http.Client{Timeout: 10 * time.Second}}
	defer edge.http.CloseIdleConnections()
	d := &demo{out: io.Discard, s: s, planes: []plane{gw, edge}}

	// Both planes have every instance, and bservice's canary has cservice's: a canary request lands
	// in both canaries, a green one in green.
	probe := []request{
		{User: "u", Method: "GET", Path: "/api/order", Query: "beta=1"},
		{User: "u", Method: "GET", Path: "/api/order", Headers: [][2]string{{"x-env", "green"}}},
	}
	if err := d.wait(ctx, "bservice", probe, func(m []*reply) bool {
		return m[0].Serves == "canary" && m[0].Next.Serves == "canary" && m[1].Serves == "green"
	}); err != nil {
		t.Fatal(err)
	}

	reqs := generate(1200)
	m, err := d.measure(ctx, "bservice", reqs)
	if err != nil {
		t.Fatal(err)
	}
	lanes := map[string]int{}
	for i := range reqs {
		g, k := m[0][i], m[1][i]
		lanes[g.Serves]++
		if g.Serves != k.Serves {
			t.Errorf("request %d %+v: the gateway sent it to %s, the selector to %s", i, reqs[i], g, k)
		}
		for _, r := range []*reply{g, k} {
			// The chain: the lane reaches bservice as the header (or none for the base), and
			// bservice's call to cservice carries it on.
			wantHeader, wantNext := r.Serves, "stable"
			switch r.Serves {
			case "stable":
				wantHeader = ""
			case "canary":
				wantNext = "canary"
			}
			if r.Lane != wantHeader || r.Next == nil || r.Next.Serves != wantNext || r.Next.Lane != wantHeader {
				t.Errorf("request %d %+v: chain %s with lane headers %q then %q", i, reqs[i], r, r.Lane, r.Next.Lane)
			}
		}
		if t.Failed() && i > 20 {
			t.FailNow()
		}
	}
	t.Logf("%d requests, lanes %v", len(reqs), lanes)
	for _, l := range []string{"stable", "canary", "green"} {
		if lanes[l] < 100 {
			t.Errorf("only %d requests in %s: the generator does not cover it (%v)", lanes[l], l, lanes)
		}
	}
	var s1 []string
	for i := range reqs {
		if m[0][i].Serves == "canary" && strings.HasPrefix(reqs[i].IP, "10.1.") && reqs[i].Query == "" {
			s1 = append(s1, reqs[i].User)
		}
	}
	if len(s1) == 0 {
		t.Error("no request went to the canary by its client address alone")
	}
}
