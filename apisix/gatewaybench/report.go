package main

// The report: every figure is the median over the rounds, with the lowest and highest round after
// it. Ratios to the plain route are taken within each round (the route against the plain route
// measured minutes apart at most), then their median is reported.

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// measure is one route's figures in one round. The CPU figures are NaN when unknown.
type measure struct {
	rate      float64 // 2xx answers per second
	p50, p99  time.Duration
	errors    int
	firstErr  string
	gatewayUS float64 // nginx workers' CPU per 2xx answer, µs
	runnerUS  float64 // the runner's CPU per 2xx answer, µs
	clientUS  float64 // the load generator's CPU per 2xx answer, µs
	// otherCores is the CPU the rest of the machine used during the run (the backends, and anything
	// else that runs there), in cores.
	otherCores float64
}

func (m measure) totalUS() float64 { return m.gatewayUS + m.runnerUS }

// spread is the median of some values with their lowest and highest. Unknown values (NaN: a CPU
// figure that could not be read in some round) are left out, and the spread says how many of the
// rounds it holds; without a known value the spread is unknown.
type spread struct {
	med, lo, hi  float64
	known, total int
}

func spreadOf(vs []float64) spread {
	s := slices.DeleteFunc(slices.Clone(vs), math.IsNaN)
	out := spread{known: len(s), total: len(vs)}
	if len(s) == 0 {
		return out
	}
	slices.Sort(s)
	out.med, out.lo, out.hi = s[len(s)/2], s[0], s[len(s)-1]
	if len(s)%2 == 0 {
		out.med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return out
}

// format writes the spread with f: "m (lo–hi)", or "m" when all rounds agree, or "n/a"; "[k of n
// rounds]" follows when some rounds are unknown.
func (s spread) format(f func(float64) string) string {
	if s.known == 0 {
		return "n/a"
	}
	out := f(s.med)
	if f(s.lo) != f(s.hi) {
		out = fmt.Sprintf("%s (%s–%s)", f(s.med), f(s.lo), f(s.hi))
	}
	return out + s.partial()
}

func (s spread) partial() string {
	if s.known == s.total {
		return ""
	}
	return fmt.Sprintf(" [%d of %d rounds]", s.known, s.total)
}

// column returns one figure of a route over the rounds.
func column(rounds []measure, f func(measure) float64) spread {
	vs := make([]float64, len(rounds))
	for i, m := range rounds {
		vs[i] = f(m)
	}
	return spreadOf(vs)
}

// ratios returns a route's figure over the plain route's, round by round.
func ratios(rounds, plain []measure, f func(measure) float64) spread {
	vs := make([]float64, len(rounds))
	for i := range rounds {
		vs[i] = f(rounds[i]) / f(plain[i])
	}
	return spreadOf(vs)
}

func thousands(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func millis(v float64) string { // v in ms
	n, unit := latencyUnit(v)
	return n(v) + unit
}

// latencyUnit returns how to write latencies of v's size (in ms) and their unit.
func latencyUnit(v float64) (func(float64) string, string) {
	switch {
	case v >= 10:
		return func(x float64) string { return fmt.Sprintf("%.0f", x) }, " ms"
	case v >= 1:
		return func(x float64) string { return fmt.Sprintf("%.1f", x) }, " ms"
	}
	return func(x float64) string { return fmt.Sprintf("%.0f", x*1000) }, " µs"
}

// latency writes a spread of latencies in ms with the median's unit once: "7.0 ms (6.9–7.2)".
func latency(s spread) string {
	if s.known == 0 {
		return "n/a"
	}
	n, unit := latencyUnit(s.med)
	if n(s.lo) == n(s.hi) {
		return n(s.med) + unit + s.partial()
	}
	return fmt.Sprintf("%s%s (%s–%s)", n(s.med), unit, n(s.lo), n(s.hi)) + s.partial()
}

func micros(v float64) string { return fmt.Sprintf("%.0f", v) }

func cores(v float64) string { return fmt.Sprintf("%.2f", v) }

func times(v float64) string { return fmt.Sprintf("%.2f×", v) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// table returns the markdown table of the routes' figures; results[i] are routes[i]'s rounds,
// and routes[0] is the plain route.
func table(routes []benchRoute, results [][]measure) string {
	var b strings.Builder
	b.WriteString("| route | req/s | p50 | p99 | errors | gateway CPU µs/req | runner CPU µs/req | req/s vs plain | CPU vs plain |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	plain := results[0]
	for i, r := range routes {
		rs := results[i]
		errs := 0
		for _, m := range rs {
			errs += m.errors
		}
		rate, cpu := "1×", "1×"
		if i > 0 {
			rate = ratios(rs, plain, func(m measure) float64 { return m.rate }).format(times)
			cpu = ratios(rs, plain, measure.totalUS).format(times)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s |\n", r.title,
			column(rs, func(m measure) float64 { return m.rate }).format(thousands),
			latency(column(rs, func(m measure) float64 { return ms(m.p50) })),
			latency(column(rs, func(m measure) float64 { return ms(m.p99) })),
			errs,
			column(rs, func(m measure) float64 { return m.gatewayUS }).format(micros),
			column(rs, func(m measure) float64 { return m.runnerUS }).format(micros),
			rate, cpu)
	}
	return b.String()
}

// machine describes where the figures were taken: CPU model and count, Go version, date.
func machine() string {
	model, count := "unknown CPU", 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			switch k = strings.TrimSpace(k); {
			case !ok:
			case k == "processor":
				count++
			case k == "model name" && count == 1:
				model = strings.TrimSpace(v)
			}
		}
	}
	if count == 0 {
		count = runtime.NumCPU()
	}
	return fmt.Sprintf("%d × %s, %s/%s, %s, %s", count, model, runtime.GOOS, runtime.GOARCH,
		runtime.Version(), time.Now().UTC().Format("2006-01-02"))
}
