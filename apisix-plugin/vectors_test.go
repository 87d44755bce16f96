package main

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	A6 "github.com/api7/ext-plugin-proto/go/A6"

	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/apisixtest"
	"github.com/graylane/graylane/internal/vectors"
	"github.com/graylane/graylane/watch"
)

// vectorRunnerEnv makes the test binary run as the runner, with the plugin's snapshots built from
// the shared vectors instead of Consul: conf service "vector-N" is case N's instance set. The
// runner, the plugin and the protocol are the real ones; only the snapshot source differs, and
// TestRunnerAgainstConsul covers the Consul source.
const vectorRunnerEnv = "GRAYLANE_TEST_VECTOR_RUNNER"

func runVectorRunner() int {
	cases, err := vectors.Load()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	return run([]string{"run"}, extplugin.WithSource(func() (extplugin.Source, error) {
		return vectorSource(cases), nil
	}))
}

type vectorSource []vectors.Case

func (s vectorSource) View(service string, override gray.Options) extplugin.View {
	n, err := strconv.Atoi(strings.TrimPrefix(service, "vector-"))
	if err != nil || n < 0 || n >= len(s) {
		return staticView{gray.NewSnapshot[watch.Endpoint](service, nil, override)}
	}
	c := s[n]
	var insts []gray.Instance[watch.Endpoint]
	for _, in := range c.GrayInstances() {
		insts = append(insts, gray.Instance[watch.Endpoint]{ID: in.ID, Meta: in.Meta, Value: watch.Endpoint{ID: in.ID}})
	}
	return staticView{gray.NewSnapshot(c.Service, insts, c.Options.Override(override))}
}

func (vectorSource) Close() error { return nil }

type staticView struct {
	snap *gray.Snapshot[watch.Endpoint]
}

func (v staticView) Snapshot() *gray.Snapshot[watch.Endpoint] { return v.snap }
func (v staticView) Changed() <-chan struct{}                 { return nil }
func (staticView) Ready() <-chan struct{}                     { return answered }

// answered is a closed channel: a static view has its answer from the start.
var answered = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

var methods = map[string]A6.Method{"": A6.MethodGET}

func init() {
	for m, name := range A6.EnumNamesMethod {
		methods[name] = m
	}
}

// TestVectorsThroughTheProtocol runs every shared vector through the runner: the lane header the
// plugin sets (gray lanes) or leaves out (base and fallback), and the lane it echoes.
func TestVectorsThroughTheProtocol(t *testing.T) {
	cases, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "runner.sock")
	r := apisixtest.StartRunner(t, sock, []string{testBinary(t), "run"}, vectorRunnerEnv+"=1")
	c := apisixtest.Dial(t, sock)
	for i, tc := range cases {
		conf := fmt.Sprintf(`{"service":"vector-%d","trusted_cidrs":["0.0.0.0/0","::/0"],"echo_header":"x-gray-lane"}`, i)
		token, err := c.PrepareConf(fmt.Sprintf("case-%d", i), [2]string{"graylane", conf})
		if err != nil {
			t.Fatalf("%s: prepare conf: %v", tc.Name, err)
		}
		req := &apisixtest.Request{Token: token, ID: uint32(i), Path: tc.Request.Path, Args: parseQuery(tc.Request.Query)}
		m, ok := methods[tc.Request.Method]
		if !ok {
			t.Fatalf("%s: method %q has no protocol code", tc.Name, tc.Request.Method)
		}
		req.Method = m
		// APISIX always reports the client's address; a case without one gets the unspecified
		// address, which no client_ip rule in the vectors names, so that its lane tag is trusted.
		req.IP = netip.IPv4Unspecified()
		if tc.Request.IP != "" {
			req.IP = netip.MustParseAddr(tc.Request.IP)
		}
		for k, v := range tc.Request.Headers {
			req.Headers = append(req.Headers, [2]string{k, v})
		}
		rw, err := c.Call(req)
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.Name, err, r.Output())
		}
		tag := tc.Options.TagKey
		if tag == "" {
			tag = gray.DefaultTagKey
		}
		got := rw.Final(req, tag)
		want := ""
		if tc.Want.Reason == "tag" || tc.Want.Reason == "match" || tc.Want.Reason == "weight" {
			want = tc.Want.Lane
		}
		if got != want {
			t.Errorf("%s: lane header %q, want %q", tc.Name, got, want)
		}
		if echo := rw.RespHeaders["X-Gray-Lane"]; echo != tc.Want.Lane {
			t.Errorf("%s: echoed lane %q, want %q", tc.Name, echo, tc.Want.Lane)
		}
	}
}

// parseQuery splits a raw query as APISIX hands arguments to the runner: decoded.
func parseQuery(raw string) [][2]string {
	var out [][2]string
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		if u, err := url.QueryUnescape(k); err == nil {
			k = u
		}
		if u, err := url.QueryUnescape(v); err == nil {
			v = u
		}
		out = append(out, [2]string{k, v})
	}
	return out
}

// testBinary is this test binary, which runs as the runner under vectorRunnerEnv.
func testBinary(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}
