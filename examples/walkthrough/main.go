// Command walkthrough shows graylane's gray rule core on the source article's example: the meta an
// instance registers, how requests are routed at each stage of a canary release and of a blue/green
// switch, and what happens to meta that does not decode. It needs nothing but Go.
package main

import (
	_ "embed"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

//go:embed bservice.yaml
var bserviceYAML []byte

// spec is one instance as the YAML file writes it.
type spec struct {
	ID   string    `yaml:"id"`
	Meta gray.Meta `yaml:"meta"`
}

var options = gray.Options{StickyHeader: "x-user-id"}

// out is where the walkthrough writes; tests replace it.
var out io.Writer = os.Stdout

func main() {
	var specs []spec
	if err := yaml.Unmarshal(bserviceYAML, &specs); err != nil {
		log.Fatal(err)
	}

	section("1. The meta each instance registers in Consul")
	instances := make([]gray.Instance[string], len(specs))
	for i, s := range specs {
		meta, err := s.Meta.Encode()
		if err != nil {
			log.Fatal(err)
		}
		instances[i] = gray.Instance[string]{ID: s.ID, Meta: meta, Value: s.ID}
		fmt.Fprintf(out, "%-18s lane=%-7s %s\n", s.ID, s.Meta.LaneName(), formatMeta(meta))
	}

	section("2. The article's rule: test traffic to the canary, 10 % of users by weight")
	snap := gray.NewSnapshot("bservice", instances, options)
	show(snap, "matching request", req("/api/user/7", "userid", "123", "cookie", "email=li@some-company-name.com", "x-user-id", "user-1"))
	show(snap, "other path", req("/api/order/7", "userid", "123", "cookie", "email=li@some-company-name.com", "x-user-id", "user-1"))
	show(snap, "user-259 (bucket 687)", req("/", "x-user-id", "user-259"))
	show(snap, "user-362 (bucket 1149)", req("/", "x-user-id", "user-362"))

	section("3. Raising the canary's weight: users only ever move in")
	canary := specs[2].Meta
	canary.Match = nil
	previous := map[string]bool{}
	for _, w := range []gray.Weight{0, 500, 2500, 5000, 10000} {
		canary.Weight = w
		meta, _ := canary.Encode()
		instances[2].Meta = meta
		snap := gray.NewSnapshot("bservice", instances, options)
		in, left := 0, 0
		for i := 0; i < 10000; i++ {
			user := fmt.Sprintf("user-%d", i)
			isIn := snap.Decide(req("/", "x-user-id", user)).Lane == gray.CanaryLane
			if isIn {
				in++
			} else if previous[user] {
				left++
			}
			previous[user] = isIn
		}
		fmt.Fprintf(out, "weight %5s%%: %5.2f%% of 10000 users on the canary, %d left it\n", w, float64(in)/100, left)
	}

	section("4. Blue/green: green takes test traffic, switches over, rolls back")
	blueGreen := []gray.Instance[string]{
		{ID: "blue-1", Meta: map[string]string{"bluegreen": "blue"}, Value: "blue-1"},
		{ID: "green-1", Value: "green-1"},
	}
	test := []gray.Rule{{Header: []gray.HeaderMatch{{Key: "x-env", ValueMatch: gray.ValueMatch{Exact: "green"}}}}}
	for _, stage := range []struct {
		name   string
		weight gray.Weight
	}{{"deployed", 0}, {"switched", 10000}, {"rolled back", 0}} {
		green := gray.Meta{BlueGreen: gray.Green, Weight: stage.weight, Match: test}
		blueGreen[1].Meta, _ = green.Encode()
		snap := gray.NewSnapshot("bservice", blueGreen, options)
		prod := snap.Decide(req("/", "x-user-id", "user-1"))
		tester := snap.Decide(req("/", "x-env", "green"))
		fmt.Fprintf(out, "%-12s production -> %-6s %-9s tester -> %s (%s)\n", stage.name, prod.Lane, "("+prod.Reason.String()+")", tester.Lane, tester.Reason)
	}

	section("5. Meta that does not decode is reported and left out")
	broken := slices.Clone(instances)
	broken[2].Meta = map[string]string{"canary": "true", "weight": "10%", "match": `[{"header":[{"key":"userid"}]}]`}
	snap = gray.NewSnapshot("bservice", broken, options)
	for _, p := range snap.Problems() {
		fmt.Fprintln(out, strings.ReplaceAll(p.Error(), "\n", "\n  "))
	}
	show(snap, "user-2, matching", req("/api/user", "userid", "123", "x-user-id", "user-2"))

	section("6. Cost of one decision on a prepared snapshot")
	snap = gray.NewSnapshot("bservice", instances, options)
	r := req("/api/order", "userid", "9", "x-user-id", "user-1")
	res := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			snap.Decide(r)
		}
	})
	fmt.Fprintf(out, "%d ns/op, %d allocs/op (go test -bench . -benchmem ./gray for the full set)\n", res.NsPerOp(), res.AllocsPerOp())
}

func req(path string, headers ...string) *gray.StaticRequest {
	r := &gray.StaticRequest{URLPath: path, HTTPMethod: "GET", Headers: map[string]string{}}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers[headers[i]] = headers[i+1]
	}
	return r
}

func show(snap *gray.Snapshot[string], what string, r *gray.StaticRequest) {
	d := snap.Decide(r)
	fmt.Fprintf(out, "%-22s -> lane %-7s reason %-8s instances %v\n", what, d.Lane, d.Reason, d.Instances)
}

func formatMeta(meta map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		parts = append(parts, k+"="+meta[k])
	}
	if len(parts) == 0 {
		return "(no gray keys: stable)"
	}
	return strings.Join(parts, " ")
}

func section(title string) { fmt.Fprintf(out, "\n== %s\n", title) }
