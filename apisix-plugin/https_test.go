package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/apisixtest"
	"github.com/graylane/graylane/internal/consultest"
)

// TestRunnerOverHTTPS: a runner whose agent is served over HTTPS (CONSUL_HTTP_ADDR=https://...,
// CONSUL_CACERT), as production agents usually are, follows the service through the event-driven
// HTTP/2 client: a matched request gets the canary, and a change of the canary's meta (weight 0,
// no rule) reaches its decisions.
func TestRunnerOverHTTPS(t *testing.T) {
	agent := consultest.StartTLS(t)
	client, err := api.NewClient(&api.Config{Address: agent.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	register(t, client, "bservice-stable-1", 9001, map[string]string{"version": "v1"})
	register(t, client, "bservice-canary-1", 9002, canaryMeta)
	sock := filepath.Join(t.TempDir(), "runner.sock")
	apisixtest.StartRunner(t, sock, []string{runnerBinary(t), "run"},
		"CONSUL_HTTP_ADDR=https://"+agent.HTTPSAddr, "CONSUL_CACERT="+agent.CAFile)
	c := apisixtest.Dial(t, sock)
	token, err := c.PrepareConf("route-tls", [2]string{"graylane", testConf})
	if err != nil {
		t.Fatal(err)
	}
	matched := &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/api/user", Headers: [][2]string{{"userid", "123"}}}
	t.Logf("the matched request reached the canary %v after the runner started", waitLane(t, c, matched, "canary", 20*time.Second))

	register(t, client, "bservice-canary-1", 9002, map[string]string{"canary": "true", "weight": "0"})
	t.Logf("the canary's rule removed reached the runner after %v", waitLane(t, c, matched, "", 20*time.Second))
}
