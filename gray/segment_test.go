package gray_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

func mustSegment(t testing.TB, name string, values ...string) *gray.Segment {
	t.Helper()
	s, err := gray.NewSegment(name, values)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// inst is an instance whose value is its ID, with meta given as key, value pairs.
func inst(id string, kv ...string) gray.Instance[string] {
	meta := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		meta[kv[i]] = kv[i+1]
	}
	return gray.Instance[string]{ID: id, Meta: meta, Value: id}
}

// userIDs are n values shaped like real user IDs ("u0001234567").
func userIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("u%010d", i*7919)
	}
	return out
}

func TestSegmentMembership(t *testing.T) {
	cases := []struct {
		name   string
		values []string
		in     []string
		out    []string
		len    int
	}{
		{"one", []string{"u1"}, []string{"u1"}, []string{"u2", "u", "u10", "U1", ""}, 1},
		{"duplicates count once", []string{"a", "b", "a", "a"}, []string{"a", "b"}, []string{"c", "ab"}, 2},
		{"empty list", nil, nil, []string{"a", ""}, 0},
		{"longest value", []string{strings.Repeat("x", 256)}, []string{strings.Repeat("x", 256)}, []string{strings.Repeat("x", 255), strings.Repeat("x", 257)}, 1},
		{"bytes, not text", []string{"é", "a b", "\x00"}, []string{"é", "a b", "\x00"}, []string{"e", "ab", "É"}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustSegment(t, "seg", c.values...)
			for _, v := range c.in {
				if !s.Contains(v) {
					t.Errorf("%q not found", v)
				}
			}
			for _, v := range c.out {
				if s.Contains(v) {
					t.Errorf("%q found", v)
				}
			}
			if s.Len() != c.len || s.Name() != "seg" {
				t.Errorf("Len %d Name %q, want %d and seg", s.Len(), s.Name(), c.len)
			}
		})
	}
	var none *gray.Segment
	if none.Contains("a") || none.Len() != 0 || none.Name() != "" {
		t.Error("a nil segment is not empty")
	}
}

// TestSegmentAgreesWithMap: 100,000 values, every member found, and 200,000 others not.
func TestSegmentAgreesWithMap(t *testing.T) {
	values := userIDs(gray.MaxSegmentValues)
	s := mustSegment(t, "users", values...)
	if s.Len() != len(values) {
		t.Fatalf("Len %d", s.Len())
	}
	for _, v := range values {
		if !s.Contains(v) {
			t.Fatalf("%q not found", v)
		}
	}
	set := make(map[string]bool, len(values))
	for _, v := range values {
		set[v] = true
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		v := fmt.Sprintf("u%010d", r.IntN(1_000_000_000))
		if s.Contains(v) != set[v] {
			t.Fatalf("%q: Contains %v, in the map %v", v, s.Contains(v), set[v])
		}
	}
}

func TestSegmentContainsDoesNotAllocate(t *testing.T) {
	s := mustSegment(t, "users", userIDs(1000)...)
	for _, v := range []string{"u0000007919", "u0000000001", "", strings.Repeat("x", 300)} {
		if n := testing.AllocsPerRun(100, func() { s.Contains(v) }); n != 0 {
			t.Errorf("Contains(%q): %v allocations", v, n)
		}
	}
}

// TestSegmentMemory: a segment of 100,000 values of 11 bytes keeps at most 40 bytes per value.
func TestSegmentMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures the heap")
	}
	values := userIDs(gray.MaxSegmentValues)
	perValue := segmentBytesPerValue(values)
	t.Logf("%.1f bytes per value", perValue)
	if perValue > 40 {
		t.Fatalf("%.1f bytes per value; the target is at most 40", perValue)
	}
}

// segmentBytesPerValue is the heap a segment of values holds, per value.
func segmentBytesPerValue(values []string) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, _ := gray.NewSegment("users", values)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(len(values))
}

func TestNewSegmentRejects(t *testing.T) {
	tooMany := make([]string, gray.MaxSegmentValues+1)
	for i := range tooMany {
		tooMany[i] = "x"
	}
	cases := []struct {
		name   string
		seg    string
		values []string
		says   string
	}{
		{"empty name", "", nil, `segment name "": a segment name has 1 to 64 characters`},
		{"long name", strings.Repeat("a", 65), nil, "1 to 64 characters"},
		{"upper case", "VIP", nil, `segment name "VIP": a segment name starts with a lower-case letter or a digit`},
		{"upper case inside", "vIp", nil, `segment name "vIp": a segment name uses only lower-case letters, digits, '.', '_' and '-'`},
		{"leading dash", "-vip", nil, "starts with a lower-case letter or a digit"},
		{"leading dot", ".vip", nil, "starts with a lower-case letter or a digit"},
		{"space", "vip users", nil, "uses only lower-case letters"},
		{"comma", "vip,beta", nil, "uses only lower-case letters"},
		{"slash", "team/vip", nil, "uses only lower-case letters"},
		{"empty value", "vip", []string{"a", ""}, "value 2 (\"\") has 0 bytes; a value has 1 to 256"},
		{"long value", "vip", []string{strings.Repeat("x", 257)}, "has 257 bytes; a value has 1 to 256"},
		{"too many", "vip", tooMany, "100001 values; a segment holds at most 100000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := gray.NewSegment(c.seg, c.values)
			var se *gray.SegmentError
			if s != nil || !errors.As(err, &se) || se.Segment != c.seg {
				t.Fatalf("got %v, %v; want a *gray.SegmentError for %q", s, err, c.seg)
			}
			if !strings.Contains(err.Error(), c.says) {
				t.Fatalf("error %q does not say %q", err, c.says)
			}
		})
	}
	for _, name := range []string{"a", "0", "vip", "beta-testers", "tenant.gold_2", strings.Repeat("z", 64)} {
		if err := gray.ValidateSegmentName(name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
}

func TestSegments(t *testing.T) {
	vip1, vip2, beta := mustSegment(t, "vip", "a"), mustSegment(t, "vip", "b"), mustSegment(t, "beta", "c")
	segs := gray.NewSegments(vip1, nil, beta, vip2)
	if segs.Lookup("vip") != vip2 || segs.Lookup("beta") != beta || segs.Lookup("x") != nil || segs.Len() != 2 {
		t.Fatalf("NewSegments: %v", segs.Names())
	}
	if got := segs.Names(); !slices.Equal(got, []string{"beta", "vip"}) {
		t.Fatalf("Names %v", got)
	}
	more := segs.With(vip1, mustSegment(t, "gold", "d"))
	if more.Lookup("vip") != vip1 || more.Len() != 3 || segs.Lookup("vip") != vip2 || segs.Len() != 2 {
		t.Fatal("With changed the original or missed a segment")
	}
	var none *gray.Segments
	if none.Lookup("vip") != nil || none.Len() != 0 || none.Names() != nil || none.With(beta).Lookup("beta") != beta {
		t.Fatal("a nil collection is not empty")
	}
}

// segmentsForTests: vip holds vip-0 ... vip-99, internal holds staff-1, beta holds 123 and qa-7.
func segmentsForTests(t testing.TB) *gray.Segments {
	var vips []string
	for i := range 100 {
		vips = append(vips, fmt.Sprintf("vip-%d", i))
	}
	return gray.NewSegments(mustSegment(t, "vip", vips...), mustSegment(t, "internal", "staff-1"), mustSegment(t, "beta", "123", "qa-7"))
}

// vipWithBucket returns a vip user whose bucket in bservice is in [lo, hi).
func vipWithBucket(t testing.TB, lo, hi int) string {
	for i := range 100 {
		u := fmt.Sprintf("vip-%d", i)
		if b := gray.Bucket("bservice", u); b >= lo && b < hi {
			return u
		}
	}
	t.Fatalf("no vip user with a bucket in [%d, %d)", lo, hi)
	return ""
}

type decisionCase struct {
	name      string
	instances []gray.Instance[string]
	opts      gray.Options
	noSegs    bool // build without WithSegments
	segs      *gray.Segments
	req       *gray.StaticRequest
	// want
	lane, reason, segment, excludedFrom string
	instanceIDs                         []string // checked when set
	problems                            []string
}

// runDecisionCases builds each case's snapshot, decides its request with Decide and
// DecideWithHeaders, and checks the decision and the problems.
func runDecisionCases(t *testing.T, cases []decisionCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var opts []gray.SnapshotOption
			if !c.noSegs {
				opts = append(opts, gray.WithSegments(c.segs))
			}
			snap := gray.NewSnapshot("bservice", c.instances, c.opts, opts...)
			d := snap.Decide(c.req)
			got := fmt.Sprintf("lane=%s reason=%s segment=%s excluded_from=%s", d.Lane, d.Reason, d.Segment, d.ExcludedFrom)
			want := fmt.Sprintf("lane=%s reason=%s segment=%s excluded_from=%s", c.lane, c.reason, c.segment, c.excludedFrom)
			if got != want {
				t.Errorf("decision\n got %s\nwant %s", got, want)
			}
			if c.instanceIDs != nil && !slices.Equal(slices.Sorted(slices.Values(d.Instances)), c.instanceIDs) {
				t.Errorf("instances %v, want %v", d.Instances, c.instanceIDs)
			}
			checkProblems(t, snap.Problems(), c.problems)
			if dh := snap.DecideWithHeaders(headerMap(c.req.Headers), c.req); dh != d {
				t.Errorf("DecideWithHeaders: %+v, Decide: %+v", *dh, *d)
			}
			if n := testing.AllocsPerRun(50, func() { snap.Decide(c.req) }); n != 0 {
				t.Errorf("%v allocations per decision", n)
			}
		})
	}
}

func headers(kv ...string) *gray.StaticRequest {
	h := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	return &gray.StaticRequest{Headers: h, URLPath: "/api", HTTPMethod: "GET"}
}

func TestInSegmentConditions(t *testing.T) {
	segs := segmentsForTests(t)
	stable := inst("s1")
	canary := func(match string) gray.Instance[string] { return inst("c1", "canary", "true", "match", match) }
	const byHeader = `[{"header":[{"key":"userid","in_segment":"beta"}]}]`
	runDecisionCases(t, []decisionCase{
		{name: "header in segment", instances: []gray.Instance[string]{stable, canary(byHeader)}, segs: segs,
			req: headers("userid", "123"), lane: "canary", reason: "match", segment: "beta"},
		{name: "header not in segment", instances: []gray.Instance[string]{stable, canary(byHeader)}, segs: segs,
			req: headers("userid", "1234"), lane: "stable", reason: "base"},
		{name: "header absent", instances: []gray.Instance[string]{stable, canary(byHeader)}, segs: segs,
			req: headers(), lane: "stable", reason: "base"},
		{name: "cookie by name", instances: []gray.Instance[string]{stable, canary(`[{"cookie":{"name":"uid","in_segment":"beta"}}]`)}, segs: segs,
			req: headers("cookie", "a=1; uid=qa-7"), lane: "canary", reason: "match", segment: "beta"},
		{name: "query", instances: []gray.Instance[string]{stable, canary(`[{"query":{"name":"tester","in_segment":"beta"}}]`)}, segs: segs,
			req: &gray.StaticRequest{URLPath: "/", URLQuery: "x=1&tester=qa-7"}, lane: "canary", reason: "match", segment: "beta"},
		{name: "second rule names its segments", instances: []gray.Instance[string]{stable,
			canary(`[{"header":[{"key":"x","present":true}]},{"header":[{"key":"userid","in_segment":"beta"},{"key":"team","in_segment":"internal"}]}]`)}, segs: segs,
			req: headers("userid", "123", "team", "staff-1"), lane: "canary", reason: "match", segment: "beta,internal"},
		{name: "rule without segment names none", instances: []gray.Instance[string]{stable, canary(`[{"header":[{"key":"userid","value_match":"123"}]}]`)}, segs: segs,
			req: headers("userid", "123"), lane: "canary", reason: "match"},
		{name: "missing segment matches nothing", instances: []gray.Instance[string]{stable, canary(`[{"header":[{"key":"userid","in_segment":"gold"}]}]`)}, segs: segs,
			req: headers("userid", "123"), lane: "stable", reason: "base",
			problems: []string{`gray: service "bservice": lane "canary": instances c1: meta key "match" names segment "gold", which does not exist; the condition matches no request`}},
		{name: "segments not loaded match nothing", instances: []gray.Instance[string]{stable, canary(byHeader)}, noSegs: true,
			req: headers("userid", "123"), lane: "stable", reason: "base",
			problems: []string{`names segment "beta", which is not loaded (the snapshot was built without segments); the condition matches no request`}},
		{name: "missing segment with absent value matches nothing", instances: []gray.Instance[string]{stable, canary(`[{"header":[{"key":"userid","in_segment":"gold"}]}]`)},
			segs: gray.NewSegments(), req: headers(), lane: "stable", reason: "base", problems: []string{`"gold", which does not exist`}},
	})
}

func TestSegmentMissingErrorFields(t *testing.T) {
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{
		inst("s1"),
		inst("c1", "canary", "true", "match", `[{"header":[{"key":"userid","in_segment":"gold"}]}]`),
		inst("c2", "canary", "true", "match", `[{"header":[{"key":"userid","in_segment":"gold"}]}]`),
		inst("g1", "bluegreen", "green", "weight", "5", "exclude_segment", "vip,gold"),
	}, gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(gray.NewSegments(mustSegment(t, "vip", "v"))))
	var got []string
	for _, p := range snap.Problems() {
		var me *gray.SegmentMissingError
		if !errors.As(p, &me) {
			t.Fatalf("problem %v is not a *gray.SegmentMissingError", p)
		}
		got = append(got, fmt.Sprintf("%s %s %v %s %s %v", me.Service, me.Lane, me.Instances, me.Key, me.Segment, me.NotLoaded))
	}
	want := []string{"bservice canary [c1 c2] match gold false", "bservice green [g1] exclude_segment gold false"}
	if !slices.Equal(got, want) {
		t.Fatalf("problems\n got %q\nwant %q", got, want)
	}
	if names := snap.SegmentNames(); !slices.Equal(names, []string{"gold", "vip"}) {
		t.Fatalf("SegmentNames %v", names)
	}
}

func TestExclusion(t *testing.T) {
	segs := segmentsForTests(t)
	stickyHeader := gray.Options{StickyHeader: "x-user-id"}
	stable := inst("s1")
	canary100 := inst("c1", "canary", "true", "weight", "100", "exclude_segment", "vip")
	inCanaryRange := vipWithBucket(t, 0, 5000)
	pastCanaryRange := vipWithBucket(t, 5000, 10000)
	runDecisionCases(t, []decisionCase{
		{name: "exclusion beats weight 100", instances: []gray.Instance[string]{stable, canary100}, opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "vip-3"), lane: "stable", reason: "excluded", segment: "vip", excludedFrom: "canary", instanceIDs: []string{"s1"}},
		{name: "a user outside the segment takes the weight", instances: []gray.Instance[string]{stable, canary100}, opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "user-3"), lane: "canary", reason: "weight"},
		{name: "an anonymous request is in no segment", instances: []gray.Instance[string]{stable, canary100}, opts: stickyHeader, segs: segs,
			req: headers(), lane: "canary", reason: "weight"},
		{name: "the sticky cookie is the user without the header", instances: []gray.Instance[string]{stable, canary100},
			opts: gray.Options{StickyHeader: "x-user-id", StickyCookie: "uid"}, segs: segs,
			req: headers("cookie", "uid=vip-7"), lane: "stable", reason: "excluded", segment: "vip", excludedFrom: "canary"},
		{name: "the sticky header wins over the cookie", instances: []gray.Instance[string]{stable, canary100},
			opts: gray.Options{StickyHeader: "x-user-id", StickyCookie: "uid"}, segs: segs,
			req: headers("x-user-id", "user-1", "cookie", "uid=vip-7"), lane: "canary", reason: "weight"},
		{name: "tag beats exclusion", instances: []gray.Instance[string]{stable, canary100}, opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "vip-3", gray.DefaultTagKey, "canary"), lane: "canary", reason: "tag"},
		{name: "exclusion beats a matching rule",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "match", `[{"header":[{"key":"userid","present":true}]}]`, "exclude_segment", "vip")},
			opts:      stickyHeader, segs: segs,
			req: headers("x-user-id", "vip-3", "userid", "1"), lane: "stable", reason: "excluded", segment: "vip", excludedFrom: "canary"},
		{name: "an excluded match passes to the next lane's rule",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "match", `[{"header":[{"key":"userid","present":true}]}]`, "exclude_segment", "vip"),
				inst("r1", "lane", "release-1", "match", `[{"header":[{"key":"userid","present":true}]}]`)},
			opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "vip-3", "userid", "1"), lane: "release-1", reason: "match"},
		{name: "an excluded match passes to the weight",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "match", `[{"header":[{"key":"userid","present":true}]}]`, "exclude_segment", "vip"),
				inst("g1", "bluegreen", "green", "weight", "100")},
			opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "vip-3", "userid", "1"), lane: "green", reason: "weight"},
		{name: "a bucket in an excluding lane's range goes to the base, not the next lane",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "weight", "50", "exclude_segment", "vip"), inst("g1", "bluegreen", "green", "weight", "50")},
			opts:      stickyHeader, segs: segs,
			req: headers("x-user-id", inCanaryRange), lane: "stable", reason: "excluded", segment: "vip", excludedFrom: "canary"},
		{name: "a bucket past an excluding lane's range is not excluded",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "weight", "50", "exclude_segment", "vip"), inst("g1", "bluegreen", "green", "weight", "50")},
			opts:      stickyHeader, segs: segs,
			req: headers("x-user-id", pastCanaryRange), lane: "green", reason: "weight"},
		{name: "union across instances",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "weight", "100", "exclude_segment", "vip"),
				inst("c2", "canary", "true", "weight", "100", "exclude_segment", "internal")},
			opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "staff-1"), lane: "stable", reason: "excluded", segment: "internal", excludedFrom: "canary",
			problems: []string{`lane "canary": instances c1, c2 disagree on exclude_segment; the lane excludes every segment any of them names: internal, vip`}},
		{name: "union: an instance without exclusion does not lift it",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "weight", "100"),
				inst("c2", "canary", "true", "weight", "100", "exclude_segment", "vip")},
			opts: stickyHeader, segs: segs,
			req: headers("x-user-id", "vip-1"), lane: "stable", reason: "excluded", segment: "vip", excludedFrom: "canary",
			problems: []string{`disagree on exclude_segment; the lane excludes every segment any of them names: vip`}},
		{name: "without a sticky key the lane is closed to weight", instances: []gray.Instance[string]{stable, canary100}, segs: segs,
			req: headers("x-user-id", "user-3"), lane: "stable", reason: "excluded", excludedFrom: "canary",
			problems: []string{`gray: service "bservice": lane "canary": instances c1: meta key "exclude_segment" excludes vip, but the options name no sticky key (sticky_header or sticky_cookie), so no request has a user to check; the lane takes no matched or weighted traffic, only tagged requests`}},
		{name: "without a sticky key the lane is closed to rules",
			instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "match", `[{"header":[{"key":"userid","present":true}]}]`, "exclude_segment", "vip")},
			segs:      segs, req: headers("userid", "1"), lane: "stable", reason: "excluded", excludedFrom: "canary",
			problems: []string{"no sticky key"}},
		{name: "a closed lane still takes tagged requests", instances: []gray.Instance[string]{stable, canary100}, segs: segs,
			req: headers(gray.DefaultTagKey, "canary"), lane: "canary", reason: "tag", problems: []string{"no sticky key"}},
		{name: "a missing exclusion segment closes the lane", instances: []gray.Instance[string]{stable, inst("c1", "canary", "true", "weight", "100", "exclude_segment", "vip,gold")},
			opts: stickyHeader, segs: segs, req: headers("x-user-id", "user-3"), lane: "stable", reason: "excluded", excludedFrom: "canary",
			problems: []string{`lane "canary": instances c1: meta key "exclude_segment" names segment "gold", which does not exist; the lane takes no matched or weighted traffic, only tagged requests`}},
		{name: "exclusion before segments load closes the lane", instances: []gray.Instance[string]{stable, canary100}, opts: stickyHeader, noSegs: true,
			req: headers("x-user-id", "user-3"), lane: "stable", reason: "excluded", excludedFrom: "canary",
			problems: []string{`names segment "vip", which is not loaded`}},
		{name: "exclusion on stable is ignored", instances: []gray.Instance[string]{inst("s1", "exclude_segment", "vip"), inst("c1", "canary", "true", "weight", "0")},
			opts: stickyHeader, segs: segs, req: headers("x-user-id", "vip-1"), lane: "stable", reason: "base",
			problems: []string{`lane "stable": instances s1: meta key "exclude_segment" excludes vip, but the lane is a base lane, which takes every request the other lanes leave; the exclusion is ignored`}},
		{name: "exclusion on the blue base is ignored",
			instances: []gray.Instance[string]{inst("b1", "bluegreen", "blue", "exclude_segment", "vip"), inst("g1", "bluegreen", "green", "weight", "0", "match", `[{"header":[{"key":"x","present":true}]}]`)},
			opts:      stickyHeader, segs: segs, req: headers("x-user-id", "vip-1"), lane: "blue", reason: "base",
			problems: []string{`lane "blue": instances b1: meta key "exclude_segment" excludes vip, but the lane is a base lane`}},
		{name: "weighted fallback keeps an excluded user out",
			instances: []gray.Instance[string]{inst("c1", "canary", "true", "weight", "50", "exclude_segment", "vip"), inst("g1", "bluegreen", "green", "weight", "20")},
			opts:      stickyHeader, segs: segs, req: headers("x-user-id", vipWithBucket(t, 7000, 10000)),
			lane: "", reason: "fallback", instanceIDs: []string{"g1"}},
		{name: "weighted fallback of an excluded bucket",
			instances: []gray.Instance[string]{inst("c1", "canary", "true", "weight", "50", "exclude_segment", "vip"), inst("g1", "bluegreen", "green", "weight", "20")},
			opts:      stickyHeader, segs: segs, req: headers("x-user-id", inCanaryRange),
			lane: "", reason: "fallback", segment: "vip", excludedFrom: "canary", instanceIDs: []string{"g1"}},
		{name: "weighted fallback for others is unchanged",
			instances: []gray.Instance[string]{inst("c1", "canary", "true", "weight", "50", "exclude_segment", "vip"), inst("g1", "bluegreen", "green", "weight", "20")},
			opts:      stickyHeader, segs: segs, req: headers("x-user-id", userWithBucket(t, 7000, 10000)),
			lane: "", reason: "fallback", instanceIDs: []string{"c1", "g1"}},
	})
}

// userWithBucket returns a user outside every test segment whose bucket in bservice is in [lo, hi).
func userWithBucket(t testing.TB, lo, hi int) string {
	for i := range 1000 {
		u := fmt.Sprintf("user-%d", i)
		if b := gray.Bucket("bservice", u); b >= lo && b < hi {
			return u
		}
	}
	t.Fatalf("no user with a bucket in [%d, %d)", lo, hi)
	return ""
}

func TestExclusionErrorsAreTyped(t *testing.T) {
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{
		inst("s1", "exclude_segment", "vip"),
		inst("c1", "canary", "true", "weight", "10", "exclude_segment", "vip,internal"),
	}, gray.Options{}, gray.WithSegments(segmentsForTests(t)))
	var kinds []string
	for _, p := range snap.Problems() {
		var ee *gray.ExclusionError
		if !errors.As(p, &ee) {
			t.Fatalf("%v is not a *gray.ExclusionError", p)
		}
		switch {
		case errors.Is(p, gray.ErrExclusionOnBase):
			kinds = append(kinds, "base "+ee.Lane+" "+strings.Join(ee.Segments, ","))
		case errors.Is(p, gray.ErrExclusionWithoutStickyKey):
			kinds = append(kinds, "no sticky key "+ee.Lane+" "+strings.Join(ee.Segments, ","))
		}
	}
	slices.Sort(kinds)
	if want := []string{"base stable vip", "no sticky key canary internal,vip"}; !slices.Equal(kinds, want) {
		t.Fatalf("problems %q, want %q", kinds, want)
	}
}

func TestLanesDescribeExclusions(t *testing.T) {
	instances := []gray.Instance[string]{
		inst("s1"),
		inst("c1", "canary", "true", "weight", "10", "exclude_segment", "vip"),
		inst("g1", "bluegreen", "green", "weight", "30", "exclude_segment", "internal,gold"),
	}
	snap := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(segmentsForTests(t)))
	got := map[string]string{}
	for _, l := range snap.Lanes() {
		got[l.Name] = fmt.Sprintf("exclude=%v closed=%v weight=%s share=%s", l.Exclude, l.Closed, l.Weight, l.Share)
	}
	want := map[string]string{
		"canary": "exclude=[vip] closed=false weight=10 share=10",
		"green":  "exclude=[gold internal] closed=true weight=30 share=0",
		"stable": "exclude=[] closed=false weight=0 share=90",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lanes:\n got %v\nwant %v", got, want)
	}
	if names := snap.SegmentNames(); !slices.Equal(names, []string{"gold", "internal", "vip"}) {
		t.Fatalf("SegmentNames %v", names)
	}
}

func TestReferencedSegments(t *testing.T) {
	instances := []gray.Instance[string]{
		inst("s1", "version", "v1"),
		inst("c1", "canary", "true", "exclude_segment", "vip, internal", "match", `[{"header":[{"key":"a","in_segment":"beta"}]},{"query":{"name":"t","in_segment":"tenants"}}]`),
		inst("c2", "canary", "true", "exclude_segment", "vip, internal", "match", `[{"header":[{"key":"a","in_segment":"beta"}]},{"query":{"name":"t","in_segment":"tenants"}}]`),
		inst("d1", "drain", "true", "match", `[{"cookie":{"name":"uid","in_segment":"old"}}]`),
		inst("x1", "exclude_segment", "Bad Name", "match", `[{"header":[{"key":"a","in_segment":"BAD"}]}]`),
	}
	want := []string{"beta", "internal", "old", "tenants", "vip"}
	if got := gray.ReferencedSegments(instances); !slices.Equal(got, want) {
		t.Fatalf("ReferencedSegments %v, want %v", got, want)
	}
	snap := gray.NewSnapshot("bservice", instances, gray.Options{})
	if got := snap.SegmentNames(); !slices.Equal(got, want) {
		t.Fatalf("SegmentNames %v, want %v", got, want)
	}
	if snap.Segments() != nil {
		t.Fatal("a snapshot built without segments has some")
	}
	m, err := gray.ParseMeta(instances[1].Meta)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.SegmentNames(); !slices.Equal(got, []string{"beta", "internal", "tenants", "vip"}) {
		t.Fatalf("Meta.SegmentNames %v", got)
	}
}

// TestSegmentForms: in_segment and exclude_segment in the YAML form and in meta (JSON) decode to the
// same model, which round-trips through both, with the canonical JSON.
func TestSegmentForms(t *testing.T) {
	want := gray.Meta{Canary: true, Weight: 500, ExcludeSegments: []string{"vip", "internal"}, Match: []gray.Rule{
		{Header: []gray.HeaderMatch{{Key: "userid", ValueMatch: gray.ValueMatch{InSegment: "beta-testers"}}}},
		{Cookie: []gray.CookieMatch{{Name: "uid", ValueMatch: gray.ValueMatch{InSegment: "beta-testers"}}},
			Query: []gray.QueryMatch{{Name: "tenant", ValueMatch: gray.ValueMatch{InSegment: "2024"}}}},
	}}
	const canonical = `[{"header":[{"key":"userid","in_segment":"beta-testers"}]},{"cookie":[{"name":"uid","in_segment":"beta-testers"}],"query":[{"name":"tenant","in_segment":"2024"}]}]`
	yamlForms := []string{
		"canary: true\nweight: 5\nexclude_segment: vip,internal\nmatch:\n  - header:\n      - key: userid\n        in_segment: beta-testers\n  - cookie: {name: uid, in_segment: beta-testers}\n    query: {name: tenant, in_segment: 2024}\n",
		"canary: true\nweight: 5\nexclude_segment: [vip, internal]\nmatch: '" + canonical + "'\n",
		"canary: true\nweight: 5\nexclude_segment: 'vip, internal'\nmatch: [{header: {key: userid, in_segment: beta-testers}}, {cookie: [{name: uid, in_segment: beta-testers}], query: [{name: tenant, in_segment: '2024'}]}]\n",
	}
	for i, text := range yamlForms {
		var m gray.Meta
		if err := yaml.Unmarshal([]byte(text), &m); err != nil {
			t.Fatalf("form %d: %v", i, err)
		}
		if !reflect.DeepEqual(m, want) {
			t.Fatalf("form %d:\n got %+v\nwant %+v", i, m, want)
		}
	}
	fromMeta, err := gray.ParseMeta(map[string]string{"canary": "true", "weight": "5", "exclude_segment": "vip,internal", "match": canonical})
	if err != nil || !reflect.DeepEqual(fromMeta, want) {
		t.Fatalf("meta form: %v\n got %+v\nwant %+v", err, fromMeta, want)
	}
	meta, err := want.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if meta["match"] != canonical || meta["exclude_segment"] != "vip,internal" || gray.RulesJSON(want.Match) != canonical {
		t.Fatalf("encoded %v", meta)
	}
	out, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var back gray.Meta
	if err := yaml.Unmarshal(out, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Fatalf("YAML round trip: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "exclude_segment: vip,internal\n") || !strings.Contains(string(out), "in_segment: beta-testers") {
		t.Fatalf("YAML form:\n%s", out)
	}
}

// TestBadSegmentMeta: bad segment names and misplaced in_segment are decode errors naming the
// instance, the key and the problem.
func TestBadSegmentMeta(t *testing.T) {
	cases := []struct {
		meta map[string]string
		key  string
		says string
	}{
		{map[string]string{"exclude_segment": "VIP"}, "exclude_segment", `segment name "VIP": a segment name starts with a lower-case letter or a digit`},
		{map[string]string{"exclude_segment": ""}, "exclude_segment", "empty; name one or more segments"},
		{map[string]string{"exclude_segment": "vip,,beta"}, "exclude_segment", `"vip,,beta": an empty name between commas`},
		{map[string]string{"exclude_segment": "vip,"}, "exclude_segment", "an empty name between commas"},
		{map[string]string{"exclude_segment": "vip,beta,vip"}, "exclude_segment", `names segment "vip" twice`},
		{map[string]string{"exclude_segment": "vip;beta"}, "exclude_segment", "uses only lower-case letters"},
		{map[string]string{"exclude_segment": strings.Repeat("a,", 300) + "b"}, "exclude_segment", "601 bytes; Consul allows at most 512"},
		{map[string]string{"match": `[{"header":[{"key":"a","in_segment":"Beta"}]}]`}, "match", `rule 1: header "a": in_segment: segment name "Beta"`},
		{map[string]string{"match": `[{"header":[{"key":"a","in_segment":"beta","value_match":"x"}]}]`}, "match", "sets more than one of value_match, prefix, regex, present, absent and in_segment"},
		{map[string]string{"match": `[{"cookie":{"in_segment":"beta"}}]`}, "match", "cookie header: in_segment needs a cookie name"},
		{map[string]string{"match": `[{"query":{"name":"q","in_segment":""}}]`}, "match", "needs one of value_match, prefix, regex, present, absent or in_segment"},
		{map[string]string{"match": `[{"header":[{"key":"a","in_segment":["beta"]}]}]`}, "match", "header.in_segment: expected a string"},
	}
	for _, c := range cases {
		_, err := gray.ParseInstanceMeta("c1", c.meta)
		var me *gray.MetaError
		if !errors.As(err, &me) || me.Key != c.key || me.Instance != "c1" || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%v:\n got %v\nwant a *gray.MetaError for instance c1, key %q, saying %q", c.meta, err, c.key, c.says)
		}
	}
	// The YAML form: errors carry the line.
	for text, says := range map[string]string{
		"canary: true\nexclude_segment: [vip, Gold]\n":  `line 2: meta key "exclude_segment": segment name "Gold"`,
		"canary: true\nexclude_segment: {a: b}\n":       `line 2: meta key "exclude_segment": expected a segment name, names separated by commas, or a list of names`,
		"canary: true\nexclude_segment: [vip, 'a,b']\n": `line 2: meta key "exclude_segment": expected a list of segment names`,
		"canary: true\nexclude_segment: []\n":           `line 2: meta key "exclude_segment": expected a segment name`,
	} {
		var m gray.Meta
		if err := yaml.Unmarshal([]byte(text), &m); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: %v, want %q", text, err, says)
		}
	}
	// Encode refuses what ParseMeta would.
	for _, names := range [][]string{{"vip", "vip"}, {"a,b"}, {" vip"}, {""}} {
		m := gray.Meta{ExcludeSegments: names}
		var me *gray.MetaError
		if err := m.Validate(); !errors.As(err, &me) || me.Key != "exclude_segment" {
			t.Errorf("%q: Validate %v", names, err)
		}
	}
	// In a snapshot, the instance is left out and named.
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{inst("s1"), inst("c1", "canary", "true", "weight", "100", "exclude_segment", "VIP")},
		gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(gray.NewSegments()))
	checkProblems(t, snap.Problems(), []string{`gray: instance "c1": meta key "exclude_segment": segment name "VIP"`})
	if d := snap.Decide(headers("x-user-id", "u")); d.Lane != "stable" {
		t.Fatalf("a canary with bad meta took %+v", d)
	}
}

func TestExcludedReasonString(t *testing.T) {
	if gray.ReasonExcluded.String() != "excluded" || gray.Reason(99).String() != "unknown" {
		t.Fatal(gray.ReasonExcluded.String())
	}
	d := gray.Decision[string]{Reason: gray.ReasonExcluded}
	if d.Propagate() {
		t.Fatal("an excluded decision is propagated")
	}
}

// TestConcurrentExcludingDecisions runs exclusion decisions from many goroutines (run with -race).
func TestConcurrentExcludingDecisions(t *testing.T) {
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{inst("s1"), inst("c1", "canary", "true", "weight", "50", "exclude_segment", "vip",
		"match", `[{"header":[{"key":"userid","in_segment":"beta"}]}]`)},
		gray.Options{StickyHeader: "x-user-id"}, gray.WithSegments(segmentsForTests(t)))
	done := make(chan bool)
	for g := range 4 {
		go func() {
			defer func() { done <- true }()
			for i := range 500 {
				d := snap.Decide(headers("x-user-id", fmt.Sprintf("vip-%d", (i+g)%100), "userid", "123"))
				if d.Lane != "stable" || d.Reason != gray.ReasonExcluded {
					t.Errorf("vip user decided %+v", *d)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}
