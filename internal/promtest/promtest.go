// Package promtest runs a real Prometheus server for graylane's tests: Debian's prometheus binary
// (which `make prometheus` installs), scraping the given targets every second, on a free loopback
// port, stopped when the test ends. If the binary is missing or the server does not come up, the test
// fails with the reason; it never skips.
package promtest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/testport"
	"github.com/graylane/graylane/rollout"
)

// BinaryEnv names the environment variable that points at the prometheus binary.
const BinaryEnv = "GRAYLANE_PROMETHEUS_BIN"

// ScrapeInterval is how often the test server scrapes its targets.
const ScrapeInterval = time.Second

// Server is a running Prometheus server.
type Server struct {
	// URL is the server's base URL, http://127.0.0.1:port.
	URL string

	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   sync.Mutex
	done chan struct{}
}

// Binary locates prometheus: $GRAYLANE_PROMETHEUS_BIN, else prometheus on PATH.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no prometheus binary: run `make prometheus` (it installs Debian's prometheus package), or set %s", BinaryEnv)
}

// Start runs a Prometheus server that scrapes targets (host:port, path /metrics) every second, each
// as its own job named after the target, and stops it in the test's cleanup.
func Start(tb testing.TB, targets ...string) *Server {
	tb.Helper()
	s, err := Run(tb.TempDir(), targets...)
	if err != nil {
		tb.Fatalf("promtest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Run runs a Prometheus server as Start does, keeping its files in dir, outside a test (the
// soak); Stop stops it.
func Run(dir string, targets ...string) (*Server, error) {
	binary, err := Binary()
	if err != nil {
		return nil, err
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: %s\n  evaluation_interval: %s\nscrape_configs:\n", ScrapeInterval, ScrapeInterval)
	fmt.Fprintf(&cfg, "  - job_name: graylane\n    static_configs:\n      - targets: [%s]\n", quoteAll(targets))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg.String()), 0o644); err != nil {
		return nil, err
	}
	var s *Server
	attempt := 0
	err = testport.OnFreshPorts(1, func(ports []int) error {
		attempt++
		s = &Server{URL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), log: &bytes.Buffer{}, done: make(chan struct{})}
		s.cmd = exec.Command(binary,
			"--config.file="+filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
			fmt.Sprintf("--web.listen-address=127.0.0.1:%d", ports[0]),
			"--log.level=warn")
		s.cmd.Stdout, s.cmd.Stderr = &lockedWriter{s}, &lockedWriter{s}
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", binary, err)
		}
		go func() { _ = s.cmd.Wait(); close(s.done) }()
		if err := s.waitReady(); err != nil {
			s.Stop()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) waitReady() error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("prometheus exited before it was ready:\n%s", s.output())
		default:
		}
		resp, err := http.Get(s.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("prometheus not ready after 30s:\n%s", s.output())
}

// Stop stops the server.
func (s *Server) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

func (s *Server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.log.String()
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return out
}

// Query runs an instant PromQL query and returns the first sample's value, and whether there was one.
func (s *Server) Query(ctx context.Context, promql string) (float64, bool, error) {
	return (&rollout.Prometheus{URL: s.URL}).Query(ctx, promql)
}

// WaitScraped waits until every target has been scraped successfully at least once.
func (s *Server) WaitScraped(tb testing.TB, targets int) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if n, ok, err := s.Query(context.Background(), `count(up == 1)`); err == nil && ok && int(n) >= targets {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("promtest: %d targets not scraped within 30s:\n%s", targets, s.output())
}

type lockedWriter struct{ s *Server }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.log.Write(p)
}

func quoteAll(targets []string) string {
	q := make([]string, len(targets))
	for i, t := range targets {
		q[i] = `"` + t + `"`
	}
	return strings.Join(q, ", ")
}
