package consultest

import (
	"net"
	"strconv"
	"testing"

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
	err = onFreshPorts(4, func(ports []int) error {
		if len(errs) == 0 {
			ports = taken // the first try gets the ports another process has since bound
		}
		a = newAgent([]string{"-dev"}, ports)
		err := a.start()
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
