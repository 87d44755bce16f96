package consultest

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/testport"
)

// TestAgentStartsAgainWhenAPortIsTaken: a port taken between probe and bind makes the agent exit with
// a bind error, which is recognised, and the agent is started again on new ports.
func TestAgentStartsAgainWhenAPortIsTaken(t *testing.T) {
	taken, err := testport.Take(4)
	if err != nil {
		t.Fatal(err)
	}
	squatter, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(taken[1])) // the serf LAN port
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()

	var a *Agent
	var errs []error
	err = testport.OnFreshPorts(4, func(ports []int) error {
		if len(errs) == 0 {
			ports = taken // the first try gets the ports another process has since bound
		}
		a = newAgent([]string{"-dev"}, ports)
		err := a.start(context.Background())
		if err != nil {
			a.Stop()
		}
		errs = append(errs, err)
		return err
	})
	if err != nil {
		t.Fatalf("no agent after %d tries: %v", len(errs), err)
	}
	defer a.Stop()
	if len(errs) != 2 || !testport.InUse(errs[0]) {
		t.Fatalf("tries: %v; want a bind error, then success", errs)
	}
	if a.HTTPAddr == "127.0.0.1:"+strconv.Itoa(taken[0]) {
		t.Errorf("the agent started again on the taken ports")
	}
}

// TestClusterFailsFastWhenAPortIsTaken: one server of three loses its port. The start reports the
// bind error, which makes it start again on new ports, and does not leave the other two waiting for
// the missing server until the start timeout.
func TestClusterFailsFastWhenAPortIsTaken(t *testing.T) {
	ports, err := testport.Take(12)
	if err != nil {
		t.Fatal(err)
	}
	squatter, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(ports[4+3])) // the second server's RPC port
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	start := time.Now()
	agents, err := startServersOn(t.TempDir(), ports)
	if err == nil {
		for _, a := range agents {
			a.Stop()
		}
		t.Fatal("a cluster started with a server port taken")
	}
	if !testport.InUse(err) {
		t.Fatalf("the error does not say the port was taken: %v", err)
	}
	if took := time.Since(start); took > startTimeout/2 {
		t.Fatalf("the failed start took %v: the other servers waited for the missing one", took)
	}
	for _, a := range agents {
		a.mu.Lock()
		done := a.done
		a.mu.Unlock()
		select {
		case <-done:
		default:
			t.Errorf("agent %s still running after the failed start", a.NodeName)
		}
	}
}
