package selector_test

import (
	"context"
	"slices"
	"testing"

	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"github.com/go-kratos/kratos/v2/selector/node/direct"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/selector"
)

// FuzzFilter feeds arbitrary meta values (what anyone can write into Consul) to the filter and
// checks Kratos' contract: no panic, only elements of the input, the input untouched, and a
// non-empty result whenever an instance with valid meta that is not draining exists.
func FuzzFilter(f *testing.F) {
	f.Add("true", "10", `[{"header":[{"key":"userid","value_match":"123"}]}]`, "", "", "green", "lots")
	f.Add("false", "", "", "blue", "true", "green", "")
	f.Add("yes", "101", "{", "purple", "", "", "5.5")
	f.Fuzz(func(t *testing.T, canary, weight, match, color, drain, color2, weight2 string) {
		metas := []map[string]string{
			{},
			{"canary": canary, "weight": weight, "match": match},
			{"bluegreen": color, "drain": drain},
			{"bluegreen": color2, "weight": weight2},
		}
		var b direct.Builder
		nodes := make([]kselector.Node, len(metas))
		for i, m := range metas {
			for k, v := range m {
				if v == "" {
					delete(m, k)
				}
			}
			nodes[i] = b.Build(kselector.NewNode("grpc", string(rune('a'+i))+":1", &registry.ServiceInstance{Name: "bservice", Metadata: m}))
		}
		for _, drop := range []int{-1, 0} { // with and without the stable instance
			in := nodes
			if drop >= 0 {
				in = slices.Delete(slices.Clone(nodes), drop, drop+1)
			}
			before := slices.Clone(in)
			out := selector.New().NodeFilter()(context.Background(), in)
			if !slices.Equal(in, before) {
				t.Fatal("the filter wrote into its input")
			}
			for _, n := range out {
				if !slices.Contains(in, n) {
					t.Fatalf("returned %v, not an element of the input", n.Address())
				}
			}
			valid := false
			for _, n := range in {
				if m, err := gray.ParseMeta(n.Metadata()); err == nil && !m.Drain {
					valid = true
				}
			}
			if valid && len(out) == 0 {
				t.Fatalf("empty result while a valid instance exists: %v", metas)
			}
		}
	})
}
