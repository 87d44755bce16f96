package portal

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// BenchmarkChangeToEvent measures how long a change committed through the registrar (as the
// command commits it) takes to reach an open page's event stream: the watcher's blocking query, the
// model read, the render and the event. Reported as ms/change beside the commit alone.
func BenchmarkChangeToEvent(b *testing.B) {
	svc := registerRelease(b, agent, "")
	_, ts := startPortal(b, nil, Config{})
	br := newBrowser(b, ts)
	br.signIn("alice")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/events?service="+svc+"&since=0", nil)
	resp, err := br.c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	r := newRegistrar(b, agent, "", "bench")
	var commit, total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := gray.Weight(100 + i%2000)
		start := time.Now()
		if _, err := r.Do(context.Background(), svc, registrar.SetWeight{Lane: "canary", Weight: w}); err != nil {
			b.Fatal(err)
		}
		commit += time.Since(start)
		want := `data-lane=\"canary\" data-share=\"` + w.String() + `\"`
		for line := range lines {
			if strings.Contains(line, want) {
				break
			}
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/change")
	b.ReportMetric(float64(commit.Microseconds())/1000/float64(b.N), "ms/commit")
}
