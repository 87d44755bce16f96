package gray_test

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

const articleMatchJSON = `[{"header":[{"key":"userid","value_match":"123"}],"cookie":{"regex":"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"},"uri":[{"prefix":["/api/user"]}]}]`

// FuzzParseMeta: meta values from outside never panic the decoder, errors are *MetaError values
// naming a graylane key, and whatever decodes re-encodes to meta that decodes to the same model.
// exclude is exclude_segment, left out when empty.
func FuzzParseMeta(f *testing.F) {
	f.Add("true", "green", "10", "", articleMatchJSON, "", "")
	f.Add("false", "blue", "5.5", "release-42", `[{"query":{"name":"a","present":"true"},"method":"get"}]`, "", "vip")
	f.Add("yes", "purple", "101", "Bad Lane", `[{"header":[{"key":"x"`, `"}]}]`, "VIP,,x")
	f.Add("", "", "0.01", "", `{"client_ip":["10.0.0.0/8","::1"],"uri":[{"regex":"^/v[0-9]+"}]}`, "x", "")
	f.Add("true", "", "50", "", `[{"header":[{"key":"userid","in_segment":"beta-testers"}],"cookie":{"name":"uid","in_segment":"beta"}},{"query":{"name":"t","in_segment":"0"}}]`, "", "vip, internal.staff")
	f.Add("true", "", "", "", `[{"cookie":{"in_segment":"beta"}}]`, "", "a,a")
	f.Fuzz(func(t *testing.T, canary, color, weight, lane, match, match1, exclude string) {
		meta := map[string]string{"canary": canary, "bluegreen": color, "weight": weight, "lane": lane, "match": match, "owner": "x"}
		if match1 != "" {
			meta["match_1"] = match1
		}
		if exclude != "" {
			meta["exclude_segment"] = exclude
		}
		if lane == "" {
			delete(meta, "lane")
		}
		if match == "" && match1 == "" {
			delete(meta, "match")
		}
		m, err := gray.ParseMeta(meta)
		if err != nil {
			var me *gray.MetaError
			if !errors.As(err, &me) || !gray.IsMetaKey(me.Key) {
				t.Fatalf("error %v does not name a graylane key", err)
			}
			return
		}
		encoded, err := m.Encode()
		if err != nil {
			if strings.Contains(err.Error(), "more than 32 keys") {
				return
			}
			t.Fatalf("decoded meta does not encode: %v", err)
		}
		if err := gray.CheckConsulLimits(encoded); err != nil {
			t.Fatalf("encoded meta breaks Consul's limits: %v", err)
		}
		back, err := gray.ParseMeta(encoded)
		if err != nil || !reflect.DeepEqual(back, m) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, back, m)
		}
		for _, name := range m.SegmentNames() {
			if err := gray.ValidateSegmentName(name); err != nil {
				t.Fatalf("decoded meta names a bad segment: %v", err)
			}
		}
	})
}

// FuzzMetaYAML: the YAML form never panics, and what decodes survives YAML and meta round trips.
func FuzzMetaYAML(f *testing.F) {
	f.Add("canary: true\nbluegreen: green\nweight: 10\nmatch:\n  - header:\n      - key: \"userid\"\n        value_match: \"123\"\n    cookie:\n        regex: \"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$\"\n    uri:\n      - prefix:\n          - \"/api/user\"\n")
	f.Add("weight: 0.5\nmatch: {header: {key: a, value_match: 0123}, uri: {prefix: /x}}\n")
	f.Add("match: '[{\"method\":\"GET\"}]'\nlane: x\ndrain: true\n")
	f.Add("a: &x {canary: true}\nb: *x\n")
	f.Add("canary: true\nexclude_segment: vip, internal\nmatch:\n  - header: {key: userid, in_segment: beta}\n    cookie: {name: uid, in_segment: 2024}\n")
	f.Add("exclude_segment: [vip, gold]\nmatch: {query: {name: t, in_segment: tenants}}\n")
	f.Add("exclude_segment: [vip, {a: b}]\n")
	f.Fuzz(func(t *testing.T, text string) {
		var m gray.Meta
		if err := yaml.Unmarshal([]byte(text), &m); err != nil {
			return
		}
		out, err := yaml.Marshal(m)
		if err != nil {
			t.Fatalf("decoded meta does not marshal: %v", err)
		}
		var again gray.Meta
		if err := yaml.Unmarshal(out, &again); err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("YAML round trip: %v\n%s\n got %+v\nwant %+v", err, out, again, m)
		}
		if encoded, err := m.Encode(); err == nil {
			if back, err := gray.ParseMeta(encoded); err != nil || !reflect.DeepEqual(back, m) {
				t.Fatalf("meta round trip: %v", err)
			}
		}
	})
}

// fuzzSegments are the segments FuzzDecide's snapshots are given: vip and beta; gold is missing.
var fuzzSegments = func() *gray.Segments {
	vip, _ := gray.NewSegment("vip", []string{"user-1", "7", "vip-1"})
	beta, _ := gray.NewSegment("beta", []string{"123", "999", "user-2"})
	return gray.NewSegments(vip, beta)
}()

// FuzzDecide: any canary meta and any request give a decision over instances of the service; a
// canary whose meta does not decode never receives traffic while stable instances exist; a
// canary never takes an untagged request whose user it excludes, nor one at all when its exclusion
// names a missing segment; and the request decides alike with its headers in a map
// (DecideWithHeaders). exclude is the canary's exclude_segment, left out when empty.
func FuzzDecide(f *testing.F) {
	f.Add(articleMatchJSON, "10", "123", "email=li@some-company-name.com; a=b", "/api/user", "a=1", "GET", "10.0.0.1", "user-1", "", "")
	f.Add(`[{"query":[{"name":"q","regex":"^a%"}]}]`, "100", "", "", "/", "q=a%25&q=", "POST", "::1", "", "canary", "")
	f.Add(`[{"cookie":[{"name":"u","prefix":"\""}]}]`, "x", "", `u="`, "", "", "", "", "", "green", "")
	f.Add(`[{"header":[{"key":"userid","value_match":"123"},{"key":"x-user-id","prefix":"u"}]},{"header":[{"key":"userid","regex":"^9+$"}]},{"header":[{"key":"cookie","absent":true}]}]`, "25", "999", "", "/", "", "GET", "", "user-2", "", "")
	f.Add(`[{"header":[{"key":"userid","present":true}]}]`, "50", "", "uid=7", "", "", "", "", "", "stable", "vip")
	f.Add(`[{"header":[{"key":"userid","in_segment":"beta"}]}]`, "100", "999", "", "/", "", "GET", "", "user-1", "", "vip")
	f.Add(`[{"cookie":{"name":"uid","in_segment":"vip"}},{"query":{"name":"t","in_segment":"gold"}}]`, "100", "", "uid=7", "/", "t=vip-1", "GET", "", "", "", "beta,gold")
	f.Add(`[{"header":[{"key":"userid","in_segment":"gold"}]}]`, "0", "123", "", "/", "", "GET", "", "", "canary", "Vip")
	f.Fuzz(func(t *testing.T, match, weight, userid, cookie, path, query, method, ip, user, tag, exclude string) {
		canary := map[string]string{"canary": "true", "weight": weight, "match": match}
		if exclude != "" {
			canary["exclude_segment"] = exclude
		}
		instances := []gray.Instance[string]{
			{ID: "s1", Meta: map[string]string{}, Value: "s1"},
			{ID: "c1", Meta: canary, Value: "c1"},
			{ID: "g1", Meta: map[string]string{"bluegreen": "green", "weight": "5"}, Value: "g1"},
		}
		snap := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id", StickyCookie: "uid"}, gray.WithSegments(fuzzSegments))
		canaryMeta, canaryErr := gray.ParseMeta(canary)
		req := &gray.StaticRequest{
			Headers:  map[string]string{"userid": userid, "cookie": cookie, "x-user-id": user, gray.DefaultTagKey: tag},
			URLPath:  path,
			URLQuery: query, HTTPMethod: method,
		}
		req.Client, _ = netip.ParseAddr(ip)
		checkTriggers(t, snap, req)
		d := snap.Decide(req)
		headers := map[string][]string{}
		for k, v := range req.Headers {
			headers[k] = []string{v}
		}
		// A request without a sticky key draws a random bucket: its weight decision may differ.
		random := user == ""
		if dh := snap.DecideWithHeaders(headers, req); dh != d && !(random && undecidedByRules(d) && undecidedByRules(dh)) {
			t.Fatalf("DecideWithHeaders: %+v, Decide: %+v", *dh, *d)
		}
		if len(d.Instances) == 0 {
			t.Fatal("no instances chosen although stable instances exist")
		}
		if canaryErr != nil && slices.Contains(d.Instances, "c1") {
			t.Fatalf("canary with bad meta (%v) chosen: %+v", canaryErr, d)
		}
		if canaryErr == nil && d.Lane == "canary" && d.Reason != gray.ReasonTag {
			sticky := user
			if sticky == "" {
				sticky = stickyCookie(cookie)
			}
			for _, name := range canaryMeta.ExcludeSegments {
				if seg := fuzzSegments.Lookup(name); seg == nil || seg.Contains(sticky) {
					t.Fatalf("the canary excludes %v (user %q) but took %+v", canaryMeta.ExcludeSegments, sticky, *d)
				}
			}
		}
		if d.Reason == gray.ReasonExcluded && (d.ExcludedFrom != "canary" || d.Lane != "stable") {
			t.Fatalf("exclusion decision %+v", *d)
		}
		switch d.Lane {
		case "stable", "canary", "green":
		default:
			t.Fatalf("unexpected lane %q", d.Lane)
		}
	})
}

// stickyCookie returns the uid cookie's value, as the snapshot reads it.
func stickyCookie(header string) string {
	for part := range strings.SplitSeq(header, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok && k == "uid" {
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return ""
}

// undecidedByRules reports whether a decision came from the bucket or the base, not a tag or a rule.
func undecidedByRules[T any](d *gray.Decision[T]) bool {
	return d.Reason != gray.ReasonTag && d.Reason != gray.ReasonMatch
}
