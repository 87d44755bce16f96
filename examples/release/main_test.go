package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestRelease runs the demo on a real Consul and checks the traffic it reports at each step.
func TestRelease(t *testing.T) {
	var buf bytes.Buffer
	out = &buf
	err := run()
	output := buf.String()
	if err != nil {
		t.Fatalf("%v\n%s", err, output)
	}

	share := func(step, lane string) float64 {
		t.Helper()
		i := strings.Index(output, "== "+step+"\n")
		if i < 0 {
			t.Fatalf("no step %q:\n%s", step, output)
		}
		m := regexp.MustCompile(lane + ` ([0-9.]+)%`).FindStringSubmatch(output[i:])
		if m == nil {
			return 0
		}
		f, _ := strconv.ParseFloat(m[1], 64)
		return f
	}
	for _, c := range []struct {
		step, lane string
		want       float64
	}{
		{"rollback canary", "canary", 0},
		{"weight canary 5", "canary", 5},
		{"weight canary 25", "canary", 25},
		{"promote canary", "stable", 100},
		{"promote green on pay", "green", 100},
		{"rollback green on pay", "blue", 100},
	} {
		if got := share(c.step, c.lane); got < c.want-1 || got > c.want+1 {
			t.Errorf("%s: %s takes %.2f%% of users, want about %.0f%%", c.step, c.lane, got, c.want)
		}
	}
	for _, want := range []string{"tester       -> canary  (match)", "deregister bservice-1", "tester       -> green   (match)"} {
		if !strings.Contains(output, want) {
			t.Errorf("output lacks %q:\n%s", want, output)
		}
	}
}
