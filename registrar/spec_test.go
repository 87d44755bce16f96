package registrar_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/registrar"
)

// TestSpecErrors: a bad spec fails as a whole, and each error names the file, the line, the instance
// and the field.
func TestSpecErrors(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"name: a\nid: a-1\nadress: x\n", "s.yaml:3: instance a-1: adress: unknown field; expected one of name, id"},
		{"name: a\ncheck:\n  http: http://x\n  interval: 1s\n  timout: 1s\n", "s.yaml:5: instance a: check.timout: unknown field"},
		{"name: a\ncheck: {http: 'http://x', tcp: 'x:1'}\n", "s.yaml:2: instance a: check: set exactly one of http, grpc, tcp and ttl"},
		{"name: a\ncheck: {ttl: 10s, deregister_after: 30s}\n", "deregister_after: Consul allows no less than 1m"},
		{"name: a\ncheck: {tcp: 'x:1', interval: soon}\n", `interval: "soon" is not a positive duration`},
		{"name: a\nport: 70000\n", "s.yaml:2: instance a: port: 70000 is not a port"},
		{"id: a-1\nport: 1\n", "s.yaml:1: instance a-1: name: missing"},
		{"name: a b\n", `name: "a b": use letters`},
		{"name: a\nmeta:\n  canary: true\n  weight: 10%\n", `s.yaml:4: instance a: meta: gray: meta key "weight": "10%" is not a percentage`},
		{"name: a\nmeta:\n  canary: true\n  match:\n    - header:\n        - key: userid\n          value_mach: '1'\n", `s.yaml:4: instance a: meta: gray: meta key "match": rule 1: unknown field "value_mach"`},
		{"name: a\nmeta:\n  weigth: 10\n", `s.yaml:3: instance a: meta.weigth: looks like graylane's "weight" misspelt`},
		{"name: a\nmeta:\n  Canary: true\n", `meta.Canary: looks like graylane's "canary" misspelt`},
		{"name: a\nmeta:\n  owner: [a, b]\n", "s.yaml:3: instance a: meta.owner: expected a single value"},
		{"- {name: a, id: x}\n- {name: a, id: x}\n", "s.yaml:2: instance x: id: repeats the instance at line 1"},
		{"- {name: a, id: ok}\n- {name: a, port: -1}\n", "s.yaml:2: instance a: port: -1 is not a port"},
		{"name: a\nmeta:\n  weight: 5\n  weight: 10\n", `s.yaml:4: instance a: meta: gray: meta key "weight": repeated (first at line 3)`},
		{"name: a\nmeta:\n  owner: x\n  owner: y\n", "s.yaml:4: instance a: meta.owner: repeated"},
		{"name: a\nendpoints: ['grpc://127.0.0.1']\n", `s.yaml:2: instance a: endpoints: "grpc://127.0.0.1": want scheme://host:port`},
		{"name: a\nendpoints: ['http://x:1', 'http://x:2']\n", `endpoints: "http://x:2": a second http endpoint`},
		{"name: a\nmeta:\n  canary: true\n  lane: stable\n", `s.yaml:4: instance a: meta: gray: meta key "lane": "stable" is the base lane`},
	}
	for _, c := range cases {
		specs, err := registrar.ParseSpecs("s.yaml", []byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("spec:\n%s\ngot  %v\nwant %s", c.yaml, err, c.want)
			continue
		}
		if specs != nil {
			t.Errorf("a bad file still returned %d specs", len(specs))
		}
		var se *registrar.SpecError
		if !errors.As(err, &se) || se.File != "s.yaml" {
			t.Errorf("error %v is not a *registrar.SpecError", err)
		}
	}
}

// TestSpecEndpoints: endpoints become tagged addresses keyed by scheme, the form the Kratos consul
// registry resolves (a gRPC client needs the grpc one).
func TestSpecEndpoints(t *testing.T) {
	specs, err := registrar.ParseSpecs("s.yaml", []byte("name: a\naddress: 127.0.0.1\nport: 8000\nendpoints: ['grpc://127.0.0.1:9000', 'http://127.0.0.1:8000']\n"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := specs[0].Registration()
	if err != nil {
		t.Fatal(err)
	}
	if g, h := reg.TaggedAddresses["grpc"], reg.TaggedAddresses["http"]; len(reg.TaggedAddresses) != 2 ||
		g.Address != "grpc://127.0.0.1:9000" || g.Port != 9000 || h.Address != "http://127.0.0.1:8000" || h.Port != 8000 {
		t.Errorf("tagged addresses %+v", reg.TaggedAddresses)
	}
}

func TestSpecForms(t *testing.T) {
	for _, text := range []string{
		"name: a\nid: a-1\n",
		"- name: a\n  id: a-1\n",
		"name: a\nid: a-1\n---\nname: b\n",
		"name: a\nid: a-1\n---\n",
		"---\nname: a\nid: a-1\n---\n---\n",
	} {
		specs, err := registrar.ParseSpecs("s.yaml", []byte(text))
		if err != nil || specs[0].ID != "a-1" || specs[0].Name != "a" {
			t.Errorf("%q: %v %+v", text, err, specs)
		}
	}
	specs, _ := registrar.ParseSpecs("s.yaml", []byte("name: a\nid: a-1\n---\nname: b\n"))
	if len(specs) != 2 || specs[1].ID != "b" {
		t.Fatalf("two documents: %+v", specs)
	}
}

// TestSpecOverConsulLimits: a spec whose meta Consul would refuse fails with a clear error before
// anything is written; long rules are split over several keys and accepted.
func TestSpecOverConsulLimits(t *testing.T) {
	var many strings.Builder
	many.WriteString("name: big\nport: 1\nmeta:\n")
	for i := 0; i < 65; i++ {
		fmt.Fprintf(&many, "  k%d: v\n", i)
	}
	_, err := registrar.ParseSpecs("big.yaml", []byte(many.String()))
	if err == nil || !strings.Contains(err.Error(), "big.yaml:3: instance big: meta: ") || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("too many keys: %v", err)
	}
	_, err = registrar.ParseSpecs("dot.yaml", []byte("name: dot\nmeta:\n  app.version: v1\n"))
	if err == nil || !strings.Contains(err.Error(), `meta key "app.version": Consul allows only letters`) {
		t.Fatalf("dotted key: %v", err)
	}

	var long strings.Builder
	long.WriteString("name: long\nid: long-1\nport: 1\nmeta:\n  canary: true\n  match:\n")
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&long, "    - header: [{key: x-tenant-%02d, regex: '^tenant-(alpha|beta|gamma)-[0-9]{4}$'}]\n", i)
	}
	specs, err := registrar.ParseSpecs("long.yaml", []byte(long.String()))
	if err != nil {
		t.Fatal(err)
	}
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	instances, _, err := r.Instances(context.Background(), "long")
	if err != nil || len(instances) != 1 || instances[0].Meta["match_3"] == "" || len(instances[0].Gray.Match) != 30 {
		t.Fatalf("long rules: %v %+v", err, instances)
	}
}
