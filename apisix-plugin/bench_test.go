package main

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/graylane/graylane/internal/apisixtest"
)

// benchEnv is Consul with bservice's lanes and the runner (with the baseline plugin) watching it;
// env adds variables to the runner's environment. The plugin reads Consul only through its watch,
// never per request.
func benchEnv(b *testing.B, env ...string) (sock string, graylaneToken, baselineToken uint32) {
	b.Helper()
	ge := startGrayEnv(b, env...)
	c := apisixtest.Dial(b, ge.sock)
	g, err := c.PrepareConf("bench-graylane", [2]string{"graylane", benchConf})
	if err != nil {
		b.Fatal(err)
	}
	n, err := c.PrepareConf("bench-baseline", [2]string{"graylane-baseline", "{}"})
	if err != nil {
		b.Fatal(err)
	}
	waitLane(b, c, &apisixtest.Request{Token: g, ID: 1, IP: untrusted, Path: "/api/user", Headers: [][2]string{{"userid", "123"}}}, "canary", 20*time.Second)
	return ge.sock, g, n
}

// benchRequest is a browser-like request: a dozen headers, a sticky user, a query.
func benchRequest(token uint32, user int) *apisixtest.Request {
	return &apisixtest.Request{Token: token, ID: 1, IP: untrusted, Path: "/api/order/42",
		Args: [][2]string{{"page", "2"}, {"sort", "desc"}},
		Headers: [][2]string{
			{"host", "api.example.com"}, {"user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"},
			{"accept", "application/json"}, {"accept-encoding", "gzip, deflate, br"}, {"accept-language", "en-US,en;q=0.5"},
			{"connection", "keep-alive"}, {"x-request-id", "3f1c2a7e-1b6d-4e2a-9c1f-0a5b8d7e6f40"},
			{"cookie", "session=abcdef0123456789; theme=dark"}, {"x-user-id", fmt.Sprintf("user-%d", user)},
			{"x-forwarded-for", "203.0.113.9"},
		}}
}

// userMixes are the request mixes the runner benchmarks compare: sticky users spread over the
// canary's weight, and every request in the base lane.
var userMixes = []struct {
	name string
	user func(i int) string
}{
	{"users", func(i int) string { return fmt.Sprintf("user-%d", i%1000) }},
	{"base", func(int) string { return stableUser(0) }},
}

// BenchmarkRoundTrip measures HTTPReqCall -> answer through the real runner over its unix socket,
// graylane against a plugin that does nothing, interleaved call by call on one connection so that
// both see the same machine. Metrics: ns per call of each and their ratio. Two request mixes:
// "users" spreads users over the canary's 10 % (one call in ten sets the lane header, a header
// change in the runner's answer); "base" keeps every user in the base lane, so the plugin only reads
// and decides. Either way the plugin reads the headers through the runner's Header(), which builds
// the runner's header map on every call.
func BenchmarkRoundTrip(b *testing.B) {
	sock, g, n := benchEnv(b)
	for _, mix := range userMixes {
		b.Run(mix.name, func(b *testing.B) {
			c := apisixtest.Dial(b, sock)
			var gray, base time.Duration
			reqs := [2]*apisixtest.Request{benchRequest(g, 0), benchRequest(n, 0)}
			i := 0
			for b.Loop() {
				i++
				reqs[0].Headers[8][1] = mix.user(i)
				reqs[1].Headers[8][1] = reqs[0].Headers[8][1]
				first := i % 2 // alternate which goes first
				for k := range 2 {
					r := reqs[(first+k)%2]
					start := time.Now()
					if _, err := c.Call(r); err != nil {
						b.Fatal(err)
					}
					if r == reqs[0] {
						gray += time.Since(start)
					} else {
						base += time.Since(start)
					}
				}
			}
			b.ReportMetric(float64(gray.Nanoseconds())/float64(b.N), "graylane-ns/call")
			b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "baseline-ns/call")
			b.ReportMetric(float64(gray)/float64(base), "ratio")
		})
	}
}

// BenchmarkConcurrentLatency: 16 connections (APISIX workers) calling at once, at least 50,000
// calls per plugin; p50 and p99 of graylane and of the baseline, measured in alternating rounds.
func BenchmarkConcurrentLatency(b *testing.B) {
	sock, g, n := benchEnv(b)
	const conns = 16
	calls := max(b.N, 50000)
	cs := make([]*apisixtest.Conn, conns)
	for i := range cs {
		cs[i] = apisixtest.Dial(b, sock)
	}
	measure := func(token uint32, count int) []time.Duration {
		lat := make([][]time.Duration, conns)
		var wg sync.WaitGroup
		for w := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := benchRequest(token, w)
				for i := w; i < count; i += conns {
					r.Headers[8][1] = fmt.Sprintf("user-%d", i)
					start := time.Now()
					if _, err := cs[w].Call(r); err != nil {
						b.Error(err)
						return
					}
					lat[w] = append(lat[w], time.Since(start))
				}
			}()
		}
		wg.Wait()
		return slices.Concat(lat...)
	}
	b.ResetTimer()
	var gray, base []time.Duration
	const rounds = 5
	for range rounds {
		gray = append(gray, measure(g, calls/rounds)...)
		base = append(base, measure(n, calls/rounds)...)
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(float64(len(d)-1)*p)].Nanoseconds())
	}
	b.ReportMetric(float64(len(gray)), "calls")
	b.ReportMetric(pct(gray, 0.50), "graylane-p50-ns")
	b.ReportMetric(pct(gray, 0.99), "graylane-p99-ns")
	b.ReportMetric(pct(base, 0.50), "baseline-p50-ns")
	b.ReportMetric(pct(base, 0.99), "baseline-p99-ns")
}

// benchConf is the conf of the benchmarks: a sticky user header and trusted networks, no echo.
const benchConf = `{"service":"bservice","sticky_header":"x-user-id","trusted_cidrs":["10.0.0.0/8"]}`

// BenchmarkRunnerCost measures what a call costs inside the runner process, which the round trip's
// allocs/op (the client's) cannot show: heap allocations (go_memstats_mallocs_total) and CPU time
// (process_cpu_seconds_total, in ticks of 10 ms: hence 20,000 calls per plugin and round), read
// from the runner's /metrics before and after each plugin's share of the calls, the scrape's own
// allocations taken off. Request mixes as in BenchmarkRoundTrip.
func BenchmarkRunnerCost(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	sock, g, n := benchEnv(b, MetricsAddrEnv+"="+addr)
	const calls = 20000
	for _, mix := range userMixes {
		b.Run(mix.name, func(b *testing.B) {
			c := apisixtest.Dial(b, sock)
			scrape := runnerStats(b, addr)
			scrape = runnerStats(b, addr).minus(scrape) // what one scrape allocates
			var spent [2]runnerStat
			rounds := 0
			for b.Loop() {
				rounds++
				for k, token := range []uint32{g, n} {
					r := benchRequest(token, 0)
					before := runnerStats(b, addr)
					for i := range calls {
						r.Headers[8][1] = mix.user(i)
						if _, err := c.Call(r); err != nil {
							b.Fatal(err)
						}
					}
					d := runnerStats(b, addr).minus(before)
					d.mallocs -= scrape.mallocs
					spent[k].mallocs += d.mallocs
					spent[k].cpu += d.cpu
				}
			}
			per := float64(rounds * calls)
			b.ReportMetric(spent[0].mallocs/per, "graylane-runner-allocs/call")
			b.ReportMetric(spent[1].mallocs/per, "baseline-runner-allocs/call")
			b.ReportMetric(spent[0].cpu*1e9/per, "graylane-runner-cpu-ns/call")
			b.ReportMetric(spent[1].cpu*1e9/per, "baseline-runner-cpu-ns/call")
		})
	}
}

// runnerStat is the runner's allocation count and CPU seconds at one scrape.
type runnerStat struct{ mallocs, cpu float64 }

func (s runnerStat) minus(o runnerStat) runnerStat {
	return runnerStat{s.mallocs - o.mallocs, s.cpu - o.cpu}
}

// runnerStats scrapes the runner's go_memstats_mallocs_total and process_cpu_seconds_total.
func runnerStats(b *testing.B, addr string) runnerStat {
	b.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	families, err := new(expfmt.TextParser).TextToMetricFamilies(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	value := func(name string) float64 {
		f := families[name]
		if f == nil || len(f.Metric) != 1 {
			b.Fatalf("runner metrics: no %s", name)
		}
		m := f.Metric[0]
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Untyped.GetValue()
	}
	return runnerStat{value("go_memstats_mallocs_total"), value("process_cpu_seconds_total")}
}
