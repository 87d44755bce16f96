package selector_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// BenchmarkCommitToCall measures, on a real Consul with the Kratos consul registry (its default
// settings), the time from a weight change made with the registrar (what `graylane weight` does)
// to the first call that follows it, alternating the canary between 0 and 100 %. "spaced": each
// change 1.5 to 4 s after the previous one was seen, as an operator works; "back-to-back": 0 to
// 1.2 s after; "3-canaries": spaced, with the canary lane on three instances, which the registrar
// rewrites one after another (a lane takes the smallest weight its instances ask for, so a raise
// counts when the last of them is seen). The "+watcher" cases give the client WithWatcher, which
// takes the nodes' meta from graylane's watcher rather than waiting for the registry's ticker.
// Reported: median and p99 in milliseconds. Run with -benchtime 1x.
func BenchmarkCommitToCall(b *testing.B) {
	for _, bc := range []struct {
		name     string
		canaries int
		min, max time.Duration
		watcher  bool
	}{
		{"spaced", 1, 1500 * time.Millisecond, 4 * time.Second, false},
		{"back-to-back", 1, 0, 1200 * time.Millisecond, false},
		{"3-canaries", 3, 1500 * time.Millisecond, 4 * time.Second, false},
		{"back-to-back+watcher", 1, 0, 1200 * time.Millisecond, true},
		{"3-canaries-back-to-back+watcher", 3, 0, 1200 * time.Millisecond, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b)
			e.discOpts = nil // the registry's defaults
			opts := []selector.Option{selector.WithStickyHeader("x-user-id")}
			if bc.watcher {
				w, err := watch.New(watch.NewConfig(e.agent.HTTPAddr))
				if err != nil {
					b.Fatal(err)
				}
				defer w.Close()
				opts = append(opts, selector.WithWatcher(w))
			}
			median, p99 := measureCommitToCall(b, e, bc.canaries, 30, bc.min, bc.max, opts...)
			b.ReportMetric(float64(median)/1e6, "median-ms")
			b.ReportMetric(float64(p99)/1e6, "p99-ms")
		})
	}
}

func measureCommitToCall(tb testing.TB, e *env, canaries, samples int, min, max time.Duration, opts ...selector.Option) (median, p99 time.Duration) {
	e.start("bservice", "s1", gray.Meta{}, nil)
	for i := 1; i <= canaries; i++ {
		e.start("bservice", fmt.Sprintf("c%d", i), gray.Meta{Canary: true}, nil)
	}
	conn := e.dial("bservice", opts...)
	ctx := context.Background()
	user := userIn("bservice", 0, 1)
	waitFor(e.t, 10*time.Second, "both instances", func() bool { s, err := who(ctx, conn, "x-user-id", user); return err == nil && s == "s1" })

	var took []time.Duration
	for i := 0; i < samples; i++ {
		weight, canary := gray.Weight(10000), true
		if i%2 == 1 {
			weight, canary = 0, false
		}
		time.Sleep(min + time.Duration(rand.Int64N(int64(max-min))))
		start := time.Now()
		do(e.t, e.r, "bservice", registrar.SetWeight{Lane: "canary", Weight: weight})
		for {
			s, err := who(ctx, conn, "x-user-id", user)
			if err == nil && strings.HasPrefix(s, "c") == canary {
				break
			}
			if time.Since(start) > 10*time.Second {
				tb.Fatalf("change %d not seen after 10 s", i)
			}
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	return took[len(took)/2], took[(len(took)*99+99)/100-1]
}
