package consultest_test

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
)

// newClient returns a Consul API client for the agent.
func newClient(t *testing.T, a *consultest.Agent) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = a.HTTPAddr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestEncodedMetaSurvivesConsul registers instances whose meta graylane encoded (the source
// article's example, and rules long enough to be split over several keys) with a real agent, reads
// them back from the catalog and decodes them to the same Meta.
func TestEncodedMetaSurvivesConsul(t *testing.T) {
	a := consultest.Start(t)
	client := newClient(t, a)

	text, err := os.ReadFile("../../gray/testdata/article.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var article struct {
		Name string
		Meta gray.Meta
	}
	if err := yaml.Unmarshal(text, &article); err != nil {
		t.Fatal(err)
	}

	long := article.Meta
	long.Match = nil
	for i := 0; i < 12; i++ { // about 1.5 KB of rules, with multi-byte characters at the seams
		long.Match = append(long.Match, gray.Rule{Header: []gray.HeaderMatch{{Key: "x-tenant",
			ValueMatch: gray.ValueMatch{Regex: "^(灰度|canary)-" + strings.Repeat("é", 30) + "-[0-9]+$"}}}})
	}

	for id, m := range map[string]gray.Meta{"article-1": article.Meta, "long-1": long} {
		meta, err := m.Merge(map[string]string{"owner": "team-a"})
		if err != nil {
			t.Fatal(err)
		}
		if err := gray.CheckConsulLimits(meta); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if id == "long-1" && meta["match_2"] == "" {
			t.Fatalf("long rules were not split: %v", meta)
		}
		reg := &api.AgentServiceRegistration{ID: id, Name: article.Name, Port: 8080, Address: "127.0.0.1", Meta: meta}
		if err := client.Agent().ServiceRegister(reg); err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		services, _, err := client.Catalog().Service(article.Name, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]string
		for _, s := range services {
			if s.ServiceID == id {
				got = s.ServiceMeta
			}
		}
		if !reflect.DeepEqual(got, meta) {
			t.Fatalf("%s: catalog meta differs from what was registered:\n got %v\nwant %v", id, got, meta)
		}
		decoded, err := gray.ParseMeta(got)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if !reflect.DeepEqual(decoded, m) {
			t.Fatalf("%s: decoded meta differs:\n got %+v\nwant %+v", id, decoded, m)
		}
		if got["owner"] != "team-a" {
			t.Fatalf("%s: foreign meta key lost: %v", id, got)
		}
	}
}

// TestConsulLimitsAgreeWithServer checks CheckConsulLimits against the server's own validation: meta
// it rejects, Consul rejects too, and meta it accepts, Consul accepts.
func TestConsulLimitsAgreeWithServer(t *testing.T) {
	a := consultest.Start(t)
	client := newClient(t, a)
	tooMany := map[string]string{}
	for i := 0; i < gray.MaxMetaPairs+1; i++ {
		tooMany["k"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	cases := map[string]map[string]string{
		"ok":           {"weight": "5", "match": strings.Repeat("a", gray.MaxMetaValueLength)},
		"long value":   {"match": strings.Repeat("a", gray.MaxMetaValueLength+1)},
		"dotted key":   {"gray.weight": "5"},
		"reserved key": {"consul-weight": "5"},
		"long key":     {strings.Repeat("k", gray.MaxMetaKeyLength+1): "5"},
		"too many":     tooMany,
	}
	for name, meta := range cases {
		local := gray.CheckConsulLimits(meta)
		remote := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "limits", Name: "limits", Meta: meta})
		if (local == nil) != (remote == nil) {
			t.Errorf("%s: CheckConsulLimits says %v, Consul says %v", name, local, remote)
		}
	}
}
