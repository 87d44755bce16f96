package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if demoBin != "" {
		os.RemoveAll(filepath.Dir(demoBin))
	}
	os.Exit(code)
}

var (
	demoOnce sync.Once
	demoBin  string
	demoErr  error
)

// demoBinary builds the demo once per test run.
func demoBinary(t *testing.T) string {
	t.Helper()
	demoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "graylane-demo-bin-")
		if err != nil {
			demoErr = err
			return
		}
		demoBin = filepath.Join(dir, "release")
		if out, err := exec.Command("go", "build", "-o", demoBin, ".").CombinedOutput(); err != nil {
			demoErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if demoErr != nil {
		t.Fatal(demoErr)
	}
	return demoBin
}

// demoRun is the demo running as a process, as `make demo` runs it.
type demoRun struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	line chan string
	done chan error
}

func startDemo(t *testing.T) *demoRun {
	cmd := exec.Command(demoBinary(t), "-dir", t.TempDir())
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &demoRun{t: t, cmd: cmd, line: make(chan string, 1000), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.line <- sc.Text():
			default:
			}
		}
	}()
	go func() { err := cmd.Wait(); pw.Close(); d.done <- err }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return d
}

func (d *demoRun) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// until waits for a line with the prefix and returns it.
func (d *demoRun) until(prefix string, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-d.line:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case err := <-d.done:
			d.t.Fatalf("the demo exited (%v) before %q:\n%s", err, prefix, d.output())
		case <-deadline:
			d.t.Fatalf("no %q after %v:\n%s", prefix, timeout, d.output())
		}
	}
}

// descendants returns the processes below pid, from /proc.
func descendants(pid int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for c, pp := range parent {
			if pp == p {
				out = append(out, c)
				walk(c)
			}
		}
	}
	walk(pid)
	return out
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// checkGone asserts that none of the processes is left and every address can be bound again.
func checkGone(t *testing.T, pids []int, addrs []string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second) // an orphan is reaped by init a moment later
	for _, p := range pids {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			t.Errorf("process %d left running: %s", p, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("address %s still taken: %v", a, err)
			continue
		}
		ln.Close()
	}
}

var rowRE = regexp.MustCompile(`^  (\w+)\s+\|\s+(\d+)\s+([\d.]+)%.*\|\s+(\d+)\s+([\d.]+)%`)

// tables parses the demo's output into steps, each with its tables: "what" -> lane -> the two
// planes' percentages.
func tables(output string) map[string][]map[string][2]float64 {
	out := map[string][]map[string][2]float64{}
	var step string
	var cur map[string][2]float64
	for _, l := range strings.Split(output, "\n") {
		switch {
		case strings.HasPrefix(l, "== "):
			step = strings.TrimPrefix(l, "== ")
		case strings.Contains(l, " requests to ") && strings.HasPrefix(l, "  "):
			cur = map[string][2]float64{}
			out[step] = append(out[step], cur)
		default:
			if m := rowRE.FindStringSubmatch(l); m != nil && cur != nil {
				a, _ := strconv.ParseFloat(m[3], 64)
				b, _ := strconv.ParseFloat(m[5], 64)
				cur[m[1]] = [2]float64{a, b}
			}
		}
	}
	return out
}

// TestDemo runs `make demo`'s program to its end and checks what it measured at each step, then
// that nothing it started is left: no process, no bound port.
func TestDemo(t *testing.T) {
	d := startDemo(t)
	listening := strings.Fields(strings.TrimPrefix(d.until("listening: ", 3*time.Minute), "listening: "))
	d.until("== 1.", time.Minute)
	pids := descendants(d.cmd.Process.Pid)
	d.until("== 4.", 2*time.Minute)
	pids = append(pids, descendants(d.cmd.Process.Pid)...)
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("demo: %v\n%s", err, d.output())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the demo did not finish:\n%s", d.output())
	}
	output := d.output()
	for _, l := range strings.Split(output, "\n") {
		if _, addrs, ok := strings.Cut(l, "closing what it listened on: "); ok {
			listening = append(listening, strings.Fields(addrs)...)
		}
	}
	if len(pids) < 7 || len(listening) < 16 {
		t.Fatalf("saw %d processes and %d addresses: %v %v", len(pids), len(listening), pids, listening)
	}
	checkGone(t, pids, listening)

	steps := tables(output)
	find := func(prefix string, n int) map[string][2]float64 {
		t.Helper()
		for s, ts := range steps {
			if strings.HasPrefix(s, prefix) && n < len(ts) {
				return ts[n]
			}
		}
		t.Fatalf("no table %d in step %q:\n%s", n, prefix, output)
		return nil
	}
	for _, c := range []struct {
		step      string
		table     int
		lane      string
		low, high float64
	}{
		{"0.", 0, "stable", 100, 100},
		{"1.", 0, "canary", 100, 100}, // the test header
		{"1.", 1, "stable", 100, 100}, // everyone else
		{"2. graylane weight bservice canary 5", 0, "canary", 3.5, 6.5},
		{"2. graylane weight bservice canary 25", 0, "canary", 22, 28},
		{"3.", 0, "stable", 100, 100},
		{"3.", 1, "canary", 100, 100},
		{"4. blue/green", 0, "blue", 100, 100},
		{"4. blue/green", 1, "green", 100, 100},
		{"4. graylane promote", 0, "green", 100, 100},
		{"4. graylane rollback", 0, "blue", 100, 100},
	} {
		got := find(c.step, c.table)[c.lane]
		if got[0] != got[1] || got[0] < c.low || got[0] > c.high {
			t.Errorf("step %q table %d: %s got %.1f%% through the gateway, %.1f%% through the Kratos client; want the same, in [%g, %g]",
				c.step, c.table, c.lane, got[0], got[1], c.low, c.high)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`gateway: plugin runner:\s+(\d+) users were in the canary at 5 %; at 25 % (\d+) of them still are \(100 %\)`),
		regexp.MustCompile(`Kratos client: selector:\s+(\d+) users were in the canary at 5 %; at 25 % (\d+) of them still are \(100 %\)`),
		regexp.MustCompile(`canary\s+bservice-canary-1 \(canary\) > cservice-canary-1 \(canary\)\s+200\n`),
		regexp.MustCompile(`\(none\)\s+bservice-\d \(stable\) > cservice-1 \(stable\)`),
	} {
		if !want.MatchString(output) {
			t.Errorf("output lacks %s:\n%s", want, output)
		}
	}
	for _, f := range []string{"1-canary", "2-weight-5", "2-weight-25", "3-rollback", "4-bluegreen", "4-promote-green", "4-rollback-green"} {
		if !strings.Contains(output, " in Consul: as in steps/"+f+".yaml\n") {
			t.Errorf("output does not confirm steps/%s.yaml:\n%s", f, output)
		}
	}
	if strings.Contains(output, "cservice-canary-1 (canary)") && regexp.MustCompile(`\(none\)\s+\S+ \(\w+\) > cservice-canary-1`).MatchString(output) {
		t.Errorf("a request without the lane reached cservice's canary:\n%s", output)
	}
}

// TestDemoInterrupt: Ctrl-C in the middle of the demo stops everything it started.
func TestDemoInterrupt(t *testing.T) {
	d := startDemo(t)
	listening := strings.Fields(strings.TrimPrefix(d.until("listening: ", 3*time.Minute), "listening: "))
	d.until("== 2.", time.Minute)
	pids := descendants(d.cmd.Process.Pid)
	if len(pids) < 6 {
		t.Fatalf("saw %d processes: %v", len(pids), pids)
	}
	d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-d.done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
			t.Errorf("exit: %v, want status 130\n%s", err, d.output())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the demo did not stop on SIGINT:\n%s", d.output())
	}
	if !strings.Contains(d.output(), "interrupted: everything the demo started is stopped") {
		t.Errorf("output:\n%s", d.output())
	}
	checkGone(t, pids, listening)
}
