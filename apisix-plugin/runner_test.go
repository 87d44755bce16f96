package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	A6 "github.com/api7/ext-plugin-proto/go/A6"
	A6Err "github.com/api7/ext-plugin-proto/go/A6/Err"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/apisixtest"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

func TestMain(m *testing.M) {
	if os.Getenv(vectorRunnerEnv) != "" {
		os.Exit(runVectorRunner())
	}
	code := m.Run()
	if buildPath != "" {
		os.RemoveAll(filepath.Dir(buildPath))
	}
	os.Exit(code)
}

const laneHeader = gray.DefaultTagKey

// The test service's instances: a stable one, a canary taking the header userid=123 and 10 % of
// the other users, and a green lane reachable only by tag.
var (
	canaryMatch = `[{"header":[{"key":"userid","value_match":"123"}]}]`
	canaryMeta  = map[string]string{"canary": "true", "weight": "10", "match": canaryMatch}
)

func register(t testing.TB, c *api.Client, id string, port int, meta map[string]string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: "bservice", Address: "127.0.0.1", Port: port, Meta: meta,
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

// grayEnv is Consul with bservice's three lanes and a runner watching it.
type grayEnv struct {
	agent  *consultest.Agent
	consul *api.Client
	runner *apisixtest.Runner
	sock   string
}

// startGrayEnv registers bservice's stable, canary and green instances in a new Consul agent and
// starts the runner against it; env adds variables to the runner's environment.
func startGrayEnv(t testing.TB, env ...string) *grayEnv {
	t.Helper()
	agent := consultest.Start(t)
	client, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	register(t, client, "bservice-stable-1", 9001, map[string]string{"version": "v1"})
	register(t, client, "bservice-canary-1", 9002, canaryMeta)
	register(t, client, "bservice-green-1", 9003, map[string]string{"bluegreen": "green"})
	sock := filepath.Join(t.TempDir(), "runner.sock")
	r := apisixtest.StartRunner(t, sock, []string{runnerBinary(t), "run"}, append([]string{"CONSUL_HTTP_ADDR=" + agent.HTTPAddr}, env...)...)
	return &grayEnv{agent: agent, consul: client, runner: r, sock: sock}
}

const testConf = `{"service":"bservice","sticky_header":"x-user-id","trusted_cidrs":["10.0.0.0/8"],"echo_header":"x-gray-lane"}`

var (
	untrusted = netip.MustParseAddr("203.0.113.9")
	trusted   = netip.MustParseAddr("10.1.2.3")
)

// laneOf sends a request and returns the lane header the runner sets ("" when it removes it or
// leaves it absent) and the echoed lane.
func laneOf(t testing.TB, c *apisixtest.Conn, r *apisixtest.Request) (lane, echo string) {
	t.Helper()
	rw, err := c.Call(r)
	if err != nil {
		t.Fatalf("call %+v: %v", r, err)
	}
	if rw.Action == hrc.ActionStop {
		t.Fatalf("call %+v: the runner answered the client itself", r)
	}
	return rw.Final(r, laneHeader), rw.RespHeaders["X-Gray-Lane"]
}

// waitLane polls until the request gets the lane and returns how long it took.
func waitLane(t testing.TB, c *apisixtest.Conn, r *apisixtest.Request, want string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got, _ := laneOf(t, c, r)
		if got == want {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("request %+v: lane %q after %v, want %q", r, got, timeout, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRunnerAgainstConsul(t *testing.T) {
	env := startGrayEnv(t)
	outer := t // for what must outlive a subtest
	c := apisixtest.Dial(t, env.sock)
	token, err := c.PrepareConf("route-1", [2]string{"graylane", testConf})
	if err != nil {
		t.Fatal(err)
	}
	matched := &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/api/user", Headers: [][2]string{{"userid", "123"}}}
	first := waitLane(t, c, matched, "canary", 20*time.Second)
	t.Logf("first snapshot from Consul after %v", first)

	t.Run("matched request gets the canary lane", func(t *testing.T) {
		lane, echo := laneOf(t, c, matched)
		if lane != "canary" || echo != "canary" {
			t.Errorf("lane %q echo %q, want canary", lane, echo)
		}
		// More headers than the plugin decodes up front: it reads them in the message instead.
		many := &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/api/user"}
		for i := range 100 {
			many.Headers = append(many.Headers, [2]string{fmt.Sprintf("x-filler-%d", i), "v"})
		}
		many.Headers = append(many.Headers, [2]string{"UserID", "123"})
		if lane, _ := laneOf(t, c, many); lane != "canary" {
			t.Errorf("101 Headers: lane %q, want canary", lane)
		}
	})

	t.Run("base decision sets no lane header and echoes the base lane", func(t *testing.T) {
		user := stableUser(0)
		rw, err := c.Call(&apisixtest.Request{Token: token, ID: 2, IP: untrusted, Path: "/api/user", Headers: [][2]string{{"x-user-id", user}}})
		if err != nil {
			t.Fatal(err)
		}
		if v, _, _ := rw.Header(laneHeader); v != "" {
			t.Errorf("lane header %q for a base decision", v)
		}
		if e := rw.RespHeaders["X-Gray-Lane"]; e != "stable" {
			t.Errorf("echo %q, want stable", e)
		}
	})

	t.Run("spoofed lane from an untrusted address is removed", func(t *testing.T) {
		for i, ip := range []netip.Addr{untrusted, netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("11.0.0.1")} {
			user := stableUser(i)
			rw, err := c.Call(&apisixtest.Request{Token: token, ID: 3, IP: ip, Path: "/", Headers: [][2]string{{laneHeader, "green"}, {"x-user-id", user}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, removed, _ := rw.Header(laneHeader); !removed {
				t.Errorf("from %v: spoofed lane header not removed: %v", ip, rw.Headers)
			}
			if e := rw.RespHeaders["X-Gray-Lane"]; e != "stable" {
				t.Errorf("from %v: decided %q, want stable", ip, e)
			}
		}
	})

	t.Run("the answer changes only the lane header", func(t *testing.T) {
		// The plugin fills the runner's header maps with the lane header alone: the rewrite must
		// carry that one change, never drop or repeat the request's other headers.
		for _, tc := range []struct {
			name    string
			headers [][2]string
			want    string // "" for removed
		}{
			{"set on a matched request", [][2]string{{"userid", "123"}, {"cookie", "a=1"}, {"x-other", "1"}}, "canary"},
			{"replaced when the client sent another lane", [][2]string{{"userid", "123"}, {laneHeader, "green"}, {"x-other", "1"}}, "canary"},
			{"two spoofed copies removed", [][2]string{{laneHeader, "green"}, {laneHeader, "canary"}, {"x-user-id", stableUser(3)}}, ""},
		} {
			rw, err := c.Call(&apisixtest.Request{Token: token, ID: 6, IP: untrusted, Path: "/api/user", Headers: tc.headers})
			if err != nil {
				t.Fatal(err)
			}
			v, removed, ok := rw.Header(laneHeader)
			switch {
			case tc.want == "" && !removed:
				t.Errorf("%s: lane header %q, want removed", tc.name, v)
			case tc.want != "" && (!ok || v != tc.want):
				t.Errorf("%s: lane header %q, want %q", tc.name, v, tc.want)
			}
			if len(rw.Headers) != 1 {
				t.Errorf("%s: the answer changes %d headers, want only the lane header: %v", tc.name, len(rw.Headers), rw.Headers)
			}
		}
	})

	t.Run("lane from a trusted address is honoured", func(t *testing.T) {
		for _, ip := range []netip.Addr{trusted, netip.MustParseAddr("::ffff:10.9.9.9")} {
			lane, _ := laneOf(t, c, &apisixtest.Request{Token: token, ID: 4, IP: ip, Path: "/", Headers: [][2]string{{laneHeader, "green"}}})
			if lane != "green" {
				t.Errorf("from %v: lane %q, want green", ip, lane)
			}
		}
		// A trusted tag naming no lane of the service is not propagated.
		rw, err := c.Call(&apisixtest.Request{Token: token, ID: 5, IP: trusted, Path: "/", Headers: [][2]string{{laneHeader, "nope"}, {"x-user-id", stableUser(0)}}})
		if err != nil {
			t.Fatal(err)
		}
		if v, removed, _ := rw.Header(laneHeader); !removed {
			t.Errorf("unknown trusted tag: header %q, want removed", v)
		}
	})

	t.Run("10 percent of 10000 users", func(t *testing.T) {
		canary := 0
		for i := range 10000 {
			lane, _ := laneOf(t, c, &apisixtest.Request{Token: token, ID: uint32(i), IP: untrusted, Path: "/api/order",
				Headers: [][2]string{{"x-user-id", fmt.Sprintf("user-%d", i)}}})
			if lane == "canary" {
				canary++
			}
		}
		share := float64(canary) / 100
		t.Logf("canary share %.2f %%", share)
		if share < 9 || share > 11 {
			t.Errorf("canary share %.2f %%, want 10 ± 1", share)
		}
	})

	t.Run("a user keeps one lane", func(t *testing.T) {
		for i := range 50 {
			user := fmt.Sprintf("sticky-%d", i)
			want, _ := laneOf(t, c, &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/", Headers: [][2]string{{"x-user-id", user}}})
			for range 20 {
				if got, _ := laneOf(t, c, &apisixtest.Request{Token: token, ID: 2, IP: untrusted, Path: "/", Headers: [][2]string{{"x-user-id", user}}}); got != want {
					t.Fatalf("user %s: lane %q, then %q", user, want, got)
				}
			}
		}
	})

	t.Run("malformed requests get a decision", func(t *testing.T) {
		huge := strings.Repeat("x", 60<<10)
		cases := map[string]*apisixtest.Request{
			"no path":           {Path: ""},
			"huge headers":      {Path: "/", Headers: [][2]string{{"x-user-id", huge}, {"userid", huge}, {"cookie", huge}}},
			"bad cookie":        {Path: "/", Headers: [][2]string{{"cookie", `=;;; ;="x; uid==; "`}}},
			"ipv6 source":       {Path: "/", IP: netip.MustParseAddr("2001:db8::1")},
			"no source":         {Path: "/"},
			"empty header name": {Path: "/", Headers: [][2]string{{"", "x"}, {laneHeader, ""}}},
			"binary path":       {Path: "/\xff\x00\xfe?%zz", Args: [][2]string{{"%", "\xff"}, {"", ""}}},
			"odd method":        {Path: "/", Method: A6.MethodPROPFIND},
		}
		for name, r := range cases {
			r.Token, r.ID = token, 9
			rw, err := c.Call(r)
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, env.runner.Output())
			}
			if rw.Action == hrc.ActionStop {
				t.Errorf("%s: the runner answered the client itself", name)
			}
			if v, _, _ := rw.Header(laneHeader); v != "" && v != "canary" {
				t.Errorf("%s: lane %q", name, v)
			}
		}
		// Cookies are parsed only for a sticky cookie or a cookie rule: the same with a sticky cookie.
		byCookie, err := c.PrepareConf("route-cookie", [2]string{"graylane", `{"service":"bservice","sticky_cookie":"uid"}`})
		if err != nil {
			t.Fatal(err)
		}
		for _, cookie := range []string{`=;;; ;="x; uid==; "`, `uid`, `uid=`, `uid="`, `uid=""`, strings.Repeat("uid=1;", 5000), "uid=\xff\x00"} {
			rw, err := c.Call(&apisixtest.Request{Token: byCookie, ID: 10, Path: "/", Headers: [][2]string{{"cookie", cookie}}})
			if err != nil {
				t.Fatalf("cookie %.40q: %v\n%s", cookie, err, env.runner.Output())
			}
			if v, _, _ := rw.Header(laneHeader); v != "" && v != "canary" {
				t.Errorf("cookie %.40q: lane %q", cookie, v)
			}
		}
		if !env.runner.Alive() {
			t.Fatalf("runner died:\n%s", env.runner.Output())
		}
	})

	t.Run("bad conf is refused naming the field", func(t *testing.T) {
		tok, err := c.PrepareConf("route-bad", [2]string{"graylane", `{"service":"bservice","trusted_cidrs":["10.0.0.0/33"]}`})
		if err != nil {
			t.Fatal(err)
		}
		// The runner leaves a conf it cannot parse out of the chain: no rewrite of the lane header.
		rw, err := c.Call(&apisixtest.Request{Token: tok, ID: 1, Path: "/", Headers: [][2]string{{"userid", "123"}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, touched := rw.Header(laneHeader); touched {
			t.Errorf("bad conf still ran: %v", rw.Headers)
		}
		// The runner's output reaches the test through a pipe: give it a moment.
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(env.runner.Output(), "trusted_cidrs[0]") {
			if time.Now().After(deadline) {
				t.Fatalf("runner log does not name the field:\n%s", env.runner.Output())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("meta change in Consul changes decisions without a restart", func(t *testing.T) {
		// A user between 10 % and 50 %: stable now, canary once the weight is 50.
		user := ""
		for i := 0; user == ""; i++ {
			if b := gray.Bucket("bservice", fmt.Sprintf("mover-%d", i)); b >= 1000 && b < 5000 {
				user = fmt.Sprintf("mover-%d", i)
			}
		}
		r := &apisixtest.Request{Token: token, ID: 7, IP: untrusted, Path: "/", Headers: [][2]string{{"x-user-id", user}}}
		if lane, _ := laneOf(t, c, r); lane != "" {
			t.Fatalf("before the change: lane %q, want base", lane)
		}
		meta := map[string]string{"canary": "true", "weight": "50", "match": canaryMatch}
		register(t, env.consul, "bservice-canary-1", 9002, meta)
		took := waitLane(t, c, r, "canary", 20*time.Second)
		t.Logf("weight 10 -> 50 seen by the runner after %v", took)
		register(t, env.consul, "bservice-canary-1", 9002, canaryMeta)
		took = waitLane(t, c, r, "", 20*time.Second)
		t.Logf("weight 50 -> 10 seen by the runner after %v", took)
	})

	t.Run("decision options come from Consul unless the conf overrides them", func(t *testing.T) {
		reg, err := registrar.New(&api.Config{Address: env.agent.HTTPAddr})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.SetServiceOptions(context.Background(), "bservice", gray.Options{StickyHeader: "x-account"}); err != nil {
			t.Fatal(err)
		}
		plain, err := c.PrepareConf("route-plain", [2]string{"graylane", `{"service":"bservice"}`})
		if err != nil {
			t.Fatal(err)
		}
		inCanary := ""
		for i := 0; inCanary == ""; i++ {
			if u := fmt.Sprintf("acct-%d", i); gray.Bucket("bservice", u) < 1000 {
				inCanary = u
			}
		}
		// The conf names no sticky key: the account header from Consul's options decides.
		byAccount := &apisixtest.Request{Token: plain, ID: 1, IP: untrusted, Path: "/", Headers: [][2]string{{"x-account", inCanary}}}
		took := waitLane(t, c, byAccount, "canary", 20*time.Second)
		t.Logf("options from Consul seen by the runner after %v", took)
		for range 20 {
			if lane, _ := laneOf(t, c, byAccount); lane != "canary" {
				t.Fatalf("sticky account from Consul's options: lane %q", lane)
			}
		}
		// testConf names x-user-ID: it overrides Consul's x-account.
		both := &apisixtest.Request{Token: token, ID: 2, IP: untrusted, Path: "/", Headers: [][2]string{{"x-account", inCanary}, {"x-user-id", stableUser(0)}}}
		for range 20 {
			if lane, _ := laneOf(t, c, both); lane != "" {
				t.Fatalf("conf's sticky header did not override Consul's: lane %q", lane)
			}
		}
	})

	t.Run("forgotten conf Token: not found, then PrepareConf again", func(t *testing.T) {
		if err := env.runner.Stop(); err != nil {
			t.Fatalf("runner exit after SIGTERM: %v\n%s", err, env.runner.Output())
		}
		if _, err := os.Stat(env.sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind after SIGTERM: %v", err)
		}
		env.runner = apisixtest.StartRunner(outer, env.sock, []string{runnerBinary(t), "run"}, "CONSUL_HTTP_ADDR="+env.agent.HTTPAddr)
		c2 := apisixtest.Dial(outer, env.sock)
		_, err := c2.Call(&apisixtest.Request{Token: token, ID: 1, Path: "/", Headers: [][2]string{{"userid", "123"}}})
		var ea *apisixtest.ErrorAnswer
		if !errors.As(err, &ea) || ea.Code != A6Err.CodeCONF_TOKEN_NOT_FOUND {
			t.Fatalf("old Token: %v, want CONF_TOKEN_NOT_FOUND", err)
		}
		tok, err := c2.PrepareConf("route-1", [2]string{"graylane", testConf})
		if err != nil {
			t.Fatal(err)
		}
		waitLane(t, c2, &apisixtest.Request{Token: tok, ID: 2, IP: untrusted, Path: "/", Headers: [][2]string{{"userid", "123"}}}, "canary", 20*time.Second)
		c = c2
		token = tok
	})

	t.Run("Consul stopped: decisions continue from the last snapshot", func(t *testing.T) {
		env.agent.Stop()
		time.Sleep(200 * time.Millisecond) // let the watch see the connection fail
		canary := 0
		for i := range 2000 {
			lane, _ := laneOf(t, c, &apisixtest.Request{Token: token, ID: uint32(i), IP: untrusted, Path: "/",
				Headers: [][2]string{{"x-user-id", fmt.Sprintf("user-%d", i)}}})
			if lane == "canary" {
				canary++
			}
		}
		if canary < 120 || canary > 280 {
			t.Errorf("canary %d of 2000 with Consul down, want about 200", canary)
		}
		if lane, _ := laneOf(t, c, &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/", Headers: [][2]string{{"userid", "123"}}}); lane != "canary" {
			t.Errorf("matched request with Consul down: lane %q", lane)
		}
	})

	if err := env.runner.Stop(); err != nil {
		t.Errorf("runner exit after SIGTERM: %v\n%s", err, env.runner.Output())
	}
}

// stableUser returns the n-th user whose bucket is above 50 %: stable under every weight the tests
// set.
func stableUser(n int) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("stable-user-%d", i)
		if gray.Bucket("bservice", u) >= 5000 {
			if n == 0 {
				return u
			}
			n--
		}
	}
}
