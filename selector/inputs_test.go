package selector

import (
	"maps"
	"testing"

	"github.com/go-kratos/kratos/v2/registry"
	kselector "github.com/go-kratos/kratos/v2/selector"

	"github.com/graylane/graylane/watch"
)

// TestMetaByAddress: a node takes the watcher's meta for its address, from a tagged address or the
// service address; an address two instances claim is nobody's; a node the watcher does not know
// keeps its own.
func TestMetaByAddress(t *testing.T) {
	list := &watch.Instances{Endpoints: []watch.Endpoint{
		{ID: "a", Address: "10.0.0.1", Port: 9000, Meta: map[string]string{"canary": "true"},
			TaggedAddresses: map[string]string{"grpc": "grpc://10.0.0.1:9000", "http": "http://10.0.0.1:8000"}},
		{ID: "b", Address: "10.0.0.2", Port: 9000, Meta: map[string]string{"weight": "5"}},
		{ID: "c", Address: "10.0.0.3", Port: 9000, Meta: map[string]string{"bluegreen": "blue"},
			TaggedAddresses: map[string]string{"grpc": "grpc://10.0.0.9:9000", "bad": "%zz"}},
		{ID: "d", Address: "10.0.0.4", Port: 9000, Meta: map[string]string{"bluegreen": "green"},
			TaggedAddresses: map[string]string{"grpc": "grpc://10.0.0.9:9000"}},
	}}
	node := func(addr string, meta map[string]string) kselector.Node {
		return kselector.NewNode("grpc", addr, &registry.ServiceInstance{Name: "bservice", Metadata: meta})
	}
	own := map[string]string{"canary": "false"}
	nodes := []kselector.Node{
		node("10.0.0.1:9000", own), node("10.0.0.1:8000", own), node("10.0.0.2:9000", own),
		node("10.0.0.9:9000", own), node("10.0.0.5:9000", own),
	}
	want := []map[string]string{
		list.Endpoints[0].Meta, list.Endpoints[0].Meta, list.Endpoints[1].Meta, own, own,
	}
	got := instancesOf(nodes, &config{}, list)
	for i := range nodes {
		if !maps.Equal(got[i].Meta, want[i]) || got[i].Value != nodes[i] {
			t.Errorf("node %s: meta %v, want %v", nodes[i].Address(), got[i].Meta, want[i])
		}
	}
	for i, in := range instancesOf(nodes, &config{}, nil) {
		if !maps.Equal(in.Meta, own) {
			t.Errorf("without an answer, node %d: meta %v, want its own", i, in.Meta)
		}
	}
}

// FuzzMetaByAddress: whatever addresses Consul holds, mapping them never panics and gives each
// address the meta of the one instance that claims it.
func FuzzMetaByAddress(f *testing.F) {
	f.Add("grpc://10.0.0.1:9000", "10.0.0.1", 9000, "grpc://10.0.0.1:9000", "10.0.0.2", 9000)
	f.Add("%zz", "", 0, "grpc://[::1]:9000", "::1", 9000)
	f.Add("http://user@host:1/path?q#f", "host", 1, "", "host", -1)
	f.Fuzz(func(t *testing.T, tagged1, addr1 string, port1 int, tagged2, addr2 string, port2 int) {
		list := &watch.Instances{Endpoints: []watch.Endpoint{
			{ID: "1", Address: addr1, Port: port1, TaggedAddresses: map[string]string{"grpc": tagged1}, Meta: map[string]string{"id": "1"}},
			{ID: "2", Address: addr2, Port: port2, TaggedAddresses: map[string]string{"grpc": tagged2}, Meta: map[string]string{"id": "2"}},
		}}
		for addr, meta := range metaByAddress(list) {
			id := meta["id"]
			other := list.Endpoints[0]
			if id == "1" {
				other = list.Endpoints[1]
			}
			for a := range metaByAddress(&watch.Instances{Endpoints: []watch.Endpoint{other}}) {
				if a == addr {
					t.Fatalf("%q given to instance %s, though %s claims it too", addr, id, other.ID)
				}
			}
		}
	})
}
