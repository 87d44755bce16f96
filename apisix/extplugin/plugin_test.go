package extplugin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// fakeRequest stands in for the runner's request, which only the runner can build, so that the
// plugin's own work can be measured alone. The protocol tests in apisix-plugin/ run the real one.
type fakeRequest struct {
	hdr     fakeHeader
	path    []byte
	args    url.Values
	ip      net.IP
	respHdr http.Header
}

type fakeHeader struct{ http.Header }

func (h fakeHeader) View() http.Header { return h.Header }

func (r *fakeRequest) ID() uint32                 { return 1 }
func (r *fakeRequest) SrcIP() net.IP              { return r.ip }
func (r *fakeRequest) Method() string             { return "GET" }
func (r *fakeRequest) Path() []byte               { return r.path }
func (r *fakeRequest) SetPath(p []byte)           { r.path = p }
func (r *fakeRequest) Header() pkgHTTP.Header     { return r.hdr }
func (r *fakeRequest) Args() url.Values           { return r.args }
func (r *fakeRequest) Var(string) ([]byte, error) { return nil, errors.New("no Var calls expected") }
func (r *fakeRequest) Body() ([]byte, error)      { return nil, errors.New("no Body calls expected") }
func (r *fakeRequest) Context() context.Context   { return context.Background() }
func (r *fakeRequest) RespHeader() http.Header    { return r.respHdr }

type staticSource map[string]*gray.Snapshot[watch.Endpoint]

func (s staticSource) View(service string, _ gray.Options) View { return staticView{s[service]} }
func (staticSource) Close() error                               { return nil }

type staticView struct {
	snap *gray.Snapshot[watch.Endpoint]
}

func (v staticView) Snapshot() *gray.Snapshot[watch.Endpoint] { return v.snap }
func (staticView) Changed() <-chan struct{}                   { return nil }
func (staticView) Ready() <-chan struct{}                     { return answered }

// answered is a closed channel: a static view has its answer from the start.
var answered = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func testPlugin(t testing.TB, conf string) (*Plugin, any) {
	t.Helper()
	insts := []gray.Instance[watch.Endpoint]{
		{ID: "s1", Meta: map[string]string{}, Value: watch.Endpoint{ID: "s1"}},
		{ID: "c1", Meta: map[string]string{"canary": "true", "weight": "10",
			"match": `[{"header":[{"key":"userid","value_match":"123"}],"uri":[{"prefix":["/api/user"]}]},{"query":[{"name":"beta","value_match":"1"}]}]`},
			Value: watch.Endpoint{ID: "c1"}},
		{ID: "g1", Meta: map[string]string{"bluegreen": "green"}, Value: watch.Endpoint{ID: "g1"}},
	}
	snap := gray.NewSnapshot("bservice", insts, gray.Options{StickyHeader: "x-user-id"})
	p := New(WithSource(func() (Source, error) { return staticSource{"bservice": snap}, nil }))
	t.Cleanup(func() { p.Close() })
	c, err := p.ParseConf([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return p, c
}

func newFake(ip string, path string, headers ...string) *fakeRequest {
	r := &fakeRequest{hdr: fakeHeader{http.Header{}}, path: []byte(path), ip: net.ParseIP(ip), respHdr: http.Header{}, args: url.Values{}}
	for i := 0; i+1 < len(headers); i += 2 {
		r.hdr.Add(headers[i], headers[i+1])
	}
	// A browser-like request: the plugin must not be slowed by headers it does not read.
	for _, h := range []string{"Accept", "Accept-Encoding", "Accept-Language", "User-Agent", "Host", "Connection", "X-Request-Id"} {
		r.hdr.Set(h, "some value for "+h)
	}
	return r
}

const lane = "X-Md-Global-Gray-Lane"

func TestRequestFilter(t *testing.T) {
	p, c := testPlugin(t, `{"service":"bservice","trusted_cidrs":["10.0.0.0/8"],"echo_header":"x-gray-lane"}`)
	cases := []struct {
		name    string
		req     *fakeRequest
		want    string // lane header after the filter; "" = absent
		echo    string
		queryOn bool
	}{
		{"matched", newFake("203.0.113.1", "/api/user/1", "userid", "123"), "canary", "canary", false},
		{"query rule", newFake("203.0.113.1", "/x"), "canary", "canary", true},
		{"spoofed from untrusted", newFake("203.0.113.1", "/", lane, "green", "x-user-id", "u-5"), "", "stable", false},
		{"tag from trusted", newFake("10.0.0.1", "/", lane, "green"), "green", "green", false},
		{"tag from trusted v4-in-v6", newFake("::ffff:10.0.0.1", "/", lane, "green"), "green", "green", false},
		{"unknown tag from trusted", newFake("10.0.0.1", "/", lane, "nope", "x-user-id", "u-5"), "", "stable", false},
		{"no source address", newFake("", "/", lane, "green", "x-user-id", "u-5"), "", "stable", false},
	}
	for _, tc := range cases {
		if tc.queryOn {
			tc.req.args.Set("beta", "1")
		}
		p.RequestFilter(c, nil, tc.req)
		if got := tc.req.hdr.Get(lane); got != tc.want {
			t.Errorf("%s: lane header %q, want %q", tc.name, got, tc.want)
		}
		if got := tc.req.respHdr.Get("X-Gray-Lane"); got != tc.echo {
			t.Errorf("%s: echo %q, want %q", tc.name, got, tc.echo)
		}
	}
}

func TestQueryRoundTrip(t *testing.T) {
	args := url.Values{"a b": {"x&y=z"}, "p%": {"+1;#"}}
	raw := string(appendQuery(nil, args))
	back, err := url.ParseQuery(strings.ReplaceAll(raw, ";", "%3B"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range args {
		if back.Get(k) != v[0] {
			t.Errorf("%q: %q, want %q (raw %s)", k, back.Get(k), v[0], raw)
		}
	}
}

func TestRequestFilterAllocatesNothing(t *testing.T) {
	p, c := testPlugin(t, `{"service":"bservice","trusted_cidrs":["10.0.0.0/8"]}`)
	for _, r := range []*fakeRequest{
		newFake("203.0.113.1", "/api/user/1", "userid", "123"),
		newFake("203.0.113.1", "/", "x-user-id", "user-77"),
		newFake("203.0.113.1", "/", lane, "green"),
		newFake("10.0.0.1", "/", lane, "green"),
	} {
		p.RequestFilter(c, nil, r) // builds the lane table once per snapshot
		if n := testing.AllocsPerRun(1000, func() { p.RequestFilter(c, nil, r) }); n != 0 {
			t.Errorf("%s %v: %.1f allocations per request", r.path, r.hdr.Header, n)
		}
	}
}

func TestParseConfNamesTheField(t *testing.T) {
	for conf, field := range map[string]string{
		`{}`:                                              "service",
		`{"service":""}`:                                  "service",
		`{"service":"a b"}`:                               "service",
		`{"service":"s","tag_key":"x lane"}`:              "tag_key",
		`{"service":"s","sticky_header":"a:b"}`:           "sticky_header",
		`{"service":"s","sticky_cookie":"a;b"}`:           "sticky_cookie",
		`{"service":"s","echo_header":""}`:                "",
		`{"service":"s","trusted_cidrs":["10.0.0.0/33"]}`: "trusted_cidrs[0]",
		`{"service":"s","trusted_cidrs":"10.0.0.0/8"}`:    "trusted_cidrs",
		`{"service":"s","trusted":["10.0.0.0/8"]}`:        "trusted",
		`{"service":1}`:                                   "service",
		`{"service":"s","fallback":"anywhere"}`:           "fallback",
		`{"service":"s","unknown_wait_ms":-1}`:            "unknown_wait_ms",
		`{"service":"s","unknown_wait_ms":60000}`:         "unknown_wait_ms",
		`{"service":"s","on_unknown":"stable"}`:           "on_unknown",
		`[]`:                                              "",
		`{"service":"s"} {}`:                              "",
	} {
		_, err := ParseConf([]byte(conf))
		if field == "" && conf == `{"service":"s","echo_header":""}` {
			if err != nil {
				t.Errorf("%s: %v", conf, err)
			}
			continue
		}
		var ce *ConfError
		if !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: error %v, want one naming %q", conf, err, field)
		}
	}
}

func FuzzParseConf(f *testing.F) {
	f.Add([]byte(`{"service":"bservice","sticky_header":"x-user-id","trusted_cidrs":["10.0.0.0/8","::1"]}`))
	f.Add([]byte(`{"service":"s","trusted_cidrs":["::ffff:10.0.0.0/104"]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseConf(in)
		if err != nil {
			return
		}
		again, err := ParseConf([]byte(c.JSON()))
		if err != nil || again.JSON() != c.JSON() {
			t.Fatalf("conf %s does not round-trip: %v", c.JSON(), err)
		}
	})
}

func BenchmarkRequestFilter(b *testing.B) {
	p, c := testPlugin(b, `{"service":"bservice","trusted_cidrs":["10.0.0.0/8"]}`)
	for _, bc := range []struct {
		name string
		req  *fakeRequest
	}{
		{"match", newFake("203.0.113.1", "/api/user/1", "userid", "123")},
		{"weight-sticky", newFake("203.0.113.1", "/api/order", "x-user-id", "user-77")},
		{"spoofed", newFake("203.0.113.1", "/", lane, "green", "x-user-id", "user-77")},
		{"trusted-tag", newFake("10.0.0.1", "/", lane, "green")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.RequestFilter(c, nil, bc.req)
			}
		})
	}
}

// FuzzRequestFilter: whatever a client sends, the filter does not panic, and the lane header it
// leaves is a lane of the service or absent; an untrusted client never keeps a lane it named.
func FuzzRequestFilter(f *testing.F) {
	f.Add("203.0.113.1", "/api/user/1", "userid", "123", "cookie", "uid=7; a", "green", "beta=1")
	f.Add("10.0.0.1", "", "x-user-id", "", "cookie", "=;;;=", "nope", "%zz=%")
	f.Add("::1", "/\xff", "UserID", "123", "Cookie", `uid="x`, "canary", "a&b==c")
	p, c := testPlugin(f, `{"service":"bservice","sticky_cookie":"uid","trusted_cidrs":["10.0.0.0/8"]}`)
	lanes := map[string]bool{"canary": true, "green": true, "stable": true}
	f.Fuzz(func(t *testing.T, ip, path, h1, v1, h2, v2, tag, query string) {
		r := newFake(ip, path, h1, v1, h2, v2, lane, tag)
		if q, err := url.ParseQuery(query); err == nil {
			r.args = q
		}
		p.RequestFilter(c, nil, r)
		got := r.hdr.Get(lane)
		if got != "" && !lanes[got] {
			t.Fatalf("lane header %q is no lane of the service", got)
		}
		// green is reachable only by a tag, and only a trusted client's tag counts.
		addr, err := netip.ParseAddr(ip)
		trusted := err == nil && netip.MustParsePrefix("10.0.0.0/8").Contains(addr.Unmap())
		if got == "green" && !trusted {
			t.Fatalf("untrusted %q kept a lane tag: green", ip)
		}
	})
}
