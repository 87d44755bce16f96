package gray_test

import (
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

// Decoding the source article's example and writing it as Consul service meta.
func ExampleMeta_UnmarshalYAML() {
	text := `
canary: true # 当前部署实例是否为灰度实例
bluegreen: green
weight: 10
match:
  - header:
      - key: "userid"
        value_match: "123"
    cookie:
        regex: "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"
    uri:
      - prefix:
          - "/api/user"
`
	var m gray.Meta
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		fmt.Println(err)
		return
	}
	meta, _ := m.Merge(map[string]string{"version": "v2"})
	fmt.Println("lane:", m.LaneName())
	fmt.Println("weight:", meta["weight"])
	fmt.Println("match:", meta["match"])
	fmt.Println("version:", meta["version"])
	// Output:
	// lane: canary
	// weight: 10
	// match: [{"header":[{"key":"userid","value_match":"123"}],"cookie":[{"regex":"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"}],"uri":[{"prefix":["/api/user"]}]}]
	// version: v2
}

// A decision: test traffic to the canary, production traffic by weight, sticky per user.
func ExampleSnapshot_Decide() {
	instances := []gray.Instance[string]{
		{ID: "b-1", Meta: map[string]string{}, Value: "10.0.0.1:8000"},
		{ID: "b-2", Meta: map[string]string{"canary": "true", "weight": "12",
			"match": `[{"header":[{"key":"canary","value_match":"true"}]}]`}, Value: "10.0.0.2:8000"},
	}
	snap := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id"})

	for _, headers := range []map[string]string{
		{"canary": "true"},        // test traffic
		{"x-user-id": "user-362"}, // bucket 1149: inside the 12 %
		{"x-user-id": "user-24"},  // bucket 1424: outside
	} {
		d := snap.Decide(&gray.StaticRequest{Headers: headers, URLPath: "/api/user"})
		fmt.Println(d.Lane, d.Reason, d.Instances)
	}
	// Output:
	// canary match [10.0.0.2:8000]
	// canary weight [10.0.0.2:8000]
	// stable base [10.0.0.1:8000]
}

// A meta value that does not decode: the error names the instance, the key and the problem, and the
// instance is left out of every lane.
func ExampleSnapshot_Problems() {
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{
		{ID: "b-1", Meta: map[string]string{}},
		{ID: "b-2", Meta: map[string]string{"canary": "true", "weight": "5%"}},
	}, gray.Options{})
	for _, p := range snap.Problems() {
		fmt.Println(p)
	}
	for _, l := range snap.Lanes() {
		fmt.Println(l.Name, l.Instances, "share", l.Share)
	}
	// Output:
	// gray: instance "b-2": meta key "weight": "5%" is not a percentage between 0 and 100 with at most two decimals (write 5, 0.5 or 12.25)
	// stable [b-1] share 100
}

// Segments: a canary takes the beta testers by rule and 100 % of other users by weight, but never a
// VIP. A watcher learns the segments to load from the instances (or from a snapshot built without
// them), loads them and builds the snapshot with them.
func ExampleWithSegments() {
	instances := []gray.Instance[string]{
		{ID: "b-1", Meta: map[string]string{}, Value: "10.0.0.1:8000"},
		{ID: "b-2", Meta: map[string]string{"canary": "true", "weight": "100", "exclude_segment": "vip",
			"match": `[{"header":[{"key":"x-user-id","in_segment":"beta-testers"}]}]`}, Value: "10.0.0.2:8000"},
	}
	fmt.Println("to load:", gray.ReferencedSegments(instances))

	vip, _ := gray.NewSegment("vip", []string{"u-1", "u-2"})
	beta, _ := gray.NewSegment("beta-testers", []string{"u-2", "u-3"})
	snap := gray.NewSnapshot("bservice", instances, gray.Options{StickyHeader: "x-user-id"},
		gray.WithSegments(gray.NewSegments(vip, beta)))

	for _, user := range []string{"u-3", "u-2", "u-9"} {
		d := snap.Decide(&gray.StaticRequest{Headers: map[string]string{"x-user-id": user}})
		fmt.Printf("%s -> %s (%s) segment=%q excluded_from=%q\n", user, d.Lane, d.Reason, d.Segment, d.ExcludedFrom)
	}
	// Output:
	// to load: [beta-testers vip]
	// u-3 -> canary (match) segment="beta-testers" excluded_from=""
	// u-2 -> stable (excluded) segment="vip" excluded_from="canary"
	// u-9 -> canary (weight) segment="" excluded_from=""
}

// Before the segments are loaded, nothing is let through on their account: the rule matches nothing
// and the excluding lane takes tagged requests only.
func ExampleWithSegments_notLoaded() {
	snap := gray.NewSnapshot("bservice", []gray.Instance[string]{
		{ID: "b-1", Meta: map[string]string{}},
		{ID: "b-2", Meta: map[string]string{"canary": "true", "weight": "100", "exclude_segment": "vip"}},
	}, gray.Options{StickyHeader: "x-user-id"})
	fmt.Println("needs:", snap.SegmentNames())
	for _, p := range snap.Problems() {
		fmt.Println(p)
	}
	d := snap.Decide(&gray.StaticRequest{Headers: map[string]string{"x-user-id": "u-9"}})
	fmt.Println(d.Lane, d.Reason, d.ExcludedFrom)
	// Output:
	// needs: [vip]
	// gray: service "bservice": lane "canary": instances b-2: meta key "exclude_segment" names segment "vip", which is not loaded (the snapshot was built without segments); the lane takes no matched or weighted traffic, only tagged requests
	// stable excluded canary
}
