package consultest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
)

func TestStartStop(t *testing.T) {
	a := consultest.Start(t)
	resp, err := http.Get(a.URL() + "/v1/status/leader")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.Stop()
	if _, err := http.Get(a.URL() + "/v1/status/leader"); err == nil {
		t.Fatal("agent still answers after Stop")
	}
}

func TestPersistentAgentKeepsServicesAcrossRestart(t *testing.T) {
	a := consultest.StartPersistent(t)
	client := newClient(t, a)
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "p-1", Name: "p", Meta: map[string]string{"canary": "true"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	svc, _, err := client.Agent().Service("p-1", nil)
	if err != nil || svc.Meta["canary"] != "true" {
		t.Fatalf("service after restart: %+v, %v", svc, err)
	}
}

func TestClusterElectsANewLeader(t *testing.T) {
	agents := consultest.StartCluster(t, 3)
	leaderOf := func(a *consultest.Agent) string {
		l, err := newClient(t, a).Status().Leader()
		if err != nil {
			return ""
		}
		return l
	}
	old := leaderOf(agents[0])
	var killed *consultest.Agent
	for _, a := range agents {
		if strings.HasSuffix(old, ":"+serverPort(t, a)) {
			killed = a
		}
	}
	if killed == nil {
		t.Fatalf("leader %q is none of the agents", old)
	}
	killed.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range agents {
		if a == killed {
			continue
		}
		for {
			if l := leaderOf(a); l != "" && l != old {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new leader after killing %s", old)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// serverPort returns the agent's raft server port from its self description.
func serverPort(t *testing.T, a *consultest.Agent) string {
	self, err := newClient(t, a).Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	ports := self["DebugConfig"]["ServerPort"]
	return fmt.Sprint(ports)
}
