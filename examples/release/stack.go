package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/watch"
)

// stack is everything the demo starts: a Consul agent, example service processes and the plugin
// runner, all on loopback. close stops all of it; it is safe to call more than once.
type stack struct {
	dir    string // binaries, sockets, logs
	logs   io.Writer
	agent  *consultest.Agent
	client *api.Client
	r      *registrar.Registrar
	w      *watch.Watcher

	mu    sync.Mutex
	procs []*proc
	addrs []string // every address a process of the stack listens on
	sock  string   // the runner's socket
	once  sync.Once
}

// proc is one child process. Children run in their own process group, so a terminal's Ctrl-C
// reaches the demo only and the demo stops them in order; they are killed if the demo dies.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) stop(sig os.Signal, wait time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(wait):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (s *stack) start(name string, env []string, argv ...string) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	f, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	s.procs = append(s.procs, p)
	return p, nil
}

// build compiles the example service and the plugin runner into the stack's directory.
func (s *stack) build(ctx context.Context, progress io.Writer) error {
	for _, b := range []struct{ out, pkg string }{
		{"backend", "github.com/graylane/graylane/examples/backend"},
		{"graylane-apisix-runner", "github.com/graylane/graylane/apisix-plugin"},
	} {
		fmt.Fprintf(progress, "building %s\n", b.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(s.dir, b.out), b.pkg)
		cmd.Stdout, cmd.Stderr = progress, progress
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s: %w", b.pkg, err)
		}
	}
	return nil
}

// startConsul starts a dev agent, or with persistent a server that keeps its state across a
// restart, and the registrar and watcher on it.
func (s *stack) startConsul(persistent bool) error {
	var a *consultest.Agent
	var err error
	if persistent {
		a, err = consultest.StartServer(filepath.Join(s.dir, "consul"))
	} else {
		a, err = consultest.StartAgent()
	}
	if err != nil {
		return err
	}
	s.agent = a
	s.addrs = append(s.addrs, a.HTTPAddr, a.SerfLANAddr)
	cfg := registrar.NewConfig(a.HTTPAddr)
	if s.client, err = api.NewClient(cfg); err != nil {
		return err
	}
	if s.r, err = registrar.New(cfg, registrar.WithOperator("demo")); err != nil {
		return err
	}
	s.w, err = watch.New(cfg)
	return err
}

// proc returns the running process of that name, or nil.
func (s *stack) proc(name string) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.procs) - 1; i >= 0; i-- {
		if p := s.procs[i]; p.name == name {
			select {
			case <-p.done:
				return nil
			default:
				return p
			}
		}
	}
	return nil
}

// startInstance starts an instance of the example service from a spec and waits until Consul has it
// passing its health check. next is the service it calls, if any.
func (s *stack) startInstance(ctx context.Context, spec registrar.Spec, next string) error {
	meta, err := spec.Gray.Merge(spec.Meta)
	if err != nil {
		return err
	}
	mj, _ := json.Marshal(meta)
	env := []string{
		"CONSUL_HTTP_ADDR=" + s.agent.HTTPAddr, "GRAY_SERVICE=" + spec.Name, "GRAY_ID=" + spec.ID,
		"GRAY_META=" + string(mj), "LISTEN=127.0.0.1:0", "GRPC_LISTEN=127.0.0.1:0", "ADVERTISE=127.0.0.1",
		"NEXT=" + next, "STICKY_HEADER=" + stickyHeader, "DRAIN_GRACE=300ms",
	}
	if _, err := s.start(spec.ID, env, filepath.Join(s.dir, "backend")); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, _, err := s.client.Health().Service(spec.Name, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			for _, e := range entries {
				if e.Service.ID == spec.ID {
					s.mu.Lock()
					for _, ta := range e.Service.TaggedAddresses {
						if i := strings.Index(ta.Address, "://"); i >= 0 {
							s.addrs = append(s.addrs, ta.Address[i+3:])
						}
					}
					s.mu.Unlock()
					return nil
				}
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not pass its health check in 30s; its log: %s", spec.ID, filepath.Join(s.dir, spec.ID+".log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRunner starts graylane's plugin runner as APISIX does and waits for its socket.
func (s *stack) startRunner(ctx context.Context) error {
	s.sock = filepath.Join(s.dir, "runner.sock")
	p, err := s.start("runner", []string{
		"APISIX_LISTEN_ADDRESS=unix:" + s.sock, "APISIX_CONF_EXPIRE_TIME=3600", "CONSUL_HTTP_ADDR=" + s.agent.HTTPAddr,
	}, filepath.Join(s.dir, "graylane-apisix-runner"), "run")
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.Dial("unix", s.sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return errors.New("the plugin runner exited; its log: " + filepath.Join(s.dir, "runner.log"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the plugin runner did not listen in 20s")
		}
	}
}

// close stops the runner and the instances (SIGINT: they deregister at once), then Consul.
func (s *stack) close() {
	s.once.Do(func() {
		if s.w != nil {
			s.w.Close()
		}
		s.mu.Lock()
		procs := s.procs
		s.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop(syscall.SIGINT, 5*time.Second) }()
		}
		wg.Wait()
		if s.agent != nil {
			s.agent.Stop()
		}
	})
}

// Addrs returns the addresses the stack's processes listened on.
func (s *stack) Addrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.addrs...)
}
