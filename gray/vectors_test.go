package gray_test

import (
	"strings"
	"testing"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/vectors"
)

// TestVectors runs the shared vectors through the core with gray.StaticRequest.
func TestVectors(t *testing.T) {
	cases, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) < 40 {
		t.Fatalf("only %d vectors; the shared file must hold at least 40", len(cases))
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			snap := gray.NewSnapshot(c.Service, c.GrayInstances(), c.Options)
			req := c.Request.StaticRequest()
			d := snap.Decide(req)
			for _, diff := range c.Check(d.Lane, d.Reason, d.Rule, d.Instances) {
				t.Error(diff)
			}
			checkProblems(t, snap.Problems(), c.Problems)
			checkTriggers(t, snap, req)
			// The same request with its headers in a map, as gRPC metadata holds them.
			if dh := snap.DecideWithHeaders(headerMap(req.Headers), req); dh != d {
				t.Errorf("DecideWithHeaders: %+v, Decide: %+v", *dh, *d)
			}
		})
	}
}

// checkProblems requires one reported problem for each wanted substring, and no other.
func checkProblems(t *testing.T, got []error, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d problems reported, want %d: %v", len(got), len(want), got)
		return
	}
	for _, w := range want {
		found := false
		for _, p := range got {
			if strings.Contains(p.Error(), w) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem mentions %q; got %v", w, got)
		}
	}
}

// headerMap returns headers in gRPC metadata's form: lower-case names, each with its values.
func headerMap(headers map[string]string) map[string][]string {
	m := make(map[string][]string, len(headers))
	for k, v := range headers {
		m[k] = []string{v}
	}
	return m
}
