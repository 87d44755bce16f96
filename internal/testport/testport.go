// Package testport finds loopback ports for the test servers that must be told their ports by number
// (Consul, Prometheus) rather than binding port 0 themselves.
//
// A port that was free when probed can be taken before the server binds it. Ports handed out by the
// kernel, to ":0" listeners and to every outgoing connection of every process, come from the ephemeral
// range, so a probe inside that range races the whole machine. Take chooses ports below that range,
// where only another process that also binds by number can collide; InUse tells the caller that this
// happened, and OnFreshPorts starts the server again on new ones.
package testport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// lowest is the first port Take considers: above the well-known and most registered service ports.
const lowest = 10000

// Take returns n distinct loopback ports that were free for both TCP and UDP a moment ago (Consul's
// serf ports use both). They lie below the kernel's ephemeral range when that range leaves room,
// otherwise they are ports the kernel chose.
func Take(n int) ([]int, error) {
	ephemeralLow := ephemeralStart()
	if ephemeralLow-lowest < 64*n {
		return takeEphemeral(n)
	}
	return takeIn(lowest, ephemeralLow, n)
}

// takeIn returns n distinct ports of [lo, hi) that are free for TCP and UDP, searching from a random
// port of the range so that concurrent test processes start apart.
func takeIn(lo, hi, n int) ([]int, error) {
	var held []func()
	defer func() {
		for _, release := range held {
			release()
		}
	}()
	span := hi - lo
	start := rand.IntN(span)
	ports := make([]int, 0, n)
	for i := 0; i < span && len(ports) < n; i++ {
		port := lo + (start+i)%span
		release, err := hold(port)
		if err != nil {
			continue // taken, by TCP or UDP
		}
		held = append(held, release)
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("testport: only %d of %d free loopback ports in %d-%d", len(ports), n, lo, hi-1)
	}
	return ports, nil
}

// hold binds port on loopback for TCP and UDP and returns the function that releases both.
func hold(port int) (release func(), err error) {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p, err := net.ListenPacket("udp", addr)
	if err != nil {
		l.Close()
		return nil, err
	}
	return func() { l.Close(); p.Close() }, nil
}

// takeEphemeral returns n distinct ports chosen by the kernel.
func takeEphemeral(n int) ([]int, error) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("testport: finding a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ephemeralStart returns the first port of the kernel's ephemeral range (Linux); 32768, the Linux
// default, where it cannot be read.
func ephemeralStart() int {
	const linuxDefault = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return linuxDefault
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return linuxDefault
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return linuxDefault
	}
	return low
}

// OnFreshPorts calls start with n new ports from Take until it succeeds, fails for another reason
// than a port taken between probe and bind (InUse), or has tried three times. start must stop what it
// started before it returns an error.
func OnFreshPorts(n int, start func(ports []int) error) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		ports, perr := Take(n)
		if perr != nil {
			return perr
		}
		if err = start(ports); !InUse(err) {
			return err
		}
	}
	return err
}

// InUse reports whether err says that an address was already in use, directly or in the server output
// it quotes: the server lost one of its ports and should be started again on new ones.
func InUse(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use"))
}
