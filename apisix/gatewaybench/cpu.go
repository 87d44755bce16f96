package main

// CPU per request, read from /proc on the gateway's host: the user and system time (utime + stime
// in /proc/PID/stat) of APISIX's nginx workers and of graylane's runner before and after a run,
// divided by the requests answered. Only when the gateway runs on this host (or its processes are
// visible here) can it be read; otherwise the figures are unknown, and reported as n/a, never as 0.

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procGroup is a set of processes whose CPU time is summed: the gateway's workers or the runner.
type procGroup struct {
	name string
	env  string               // the variable that names the pids, when set
	find func() ([]int, bool) // the pids found in /proc, when env is not set
}

// cpuTime is the CPU time of a group's processes at one moment.
type cpuTime struct {
	pids  []int
	ticks map[int]uint64
}

// pids returns the group's processes: from its variable (pids separated by commas or spaces), else
// as found in /proc. None means the figure is unknown.
func (g *procGroup) pids() ([]int, error) {
	if v := strings.TrimSpace(os.Getenv(g.env)); v != "" {
		var out []int
		for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 0 {
				return nil, fmt.Errorf("%s=%q: %q is not a pid", g.env, v, f)
			}
			out = append(out, pid)
		}
		return out, nil
	}
	pids, _ := g.find()
	return pids, nil
}

// sample reads the CPU time of pids; a process that cannot be read is left out of ticks.
func sample(pids []int) cpuTime {
	t := cpuTime{pids: pids, ticks: make(map[int]uint64, len(pids))}
	for _, pid := range pids {
		if v, ok := procTicks(pid); ok {
			t.ticks[pid] = v
		}
	}
	return t
}

// since returns the ticks spent between before and t, and false when the figure is unknown: no
// process, or one that was not there at both ends (a worker restarted during the run).
func (t cpuTime) since(before cpuTime) (uint64, bool) {
	if len(before.pids) == 0 || len(t.ticks) != len(before.pids) || len(before.ticks) != len(before.pids) {
		return 0, false
	}
	var sum uint64
	for pid, b := range before.ticks {
		a, ok := t.ticks[pid]
		if !ok || a < b {
			return 0, false
		}
		sum += a - b
	}
	return sum, true
}

// procTicks returns utime + stime of a process, in clock ticks.
func procTicks(pid int) (uint64, bool) {
	f := procStat(pid)
	if len(f) < 13 { // f[0] is field 3 (state); utime and stime are fields 14 and 15
		return 0, false
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	return u + s, err1 == nil && err2 == nil
}

// procStat returns the fields of /proc/PID/stat after the command name (field 2, in parentheses,
// which may hold spaces): fields[0] is field 3 (state), fields[1] the parent pid, fields[19] the
// start time; nil when the process is gone.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// procParent returns a process's parent pid, 0 when unknown.
func procParent(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// procStart returns when a process started, in clock ticks after boot.
func procStart(pid int) uint64 {
	f := procStat(pid)
	if len(f) < 20 {
		return math.MaxUint64
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return math.MaxUint64
	}
	return v
}

// processes returns the pids of the processes whose argument list satisfies match.
func processes(match func(args []string) bool) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	self := os.Getpid()
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			out = append(out, pid)
		}
	}
	return out
}

// gatewayWorkers finds nginx worker processes; when some of them have an APISIX master (its
// command line names apisix, as the official images' and the shared recipe's do), only those.
func gatewayWorkers() ([]int, bool) {
	workers := processes(func(args []string) bool { return strings.HasPrefix(args[0], "nginx: worker process") })
	var apisix []int
	for _, pid := range workers {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", procParent(pid))); err == nil && bytes.Contains(b, []byte("apisix")) {
			apisix = append(apisix, pid)
		}
	}
	if len(apisix) > 0 {
		return apisix, true
	}
	return workers, len(workers) > 0
}

// runners finds graylane's plugin runner: a graylane-apisix-runner process started by the
// gateway (APISIX's ext-plugin.cmd), else the oldest one, so that the short-lived runners a test
// suite starts on the same machine are not counted. GRAYLANE_BENCH_RUNNER_PID overrides it.
func runners() ([]int, bool) {
	pids := processes(func(args []string) bool { return strings.Contains(args[0], "graylane-apisix-runner") })
	if len(pids) <= 1 {
		return pids, len(pids) > 0
	}
	masters := map[int]bool{}
	workers, _ := gatewayWorkers()
	for _, w := range workers {
		masters[procParent(w)] = true
	}
	var started []int
	for _, pid := range pids {
		for p, depth := procParent(pid), 0; p > 1 && depth < 4; p, depth = procParent(p), depth+1 {
			if masters[p] {
				started = append(started, pid)
				break
			}
		}
	}
	if len(started) > 0 {
		return started, true
	}
	oldest := pids[0]
	for _, pid := range pids[1:] {
		if procStart(pid) < procStart(oldest) {
			oldest = pid
		}
	}
	return []int{oldest}, true
}

// clockTicks is the kernel's clock tick (USER_HZ), the unit of /proc/PID/stat's times.
func clockTicks() float64 {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
			return float64(v)
		}
	}
	return 100 // Linux's USER_HZ on every common architecture
}

// machineTicks returns the busy and total CPU time of the whole machine (/proc/stat's cpu line), in
// clock ticks, and false when it cannot be read.
func machineTicks() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, false
	}
	// user nice system idle iowait irq softirq steal ...; guest time is already in user.
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += n
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy, total, true
}

// selfCPU returns the CPU time this process (the load generator) has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
