// Package consultest runs real Consul agents for graylane's integration tests: a dev agent on free
// loopback ports, started from the consul binary that `make consul` builds, stopped when the test
// ends. If the binary is missing or the agent does not come up, the test fails with the reason; it
// never skips.
package consultest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/syncbuf"
	"github.com/graylane/graylane/internal/testport"
)

// BinaryEnv names the environment variable that points at the consul binary.
const BinaryEnv = "GRAYLANE_CONSUL"

// startTimeout bounds how long an agent may take to elect itself leader.
const startTimeout = 60 * time.Second

// Binary locates the consul binary: $GRAYLANE_CONSUL, else .tools/bin/consul in the repository (where
// `make consul` builds it), else consul on PATH.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", BinaryEnv, p, err)
		}
		return p, nil
	}
	_, file, _, _ := runtime.Caller(0)
	built := filepath.Join(filepath.Dir(file), "..", "..", ".tools", "bin", "consul")
	if _, err := os.Stat(built); err == nil {
		return built, nil
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no consul binary: run `make consul` (it builds Consul from the Go module proxy into .tools/bin), or set %s", BinaryEnv)
}

// NodeMetaHTTPAddr is the node meta key under which each test agent advertises its HTTP address, so
// that code which must talk to the agent owning an instance can find it.
const NodeMetaHTTPAddr = "graylane-http-addr"

// Agent is a running Consul agent on loopback.
type Agent struct {
	// HTTPAddr is the agent's HTTP API address, host:port.
	HTTPAddr string
	// NodeName is the agent's node name.
	NodeName string
	// SerfLANAddr is the address other agents join, host:port.
	SerfLANAddr string
	// Token is the management token of an agent started with StartACL; empty otherwise.
	Token string
	// HTTPSAddr is the agent's HTTPS API address, host:port, for an agent started with StartTLS;
	// empty otherwise. CAPEM is the CA that signed its certificate, in PEM, and CAFile that CA's
	// file, for api.TLSConfig{CAPem: ...} or {CAFile: ...}.
	HTTPSAddr string
	CAPEM     []byte
	CAFile    string

	args []string
	log  *syncbuf.Buffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs a dev agent for the test and stops it in the test's cleanup. A dev agent keeps its state
// in memory. It fails the test if the agent cannot be started.
func Start(tb testing.TB) *Agent {
	tb.Helper()
	a, err := StartAgent()
	if err != nil {
		tb.Fatalf("consultest: %v", err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// StartWith runs a dev agent with extra command-line flags (-hcl 'limits { ... }', say) and stops it
// in the test's cleanup.
func StartWith(tb testing.TB, flags ...string) *Agent {
	tb.Helper()
	a, err := startDev("", flags...)
	if err != nil {
		tb.Fatalf("consultest: %v", err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// ManagementToken is the management token of agents started with StartACL.
const ManagementToken = "9b1e3c57-0000-4000-8000-000000000001"

// StartACL runs a dev agent with ACLs enabled and every request denied by default, and stops it in
// the test's cleanup. Agent.Token holds the management token, which creates the tokens a test needs.
func StartACL(tb testing.TB) *Agent {
	tb.Helper()
	a, err := startDev(ManagementToken, "-hcl", `acl { enabled = true
		default_policy = "deny"
		enable_token_persistence = false
		tokens { initial_management = "`+ManagementToken+`"
			agent = "`+ManagementToken+`" } }`)
	if err != nil {
		tb.Fatalf("consultest: %v", err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// StartPersistent runs a single server agent that keeps its state in a data directory, so that it
// comes back with its services after Restart.
func StartPersistent(tb testing.TB) *Agent {
	tb.Helper()
	a, err := StartServer(tb.TempDir())
	if err != nil {
		tb.Fatalf("consultest: %v", err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// StartServer runs a single server agent that keeps its state in a data directory under dir, as
// StartPersistent does, for programs (the soak) rather than tests. The caller must Stop it.
func StartServer(dir string) (*Agent, error) {
	agents, err := startServers(dir, 1)
	if err != nil {
		return nil, err
	}
	return agents[0], nil
}

// StartCluster runs n server agents that form one cluster, and waits until every one of them knows
// the leader.
func StartCluster(tb testing.TB, n int) []*Agent {
	tb.Helper()
	agents, err := startServers(tb.TempDir(), n)
	if err != nil {
		tb.Fatalf("consultest: %v", err)
	}
	for _, a := range agents {
		tb.Cleanup(a.Stop)
	}
	return agents
}

// StartAgent runs a dev agent and waits until it has elected itself leader. The caller must Stop it.
func StartAgent() (*Agent, error) { return startDev("") }

// startDev runs a dev agent with the extra flags, on new ports until none was lost between probe and
// bind. token is the agent's management token, if its flags make one.
func startDev(token string, flags ...string) (*Agent, error) {
	var a *Agent
	err := testport.OnFreshPorts(4, func(ports []int) error {
		a = newAgent(append([]string{"-dev"}, flags...), ports)
		a.Token = token
		if err := a.start(context.Background()); err != nil {
			a.Stop()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// startServers runs n server agents with data directories under dir, joined to each other. If any of
// them loses a port, all of them start again on new ports.
func startServers(dir string, n int) ([]*Agent, error) {
	var agents []*Agent
	err := testport.OnFreshPorts(4*n, func(ports []int) (err error) {
		agents, err = startServersOn(dir, ports)
		return err
	})
	if err != nil {
		return nil, err
	}
	return agents, nil
}

// startServersOn runs one server agent per four ports. When one of them fails, the others are
// stopped at once rather than left waiting for it until the start timeout; the agents are returned,
// stopped, with the error.
func startServersOn(dir string, ports []int) ([]*Agent, error) {
	agents := make([]*Agent, len(ports)/4)
	for i := range agents {
		agents[i] = newAgent(nil, ports[4*i:4*i+4])
	}
	for i, a := range agents {
		a.args = append(a.args, "-server", "-bootstrap-expect", strconv.Itoa(len(agents)),
			"-data-dir", filepath.Join(dir, a.NodeName),
			"-hcl", "performance { raft_multiplier = 1 }")
		for j, other := range agents {
			if j != i {
				a.args = append(a.args, "-retry-join", other.SerfLANAddr, "-retry-interval", "200ms")
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, len(agents))
	for _, a := range agents {
		go func() { errs <- a.start(ctx) }()
	}
	var firstErr error
	for range agents {
		err := <-errs
		if err != nil && firstErr == nil {
			cancel()
		}
		// A lost port is the reason to report: it is the one worth starting again for.
		if err != nil && (firstErr == nil || testport.InUse(err)) {
			firstErr = err
		}
	}
	if firstErr != nil {
		for _, a := range agents {
			a.Stop()
		}
	}
	return agents, firstErr
}

// newAgent prepares an agent on four free loopback ports (HTTP, serf LAN, serf WAN, server RPC); mode
// holds the flags that make it a dev agent or a server.
func newAgent(mode []string, ports []int) *Agent {
	name := "graylane-test-" + strconv.Itoa(ports[0])
	a := &Agent{
		HTTPAddr:    "127.0.0.1:" + strconv.Itoa(ports[0]),
		SerfLANAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
		NodeName:    name,
		log:         &syncbuf.Buffer{Max: 1 << 20}, // the most recent output only
	}
	a.args = append([]string{"agent"}, mode...)
	a.args = append(a.args, "-node", name,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-serf-wan-port", strconv.Itoa(ports[2]),
		"-server-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-node-meta", NodeMetaHTTPAddr+":"+a.HTTPAddr,
		"-log-level", "warn")
	return a
}

// start runs the agent and waits until it is ready, the start timeout passes, or ctx is cancelled.
func (a *Agent) start(ctx context.Context) error {
	binary, err := Binary()
	if err != nil {
		return err
	}
	a.mu.Lock()
	cmd := exec.Command(binary, a.args...)
	cmd.Stdout, cmd.Stderr = a.log, a.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		a.mu.Unlock()
		return fmt.Errorf("starting %s: %w", binary, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := a.waitReady(ctx, done); err != nil {
		return fmt.Errorf("consul agent on %s: %w\n--- agent output ---\n%s", a.HTTPAddr, err, a.log.Tail(4000))
	}
	return nil
}

// waitReady polls until the agent has a leader and has registered its own node.
func (a *Agent) waitReady(ctx context.Context, exited <-chan struct{}) error {
	// A transport of its own, whose connections end with the wait: an idle one kept would count
	// against the agent's limits.http_max_conns_per_client, and among the caller's connections.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 2 * time.Second, Transport: tr}
	get := func(path string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.HTTPAddr+path, nil)
		if err != nil {
			return "", err
		}
		if a.Token != "" {
			req.Header.Set("X-Consul-Token", a.Token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s", path, resp.Status)
		}
		return strings.TrimSpace(string(body)), err
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	lastErr := errors.New("no answer yet")
	for {
		leader, err := get("/v1/status/leader")
		if err == nil && leader != `""` {
			var node string
			node, err = get("/v1/catalog/node/" + a.NodeName)
			if err == nil && node != "null" {
				return nil
			}
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-exited:
			return errors.New("the agent exited before it was ready")
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("start cancelled: %v", lastErr)
			}
			return fmt.Errorf("not ready after %v: %v", startTimeout, lastErr)
		case <-tick.C:
		}
	}
}

// URL returns the agent's HTTP API base URL.
func (a *Agent) URL() string { return "http://" + a.HTTPAddr }

// Stop ends the agent (gracefully, then by force after five seconds) and waits for it to exit. A dev
// agent keeps its state in memory: it is gone after Stop.
func (a *Agent) Stop() { a.end(syscall.SIGTERM, 5*time.Second) }

// Kill ends the agent at once, as a crash would, and waits for it to exit.
func (a *Agent) Kill() { a.end(syscall.SIGKILL, 0) }

// end sends sig to the agent, kills it if it has not exited after grace, and waits for it.
func (a *Agent) end(sig syscall.Signal, grace time.Duration) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops the agent and starts it again on the same ports. A dev agent comes back empty; a
// persistent or cluster agent comes back with its data.
func (a *Agent) Restart() error {
	a.Stop()
	return a.start(context.Background())
}

// Log returns the end of the agent's output, for failure messages.
func (a *Agent) Log() string { return a.log.Tail(4000) }
