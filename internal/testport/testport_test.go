package testport

import (
	"fmt"
	"net"
	"strconv"
	"testing"
)

func TestTakeGivesDistinctFreePortsBelowTheEphemeralRange(t *testing.T) {
	ports, err := Take(40)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 40 {
		t.Fatalf("got %d ports, want 40", len(ports))
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d given twice", p)
		}
		seen[p] = true
		if p < lowest || p >= ephemeralStart() {
			t.Errorf("port %d outside %d-%d, where the kernel hands out ports of its own", p, lowest, ephemeralStart()-1)
		}
		release, err := hold(p) // free for both protocols once Take has returned
		if err != nil {
			t.Errorf("port %d: %v", p, err)
			continue
		}
		release()
	}
}

func TestTakeSkipsPortsInUse(t *testing.T) {
	// Three ports in a row, the first held for TCP and the second for UDP: only the third is free.
	var p int
	for attempt := 0; ; attempt++ {
		ports, err := Take(1)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := takeIn(ports[0], ports[0]+3, 3); err == nil && len(got) == 3 {
			p = ports[0]
			break
		}
		if attempt == 20 {
			t.Fatal("found no three free ports in a row")
		}
	}
	addr := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	l, err := net.Listen("tcp", addr(p))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", addr(p+1))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for range 10 { // the search starts at a random port of the range
		got, err := takeIn(p, p+3, 1)
		if err != nil || len(got) != 1 || got[0] != p+2 {
			t.Fatalf("takeIn(%d, %d, 1) = %v, %v; want [%d]", p, p+3, got, err, p+2)
		}
	}
	if got, err := takeIn(p, p+3, 2); err == nil {
		t.Errorf("takeIn(%d, %d, 2) = %v, want an error: only one port is free", p, p+3, got)
	}
}

func TestInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, bindErr := net.Listen("tcp", l.Addr().String())
	if bindErr == nil {
		t.Fatal("a second listener bound the same port")
	}
	quoted := fmt.Errorf("agent exited:\n[ERROR] listen tcp 127.0.0.1:41263: bind: address already in use")
	for _, c := range []struct {
		err  error
		want bool
	}{
		{bindErr, true},
		{fmt.Errorf("starting: %w", bindErr), true},
		{quoted, true},
		{fmt.Errorf("not ready after 60s: connection refused"), false},
		{nil, false},
	} {
		if got := InUse(c.err); got != c.want {
			t.Errorf("InUse(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
