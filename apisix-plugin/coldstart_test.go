package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"

	"github.com/graylane/graylane/internal/apisixtest"
	"github.com/graylane/graylane/internal/consultest"
)

// TestRunnerColdStartDecidesOnConsulsAnswer: the runner is started 30 times against a Consul that
// takes 100 ms to answer, and a matched user's request is sent the moment it listens. Before the
// runner waited for Consul's first answer, such a request was decided on an empty snapshot and went
// to stable, and a trusted client's tag was stripped. Now each first request waits for the answer:
// 30 of 30 reach the canary, the trusted tag is kept, and 16 clients right after a restart see no
// request mis-routed.
func TestRunnerColdStartDecidesOnConsulsAnswer(t *testing.T) {
	env := startGrayEnv(t)
	consul := consultest.Slow(t, env.agent.HTTPAddr, 100*time.Millisecond)
	env.runner.Stop()

	matched := func(token, id uint32) *apisixtest.Request {
		return &apisixtest.Request{Token: token, ID: id, IP: untrusted, Path: "/api/user",
			Headers: [][2]string{{"userid", "123"}, {"x-user-id", stableUser(0)}}}
	}
	restart := func(i int) *apisixtest.Runner {
		sock := filepath.Join(t.TempDir(), fmt.Sprintf("runner-%d.sock", i))
		return apisixtest.StartRunner(t, sock, []string{runnerBinary(t), "run"}, "CONSUL_HTTP_ADDR="+consul)
	}

	for i := range 30 {
		r := restart(i)
		c := apisixtest.Dial(t, r.Socket())
		token, err := c.PrepareConf("route-1", [2]string{"graylane", testConf})
		if err != nil {
			t.Fatal(err)
		}
		if lane, _ := laneOf(t, c, matched(token, 1)); lane != "canary" {
			t.Fatalf("start %d: the first matched request went to lane %q, want canary\n%s", i, lane, r.Output())
		}
		if i%10 == 0 { // a trusted client's tag, on the first request of a fresh runner
			r2 := restart(100 + i)
			c2 := apisixtest.Dial(t, r2.Socket())
			token2, err := c2.PrepareConf("route-1", [2]string{"graylane", testConf})
			if err != nil {
				t.Fatal(err)
			}
			tagged := &apisixtest.Request{Token: token2, ID: 1, IP: trusted, Path: "/", Headers: [][2]string{{laneHeader, "green"}}}
			if lane, _ := laneOf(t, c2, tagged); lane != "green" {
				t.Fatalf("start %d: a trusted client's green tag became %q on the first request", i, lane)
			}
			r2.Stop()
		}
		r.Stop()
	}

	r := restart(1000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrong := 0
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := apisixtest.DialConn(r.Socket())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			token, err := c.PrepareConf(fmt.Sprintf("route-%d", g), [2]string{"graylane", testConf})
			if err != nil {
				t.Error(err)
				return
			}
			for i := range 4 {
				req := matched(token, uint32(i+1))
				rw, err := c.Call(req)
				if err != nil {
					t.Error(err)
					return
				}
				if rw.Action != hrc.ActionRewrite || rw.Final(req, laneHeader) != "canary" {
					mu.Lock()
					wrong++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if wrong > 0 {
		t.Fatalf("%d of 64 matched requests from 16 clients right after a restart were not sent to the canary", wrong)
	}
}

// TestRunnerWithoutConsul: Consul unreachable from the start. Each request waits at most the conf's
// unknown_wait_ms counted from when the runner began to watch the service, then is answered as
// on_unknown says: 503 with Retry-After by default, or, with "base", passed on to the route's own
// upstream with a client's spoofed lane header removed. The runner logs the service once.
func TestRunnerWithoutConsul(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "runner.sock")
	r := apisixtest.StartRunner(t, sock, []string{runnerBinary(t), "run"}, "CONSUL_HTTP_ADDR=127.0.0.1:1")
	c := apisixtest.Dial(t, sock)
	reject, err := c.PrepareConf("route-1", [2]string{"graylane", `{"service":"bservice","unknown_wait_ms":300}`})
	if err != nil {
		t.Fatal(err)
	}
	spoofed := func(token, id uint32) *apisixtest.Request {
		return &apisixtest.Request{Token: token, ID: id, IP: untrusted, Path: "/api/user",
			Headers: [][2]string{{"userid", "123"}, {laneHeader, "canary"}}}
	}
	start := time.Now()
	rw, err := c.Call(spoofed(reject, 1))
	if err != nil {
		t.Fatalf("first call: %v\n%s", err, r.Output())
	}
	waited := time.Since(start)
	if rw.Action != hrc.ActionStop || rw.Status != http.StatusServiceUnavailable || rw.RespHeaders["Retry-After"] == "" ||
		!strings.Contains(rw.Body, "bservice") {
		t.Fatalf("first call: %+v, want a 503 with Retry-After naming bservice", rw)
	}
	if waited < 250*time.Millisecond || waited > 5*time.Second {
		t.Fatalf("the first request waited %v for Consul, want about 300ms", waited)
	}
	start = time.Now()
	for i := range 50 {
		rw, err := c.Call(spoofed(reject, uint32(i+2)))
		if err != nil || rw.Status != http.StatusServiceUnavailable {
			t.Fatalf("call %d: %+v, %v", i, rw, err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("50 requests after the wait took %v: each waited again", d)
	}

	base, err := c.PrepareConf("route-2", [2]string{"graylane", `{"service":"bservice","unknown_wait_ms":1,"on_unknown":"base"}`})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		rw, err := c.Call(spoofed(base, uint32(100+i)))
		if err != nil {
			t.Fatalf("call %d: %v\n%s", i, err, r.Output())
		}
		if rw.Action == hrc.ActionStop {
			t.Fatalf("call %d with on_unknown base: answered %d by the runner", i, rw.Status)
		}
		if _, removed, _ := rw.Header(laneHeader); !removed {
			t.Fatalf("call %d: spoofed lane header kept without Consul: %v", i, rw.Headers)
		}
	}
	if err := r.Stop(); err != nil {
		t.Errorf("runner exit after SIGTERM: %v\n%s", err, r.Output())
	}
	if n := strings.Count(r.Output(), "Consul has not answered for it"); n != 1 {
		t.Errorf("the runner logged the unknown service %d times, want once:\n%s", n, r.Output())
	}
}
