package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSoak runs the soak for a minute (SOAK sets another duration; make soak runs ten) and requires
// its goals: no production request in a lane whose weight did not cover it, no failure while the
// request's lane had a steady instance, no user whose lane changed without a release step, no
// request the planes decided differently, and both planes following every step within the bound.
func TestSoak(t *testing.T) {
	d := time.Minute
	if v := os.Getenv("SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("SOAK=%s: %v", v, err)
		}
	}
	var out strings.Builder
	rep, err := runSoak(context.Background(), &out, t.TempDir(), d)
	if rep != nil {
		rep.print(&out)
	}
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.ok() {
		t.Fatal("a goal was missed: see the table above")
	}
	for p, st := range rep.Planes {
		if st.Production < 1000 {
			t.Errorf("%s: only %d production requests; the soak measured too little", planeNames[p], st.Production)
		}
	}
}
