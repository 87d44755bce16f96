package gray_test

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

// articleMeta is the meta of the source article's example, as the Go model.
var articleMeta = gray.Meta{
	Canary:    true,
	BlueGreen: gray.Green,
	Weight:    1000,
	Match: []gray.Rule{{
		Header: []gray.HeaderMatch{{Key: "userid", ValueMatch: gray.ValueMatch{Exact: "123"}}},
		Cookie: []gray.CookieMatch{{ValueMatch: gray.ValueMatch{Regex: "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"}}},
		URI:    []gray.URIMatch{{Prefix: []string{"/api/user"}}},
	}},
}

func loadArticle(t *testing.T) gray.Meta {
	t.Helper()
	text, err := os.ReadFile("testdata/article.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Name string    `yaml:"name"`
		Meta gray.Meta `yaml:"meta"`
	}
	if err := yaml.Unmarshal(text, &spec); err != nil {
		t.Fatalf("the article's YAML does not decode: %v", err)
	}
	if spec.Name != "bservice" {
		t.Fatalf("name %q", spec.Name)
	}
	return spec.Meta
}

func TestArticleYAMLDecodes(t *testing.T) {
	if got := loadArticle(t); !reflect.DeepEqual(got, articleMeta) {
		t.Fatalf("decoded\n %+v\nwant\n %+v", got, articleMeta)
	}
}

func TestArticleMetaEncoding(t *testing.T) {
	meta, err := articleMeta.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"canary":    "true",
		"bluegreen": "green",
		"weight":    "10",
		"match":     `[{"header":[{"key":"userid","value_match":"123"}],"cookie":[{"regex":"^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"}],"uri":[{"prefix":["/api/user"]}]}]`,
	}
	if !reflect.DeepEqual(meta, want) {
		t.Fatalf("encoded\n %v\nwant\n %v", meta, want)
	}
}

// TestRoundTrips: YAML -> model -> meta -> model -> YAML -> model, all equal; meta re-encodes to the
// same bytes.
func TestRoundTrips(t *testing.T) {
	models := []gray.Meta{
		articleMeta,
		{},
		{Lane: "release-42", Weight: 1, Drain: true},
		{BlueGreen: gray.Blue, Weight: gray.MaxWeight},
		{Canary: true, Weight: 1250, Match: []gray.Rule{
			{Query: []gray.QueryMatch{{Name: "beta", ValueMatch: gray.ValueMatch{Present: true}}}, Method: []string{"GET"}},
			{ClientIP: []string{"10.0.0.0/8", "::1"}, URI: []gray.URIMatch{{Exact: []string{"/a", "/b"}}, {Regex: "^/v[0-9]+/"}}},
			{Cookie: []gray.CookieMatch{{Name: "uid", ValueMatch: gray.ValueMatch{Prefix: "qa-"}}},
				Header: []gray.HeaderMatch{{Key: "x-legacy", ValueMatch: gray.ValueMatch{Absent: true}}}},
		}},
		{Lane: "beta", Weight: 500, ExcludeSegments: []string{"vip", "internal.staff"}, Match: []gray.Rule{
			{Header: []gray.HeaderMatch{{Key: "x-user-id", ValueMatch: gray.ValueMatch{InSegment: "beta-testers"}}}},
			{Cookie: []gray.CookieMatch{{Name: "uid", ValueMatch: gray.ValueMatch{InSegment: "beta-testers"}}},
				Query: []gray.QueryMatch{{Name: "tenant", ValueMatch: gray.ValueMatch{InSegment: "tenants_2"}}}},
		}},
	}
	for i, m := range models {
		meta, err := m.Encode()
		if err != nil {
			t.Fatalf("model %d: %v", i, err)
		}
		back, err := gray.ParseMeta(meta)
		if err != nil {
			t.Fatalf("model %d: %v", i, err)
		}
		if !reflect.DeepEqual(back, m) {
			t.Fatalf("model %d: meta round trip\n got %+v\nwant %+v", i, back, m)
		}
		again, _ := back.Encode()
		if !reflect.DeepEqual(again, meta) {
			t.Fatalf("model %d: re-encoding changed the meta:\n %v\n %v", i, again, meta)
		}
		text, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var fromYAML gray.Meta
		if err := yaml.Unmarshal(text, &fromYAML); err != nil {
			t.Fatalf("model %d: %v\n%s", i, err, text)
		}
		if !reflect.DeepEqual(fromYAML, m) {
			t.Fatalf("model %d: YAML round trip\n got %+v\nwant %+v\n%s", i, fromYAML, m, text)
		}
	}
}

func TestYAMLShorthands(t *testing.T) {
	text := `
canary: true
weight: 0.5
match:
  header: {key: UserID, value_match: 0123}
  cookie: {name: uid, value_match: 42}
  uri: {prefix: /api}
  method: get
  client_ip: 10.0.0.1
  query: {name: debug, present: "true"}
`
	var m gray.Meta
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		t.Fatal(err)
	}
	want := gray.Meta{Canary: true, Weight: 50, Match: []gray.Rule{{
		Header:   []gray.HeaderMatch{{Key: "UserID", ValueMatch: gray.ValueMatch{Exact: "0123"}}},
		Cookie:   []gray.CookieMatch{{Name: "uid", ValueMatch: gray.ValueMatch{Exact: "42"}}},
		URI:      []gray.URIMatch{{Prefix: []string{"/api"}}},
		Query:    []gray.QueryMatch{{Name: "debug", ValueMatch: gray.ValueMatch{Present: true}}},
		Method:   []string{"get"},
		ClientIP: []string{"10.0.0.1"},
	}}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got\n %+v\nwant\n %+v", m, want)
	}
	// "value_match: true" is the article's canary header, written without quotes.
	if err := yaml.Unmarshal([]byte("canary: true\nmatch: [{header: [{key: canary, value_match: true}]}]\n"), &m); err != nil {
		t.Fatal(err)
	}
	if m.Match[0].Header[0].Exact != "true" {
		t.Fatalf("value_match: true decoded as %q", m.Match[0].Header[0].Exact)
	}
}

// TestBadMetaErrors: every error names the key and the problem, and YAML errors the line.
func TestBadMetaErrors(t *testing.T) {
	cases := []struct {
		meta map[string]string
		key  string
		says string
	}{
		{map[string]string{"canary": "yes"}, "canary", `"yes" is not true or false`},
		{map[string]string{"bluegreen": "Blue"}, "bluegreen", `"Blue" is not blue or green`},
		{map[string]string{"weight": "5.555"}, "weight", "at most two decimals (write 5, 0.5 or 12.25)"},
		{map[string]string{"weight": "101"}, "weight", `"101" is more than 100 percent`},
		{map[string]string{"weight": "-1"}, "weight", "is not a percentage"},
		{map[string]string{"weight": "1e2"}, "weight", "is not a percentage"},
		{map[string]string{"lane": "Release 42"}, "lane", "lower-case letters"},
		{map[string]string{"drain": "soon"}, "drain", `"soon" is not true or false`},
		{map[string]string{"match": "[]"}, "match", "the rule list is empty"},
		{map[string]string{"match": `"x"`}, "match", "expected a list of rules, got a string"},
		{map[string]string{"match": `[{"header":{"key":"a"}}]`}, "match", `rule 1: header "a": needs one of value_match`},
		{map[string]string{"match": `[{"header":[{"key":"a b","present":true}]}]`}, "match", `key "a b" is not a header name`},
		{map[string]string{"match": `[{"header":[{"key":"a","prefix":"x","regex":"y"}]}]`}, "match", "more than one"},
		{map[string]string{"match": `[{"uri":[{"prefix":"api"}]}]`}, "match", `prefix "api" does not start with '/'`},
		{map[string]string{"match": `[{"uri":[{}]}]`}, "match", "needs one of prefix, exact or regex"},
		{map[string]string{"match": `[{"client_ip":["10.0.0.300/8"]}]`}, "match", "is not a CIDR prefix"},
		{map[string]string{"match": `[{"query":[{"value_match":"1"}]}]`}, "match", "query 1: needs a name"},
		{map[string]string{"match": `[{"header":[{"key":"a","present":"maybe"}]}]`}, "match", "header.present: expected a bool"},
		{map[string]string{"match": `[{"header":"x"}]`}, "match", "header: expected a list of conditions"},
		{map[string]string{"match": `[{"header":[{"key":"a","present":true}]}] trailing`}, "match", "not valid JSON"},
		{map[string]string{"match_1": "x"}, "match", `but the first part is missing`},
		{map[string]string{"canary": "true", "lane": "stable"}, "lane", `"stable" is the base lane`},
		{map[string]string{"bluegreen": "green", "lane": "stable"}, "lane", `"stable" is the base lane`},
	}
	for _, c := range cases {
		_, err := gray.ParseMeta(c.meta)
		var me *gray.MetaError
		if !errors.As(err, &me) {
			t.Errorf("%v: error %v is not a *gray.MetaError", c.meta, err)
			continue
		}
		if me.Key != c.key || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%v:\n got %v (key %q)\nwant key %q saying %q", c.meta, err, me.Key, c.key, c.says)
		}
	}

	var m gray.Meta
	err := yaml.Unmarshal([]byte("canary: true\nweigth: 10\n"), &m)
	if err == nil || !strings.Contains(err.Error(), `line 2: meta key "weigth": not a gray meta key`) {
		t.Errorf("misspelt key: %v", err)
	}
	err = yaml.Unmarshal([]byte("canary: true\nweight: 10\nmatch:\n  - header:\n      - key: a\n        value_mach: b\n"), &m)
	if err == nil || !strings.Contains(err.Error(), `line 3: meta key "match": rule 1: unknown field "value_mach"`) {
		t.Errorf("misspelt field: %v", err)
	}
	err = yaml.Unmarshal([]byte("canary: true\nweight: 10%\n"), &m)
	if err == nil || !strings.Contains(err.Error(), `line 2: meta key "weight": "10%" is not a percentage`) {
		t.Errorf("bad weight: %v", err)
	}
}

func TestWeightText(t *testing.T) {
	for text, w := range map[string]gray.Weight{"0": 0, "0.01": 1, "0.1": 10, "5": 500, "5.5": 550, "12.34": 1234, "100": 10000, "100.00": 10000, "07": 700} {
		got, err := gray.ParseWeight(text)
		if err != nil || got != w {
			t.Errorf("ParseWeight(%q) = %d, %v; want %d", text, got, err, w)
		}
	}
	for w, text := range map[gray.Weight]string{0: "0", 1: "0.01", 10: "0.1", 550: "5.5", 1234: "12.34", 10000: "100"} {
		if got := w.String(); got != text {
			t.Errorf("Weight(%d).String() = %q, want %q", w, got, text)
		}
	}
}

func TestMergeKeepsForeignKeysAndDropsStaleChunks(t *testing.T) {
	old := map[string]string{"version": "v2", "weight": "5", "match": "[", "match_1": "stale", "match_2": "stale", "canary": "true"}
	m := gray.Meta{Canary: true, Weight: 2500}
	got, err := m.Merge(old)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"version": "v2", "weight": "25", "canary": "true"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if old["match_1"] != "stale" || len(old) != 6 {
		t.Fatal("Merge modified its input")
	}
	// A share of 0 writes no weight key: Kratos' balancer reads the same key.
	if got, _ := (&gray.Meta{Canary: true}).Merge(map[string]string{"weight": "100"}); got["weight"] != "" {
		t.Fatalf("weight 0 wrote %q", got["weight"])
	}
}

func TestLongMatchIsChunkedOnCharacterBoundaries(t *testing.T) {
	m := gray.Meta{Canary: true}
	for i := 0; i < 40; i++ {
		m.Match = append(m.Match, gray.Rule{Header: []gray.HeaderMatch{{Key: "x-灰度", ValueMatch: gray.ValueMatch{Exact: strings.Repeat("灰", 7)}}}})
	}
	if _, err := m.Encode(); err == nil {
		t.Fatal("a header name that is not a token was accepted")
	}
	for i := range m.Match {
		m.Match[i].Header[0].Key = "x-gray"
	}
	meta, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if meta["match_2"] == "" {
		t.Fatalf("expected at least three chunks, got keys %v", len(meta))
	}
	if err := gray.CheckConsulLimits(meta); err != nil {
		t.Fatal(err)
	}
	for k, v := range meta {
		if !utf8.ValidString(v) {
			t.Fatalf("chunk %s is not valid UTF-8", k)
		}
	}
	back, err := gray.ParseMeta(meta)
	if err != nil || !reflect.DeepEqual(back, m) {
		t.Fatalf("chunked round trip: %v", err)
	}
	// Rules too long for any number of keys are refused at encoding.
	huge := gray.Meta{Match: []gray.Rule{{Header: []gray.HeaderMatch{{Key: "x", ValueMatch: gray.ValueMatch{Exact: strings.Repeat("a", 40000)}}}}}}
	if _, err := huge.Encode(); err == nil || !strings.Contains(err.Error(), "more than 32 keys") {
		t.Fatalf("huge rules: %v", err)
	}
	// Merge refuses meta that would exceed Consul's 64 keys.
	crowded := map[string]string{}
	for i := 0; i < 62; i++ {
		crowded["k"+string(rune('A'+i%26))+string(rune('A'+i/26))] = "v"
	}
	if _, err := m.Merge(crowded); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("crowded meta: %v", err)
	}
}

func TestLaneName(t *testing.T) {
	for m, lane := range map[*gray.Meta]string{
		{}:                                  "stable",
		{Canary: true}:                      "canary",
		{BlueGreen: gray.Blue}:              "blue",
		{Canary: true, BlueGreen: "green"}:  "canary",
		{Canary: true, Lane: "release-42"}:  "release-42",
		{BlueGreen: gray.Green, Lane: "rc"}: "rc",
	} {
		if got := m.LaneName(); got != lane {
			t.Errorf("%+v: lane %q, want %q", m, got, lane)
		}
	}
}

func TestParseInstanceMetaNamesTheInstance(t *testing.T) {
	_, err := gray.ParseInstanceMeta("b-7", map[string]string{"weight": "x", "canary": "maybe"})
	if err == nil || strings.Count(err.Error(), `instance "b-7": meta key`) != 2 {
		t.Fatalf("%v", err)
	}
	if m, err := gray.ParseInstanceMeta("b-7", map[string]string{"canary": "true"}); err != nil || !m.Canary {
		t.Fatalf("%+v %v", m, err)
	}
}

func TestYAMLRepeatedKeyIsRefused(t *testing.T) {
	var m gray.Meta
	err := yaml.Unmarshal([]byte("weight: 5\ncanary: true\nweight: 10\n"), &m)
	var me *gray.MetaError
	if !errors.As(err, &me) || me.Key != "weight" || me.Line != 3 || !strings.Contains(err.Error(), "first at line 1") {
		t.Fatalf("got %v", err)
	}
}
