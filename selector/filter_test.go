package selector

import (
	"context"
	"testing"

	kselector "github.com/go-kratos/kratos/v2/selector"
)

// valueNode is a node type whose values cannot be compared with ==, as a user's own Kratos node
// type may be: comparing two interfaces holding it panics.
type valueNode struct {
	addr string
	meta map[string]string
}

func (n valueNode) Scheme() string              { return "grpc" }
func (n valueNode) Address() string             { return n.addr }
func (n valueNode) ServiceName() string         { return "bservice" }
func (n valueNode) InitialWeight() *int64       { return nil }
func (n valueNode) Version() string             { return "" }
func (n valueNode) Metadata() map[string]string { return n.meta }

// TestNodeSetKey: the node set is prepared once however often it comes back, in a new slice each
// time as Kratos' default selector passes it; a different set, order or node prepares it again;
// node types that cannot be compared with == work.
func TestNodeSetKey(t *testing.T) {
	stable := valueNode{addr: "10.0.0.1:9000", meta: map[string]string{}}
	canary := valueNode{addr: "10.0.0.2:9000", meta: map[string]string{"canary": "true", "weight": "100"}}
	nodes := []kselector.Node{stable, canary}
	f := New()
	call := func(ns ...kselector.Node) []kselector.Node {
		return f.filter(context.Background(), append([]kselector.Node(nil), ns...))
	}
	for range 3 {
		if got := call(nodes...); len(got) != 1 || got[0].Address() != canary.addr {
			t.Fatalf("with the canary at 100 %%: %v, want the canary", got)
		}
	}
	if b := f.Builds(); b != 1 {
		t.Fatalf("%d builds for one node set, want 1", b)
	}
	call(nodes[1], nodes[0]) // the same nodes in another order
	call(nodes[0])           // one node fewer
	// Equal field values, but another interface value: another node.
	call(valueNode{addr: stable.addr, meta: map[string]string{}}, canary)
	if b := f.Builds(); b != 4 {
		t.Fatalf("%d builds after three different node sets, want 4", b)
	}
}
