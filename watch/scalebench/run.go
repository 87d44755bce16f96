package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/watch"
)

// benchConfig is what the flags set.
type benchConfig struct {
	instances    int
	quiet        time.Duration
	changes      int
	readyTimeout time.Duration
	nativeH2     bool
}

// result is one row of the table.
type result struct {
	mode     string
	services int

	ready      int // views ready
	readyIn    time.Duration
	peakConns  int
	conns      int // after the views were ready
	dials      int64
	refused    uint64
	goroutines float64 // per service
	heap       float64 // bytes per service
	stack      float64 // bytes per service, the goroutines' stacks
	rss        float64 // bytes per service

	quietCounted  bool
	quietRequests int64
	quiet         time.Duration

	p50, p99 time.Duration
	missed   int // changes not seen within 10 s
	// The registrations' own time: before the watcher started (idle), and while it watched; and
	// the propagation counted from the registration's answer, the watcher's own share.
	writeIdle, writeWatched time.Duration
	own50, own99            time.Duration
	// decide is the cost of one decision on a service's snapshot while the watcher follows all of
	// them (testing.Benchmark, ns per decision).
	decide float64
}

// optionsEvery is how many services share one that has recorded decision options.
const optionsEvery = 20

func serviceName(i int) string { return fmt.Sprintf("svc-%04d", i) }

// logf reports progress on stderr; the table goes to stdout.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "scalebench: "+format+"\n", args...)
}

// runSize starts an agent, registers n services and measures each mode against it.
func runSize(cfg benchConfig, n int, modes []string) ([]result, error) {
	dir, err := os.MkdirTemp("", "graylane-scalebench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	a, err := consultest.StartTLSAgent(dir)
	if err != nil {
		return nil, err
	}
	defer a.Stop()
	reg, closeReg, err := registrationClient(a.HTTPAddr)
	if err != nil {
		return nil, err
	}
	defer closeReg()
	if err := register(reg, n, cfg.instances); err != nil {
		return nil, err
	}
	var out []result
	for _, mode := range modes {
		closeReg() // its idle connections would count as the watcher's
		r, err := runCase(cfg, a, reg, closeReg, mode, n)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// registrationClient returns a client of the agent for the registrations, and the function that
// closes its idle connections.
func registrationClient(addr string) (*api.Client, func(), error) {
	conf := api.DefaultNonPooledConfig()
	conf.Address = addr
	conf.Transport.MaxIdleConnsPerHost = 16
	c, err := api.NewClient(conf)
	return c, conf.Transport.CloseIdleConnections, err
}

// register registers n services × instances through the catalog: instance 0 of each is a canary at
// 10 %, the others stable; one service in optionsEvery has recorded decision options, in its state
// and its options key, as the registrar writes them.
func register(c *api.Client, n, instances int) error {
	start := time.Now()
	type job struct{ svc, inst int }
	jobs := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := registerInstance(c, j.svc, j.inst, "10"); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		}()
	}
	for s := range n {
		for i := range instances {
			jobs <- job{s, i}
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	opts, _ := json.Marshal(gray.Options{StickyHeader: "x-user-id"})
	state, _ := json.Marshal(map[string]any{"instances": map[string]any{}, "options": json.RawMessage(opts)})
	for s := 0; s < n; s += optionsEvery {
		name := serviceName(s)
		for key, value := range map[string][]byte{
			watch.DefaultKVPrefix + "/options/" + name:             opts,
			watch.DefaultKVPrefix + "/services/" + name + "/state": state,
		} {
			if _, err := c.KV().Put(&api.KVPair{Key: key, Value: value}, nil); err != nil {
				return err
			}
		}
	}
	logf("%d services × %d instances registered through the catalog in %v", n, instances, time.Since(start).Round(time.Millisecond))
	return nil
}

// registerInstance registers instance inst of service svc on node node-inst; instance 0 is the
// canary at weight.
func registerInstance(c *api.Client, svc, inst int, weight string) error {
	meta := map[string]string{"version": "v1"}
	if inst == 0 {
		meta = map[string]string{"version": "v2", "canary": "true", "weight": weight}
	}
	node := "node-" + strconv.Itoa(inst)
	_, err := c.Catalog().Register(&api.CatalogRegistration{
		Node: node, Address: fmt.Sprintf("10.1.%d.%d", inst/250, inst%250+1), SkipNodeUpdate: true,
		Service: &api.AgentService{ID: fmt.Sprintf("%s-%d", serviceName(svc), inst), Service: serviceName(svc),
			Address: fmt.Sprintf("10.1.%d.%d", inst/250, inst%250+1), Port: 8000 + svc, Meta: meta},
	}, nil)
	return err
}

// watcherConfig returns the watcher's configuration for mode against agent a, with its connections
// counted by ctr, and the agent port they go to.
func watcherConfig(cfg benchConfig, a *consultest.Agent, mode string, ctr *counter) (*api.Config, int) {
	if mode == "http" {
		conf := watch.NewConfig(a.HTTPAddr)
		conf.Transport.DialContext = ctr.dialer(true)
		ctr.counted.Store(true)
		return conf, portOf(a.HTTPAddr)
	}
	conf := watch.NewConfig("https://" + a.HTTPSAddr)
	conf.TLSConfig = api.TLSConfig{CAPem: a.CAPEM}
	if cfg.nativeH2 {
		conf.Transport.DialContext = ctr.dialer(false)
	} else {
		tlsConf := a.TLSClientConfig()
		tlsConf.NextProtos = []string{"h2", "http/1.1"}
		tlsConf.ServerName = "127.0.0.1"
		conf.Transport.DialTLSContext = ctr.tlsDialer(tlsConf)
		ctr.counted.Store(true)
	}
	return conf, portOf(a.HTTPSAddr)
}

// memory is what the process holds.
type memory struct {
	goroutines       int
	heap, stack, rss uint64
}

func measureMemory() memory {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{goroutines: runtime.NumGoroutine(), heap: ms.HeapInuse, stack: ms.StackInuse, rss: rss()}
}

// rss returns the process's resident set in bytes, from /proc.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// runCase runs one watcher of n services on agent watched, in mode, and measures it; changes are
// registered through reg, whose idle connections closeReg closes.
func runCase(cfg benchConfig, watched *consultest.Agent, reg *api.Client, closeReg func(), mode string, n int) (result, error) {
	r := result{mode: mode, services: n, quiet: cfg.quiet}
	ctr := &counter{}
	conf, port := watcherConfig(cfg, watched, mode, ctr)
	before := measureMemory()

	r.writeIdle = writeLatency(reg, n, cfg.changes)
	stop := make(chan struct{})
	peak := peakConns(port, stop)
	start := time.Now()
	w, err := watch.New(conf)
	if err != nil {
		close(stop)
		return r, err
	}
	defer w.Close()
	views := make([]*watch.ServiceView, n)
	for i := range views {
		views[i] = w.Service(serviceName(i))
	}
	deadline := time.NewTimer(cfg.readyTimeout)
wait:
	for _, v := range views {
		select {
		case <-v.Ready():
		case <-deadline.C:
			break wait
		}
	}
	deadline.Stop()
	r.readyIn = time.Since(start)
	for _, v := range views {
		select {
		case <-v.Ready():
			r.ready++
		default:
		}
	}
	close(stop)
	r.peakConns = <-peak
	logf("%s, %d services: %d ready in %v, %d connections at most", mode, n, r.ready, r.readyIn.Round(time.Millisecond), r.peakConns)

	time.Sleep(time.Second) // what the views became ready with settles
	after := measureMemory()
	r.conns = openConns(port)
	r.goroutines = float64(after.goroutines-before.goroutines) / float64(n)
	r.heap = float64(int64(after.heap)-int64(before.heap)) / float64(n)
	r.stack = float64(int64(after.stack)-int64(before.stack)) / float64(n)
	r.rss = float64(int64(after.rss)-int64(before.rss)) / float64(n)

	r.quietCounted = ctr.counted.Load()
	q := ctr.requests.Load()
	time.Sleep(cfg.quiet)
	r.quietRequests = ctr.requests.Load() - q
	logf("%s, %d services: %d requests in %v of quiet", mode, n, r.quietRequests, cfg.quiet)

	if r.ready == n {
		r.decide = decideCost(views[n/2])
		r.p50, r.p99, r.writeWatched, r.own50, r.own99, r.missed = propagation(reg, views, cfg.changes)
	}
	r.dials = ctr.dials.Load()
	r.refused = w.Refused()
	w.Close()
	closeReg()
	time.Sleep(200 * time.Millisecond)
	if left := openConns(port); left > 0 {
		logf("%s, %d services: %d connections still open after Close", mode, n, left)
	}
	return r, nil
}

// propagation times changes weight changes of random services' canaries, from the catalog
// registration to the view's snapshot showing the weight (p50, p99); write is the registrations'
// own p50, and own50 and own99 count from the registration's answer instead, the watcher's share
// (0 when the view showed the change before the agent answered the registration).
func propagation(reg *api.Client, views []*watch.ServiceView, changes int) (p50, p99, write, own50, own99 time.Duration, missed int) {
	var lat, writes, own []time.Duration
	for k := range changes {
		i := rand.IntN(len(views))
		v := views[i]
		weight := gray.Weight(1 + k) // never the 10 % registered, never the previous change
		changed := v.Changed()
		t0 := time.Now()
		if err := registerInstance(reg, i, 0, weight.String()); err != nil {
			logf("change %d: %v", k, err)
			missed++
			continue
		}
		wrote := time.Since(t0)
		writes = append(writes, wrote)
		timeout := time.After(10 * time.Second)
	seen:
		for canaryWeight(v) != weight {
			select {
			case <-changed:
				changed = v.Changed()
			case <-timeout:
				missed++
				break seen
			}
		}
		if canaryWeight(v) == weight {
			took := time.Since(t0)
			lat = append(lat, took)
			own = append(own, took-wrote)
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0, 0, 0, missed
	}
	p50, p99 = percentiles(lat)
	write, _ = percentiles(writes)
	own50, own99 = percentiles(own)
	logf("the registrations themselves took %v at p50 (the propagation times include them); from their answers: p50 %v, p99 %v",
		write.Round(10*time.Microsecond), own50.Round(10*time.Microsecond), own99.Round(10*time.Microsecond))
	return p50, p99, write, own50, own99, missed
}

// decideCost returns the nanoseconds of one decision on v's snapshot for a request of a user with
// a sticky key, as a gateway makes it: the median of three testing.Benchmark runs.
func decideCost(v *watch.ServiceView) float64 {
	req := &gray.StaticRequest{Headers: map[string]string{"x-user-id": "user-42", "userid": "7"}, URLPath: "/api/order", HTTPMethod: "GET"}
	var runs []float64
	for range 3 {
		res := testing.Benchmark(func(b *testing.B) {
			for b.Loop() {
				v.Snapshot().Decide(req)
			}
		})
		runs = append(runs, float64(res.T.Nanoseconds())/float64(res.N))
	}
	slices.Sort(runs)
	return runs[1]
}

// writeLatency returns the p50 of changes registrations of random services' canaries with no
// watcher following them: what the agent's write costs by itself.
func writeLatency(reg *api.Client, services, changes int) time.Duration {
	var writes []time.Duration
	for k := range changes {
		t0 := time.Now()
		if err := registerInstance(reg, rand.IntN(services), 0, gray.Weight(5000+k).String()); err != nil {
			logf("idle write %d: %v", k, err)
			continue
		}
		writes = append(writes, time.Since(t0))
	}
	if len(writes) == 0 {
		return 0
	}
	p50, _ := percentiles(writes)
	return p50
}

// percentiles returns the p50 and p99 of ds, which it sorts.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(ds)
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)]
}

func canaryWeight(v *watch.ServiceView) gray.Weight {
	for _, l := range v.Snapshot().Lanes() {
		if l.Name == "canary" {
			return l.Weight
		}
	}
	return 0
}

// printTable writes the results as a markdown table.
func printTable(out io.Writer, rs []result) {
	fmt.Fprintln(out, "| mode | services | ready | conns (peak / after) | dials | 429 | goroutines / svc | heap / svc | stacks / svc | RSS / svc | requests in quiet | p50 | p99 | write p50 (idle / watched) | from the write's answer p50 / p99 | decision |")
	fmt.Fprintln(out, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
	for _, r := range rs {
		ready := fmt.Sprintf("%d of %d after %v", r.ready, r.services, r.readyIn.Round(10*time.Millisecond))
		if r.ready == r.services {
			ready = fmt.Sprintf("all in %v", r.readyIn.Round(10*time.Millisecond))
		}
		quiet := "not counted"
		if r.quietCounted {
			quiet = fmt.Sprintf("%d in %v", r.quietRequests, r.quiet)
		}
		p50, p99, write, own, decide := "-", "-", "-", "-", "-"
		if r.p50 > 0 {
			p50, p99 = ms(r.p50), ms(r.p99)
			if r.missed > 0 {
				p99 += fmt.Sprintf(" (%d missed)", r.missed)
			}
			write = ms(r.writeIdle) + " / " + ms(r.writeWatched)
			own = ms(r.own50) + " / " + ms(r.own99)
			decide = fmt.Sprintf("%.0f ns", r.decide)
		}
		fmt.Fprintf(out, "| %s | %d | %s | %d / %d | %d | %d | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.mode, r.services, ready, r.peakConns, r.conns, r.dials, r.refused, r.goroutines,
			kb(r.heap), kb(r.stack), kb(r.rss), quiet, p50, p99, write, own, decide)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func kb(b float64) string { return fmt.Sprintf("%.1f kB", b/1024) }
