package gray_test

import (
	"maps"
	"slices"
	"testing"

	"github.com/graylane/graylane/gray"
)

// withoutTriggers returns req without the headers t lists, and without its Cookie header when t
// lists cookies: a request a gateway would not ask a decision for.
func withoutTriggers(req *gray.StaticRequest, t gray.Triggers) *gray.StaticRequest {
	out := *req
	out.Headers = maps.Clone(req.Headers)
	for _, h := range t.Headers {
		delete(out.Headers, h)
	}
	if len(t.Cookies) > 0 {
		delete(out.Headers, "cookie")
	}
	return &out
}

// checkTriggers requires that req, once stripped of what the snapshot's Triggers list, decides
// Base (unless any request may leave the base), and that the lists are sorted and lower case.
func checkTriggers[T any](tb testing.TB, snap *gray.Snapshot[T], req *gray.StaticRequest) {
	tb.Helper()
	tr := snap.Triggers()
	if tr.Always {
		if len(tr.Headers) > 0 || len(tr.Cookies) > 0 {
			tb.Fatalf("Triggers %+v: Always with lists", tr)
		}
		return
	}
	if !slices.IsSorted(tr.Headers) || !slices.IsSorted(tr.Cookies) || !slices.Contains(tr.Headers, snap.TagKey().Lower()) {
		tb.Fatalf("Triggers %+v: lists not sorted, or without the tag header %s", tr, snap.TagKey().Lower())
	}
	stripped := withoutTriggers(req, tr)
	if d := snap.Decide(stripped); d != snap.Base() {
		tb.Fatalf("Triggers %+v: a request without them (%+v) decided %+v, not the base %+v", tr, stripped.Headers, *d, *snap.Base())
	}
}

func TestTriggers(t *testing.T) {
	stable := gray.Instance[string]{ID: "s1", Meta: map[string]string{}, Value: "s1"}
	canary := func(meta map[string]string) []gray.Instance[string] {
		m := map[string]string{"canary": "true"}
		maps.Copy(m, meta)
		return []gray.Instance[string]{stable, {ID: "c1", Meta: m, Value: "c1"}}
	}
	cases := []struct {
		name      string
		instances []gray.Instance[string]
		opts      gray.Options
		want      gray.Triggers
	}{
		{"no gray lane: the tag header only", []gray.Instance[string]{stable}, gray.Options{},
			gray.Triggers{Headers: []string{"x-md-global-gray-lane"}}},
		{"weight 0, no rule: the tag header only", canary(nil), gray.Options{},
			gray.Triggers{Headers: []string{"x-md-global-gray-lane"}}},
		{"the article's rules", canary(map[string]string{"match": articleMatchJSON}), gray.Options{TagKey: "x-lane"},
			gray.Triggers{Headers: []string{"userid", "x-lane"}, Cookies: nil}},
		{"a header is preferred to a cookie in one rule; a cookie-only rule lists the cookie",
			canary(map[string]string{"match": `[{"cookie":[{"name":"uid","value_match":"7"}],"header":[{"key":"X-Tester","present":true}]},{"cookie":{"name":"beta","prefix":"1"}}]`}),
			gray.Options{}, gray.Triggers{Headers: []string{"x-md-global-gray-lane", "x-tester"}, Cookies: []string{"beta"}}},
		{"a rule on the whole Cookie header lists the header", canary(map[string]string{"match": `[{"cookie":{"regex":"beta"}}]`}),
			gray.Options{}, gray.Triggers{Headers: []string{"cookie", "x-md-global-gray-lane"}}},
		{"an absent header needs nothing", canary(map[string]string{"match": `[{"header":[{"key":"x-prod","absent":true}]}]`}),
			gray.Options{}, gray.Triggers{Always: true}},
		{"a rule on the path alone", canary(map[string]string{"match": `[{"header":{"key":"a","present":true}},{"uri":{"prefix":"/beta"}}]`}),
			gray.Options{}, gray.Triggers{Always: true}},
		{"a weighted share", canary(map[string]string{"weight": "5", "match": `[{"header":{"key":"a","present":true}}]`}),
			gray.Options{StickyHeader: "x-user-id"}, gray.Triggers{Always: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := gray.NewSnapshot("bservice", c.instances, c.opts)
			if got := snap.Triggers(); !equalTriggers(got, c.want) {
				t.Fatalf("Triggers() = %+v, want %+v", got, c.want)
			}
			for _, req := range []*gray.StaticRequest{
				{Headers: map[string]string{"userid": "123", "x-tester": "", "cookie": "uid=7; beta=1", "a": "1", "x-lane": "canary", "x-md-global-gray-lane": "canary"}, URLPath: "/beta/x"},
				{Headers: map[string]string{"email": "li@some-company-name.com"}, URLPath: "/api/user"},
			} {
				checkTriggers(t, snap, req)
			}
		})
	}
}

func equalTriggers(a, b gray.Triggers) bool {
	return a.Always == b.Always && slices.Equal(a.Headers, b.Headers) && slices.Equal(a.Cookies, b.Cookies)
}
