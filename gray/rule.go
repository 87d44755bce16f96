package gray

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Rule is one match rule: the request must satisfy every condition present. A lane's rules are a
// list; the request needs to satisfy one of them.
//
// Where one condition may be written alone, a list is also accepted ("cookie: {regex: ...}" or
// "cookie: [{name: uid, value_match: '7'}]"; "prefix: /api" or "prefix: [/api, /v2]").
type Rule struct {
	// Header conditions; header names are case-insensitive.
	Header []HeaderMatch `json:"header,omitempty" yaml:"header,omitempty"`
	// Cookie conditions: on one cookie by name, or with no name on the whole Cookie header.
	Cookie []CookieMatch `json:"cookie,omitempty" yaml:"cookie,omitempty"`
	// URI conditions on the path, without the query.
	URI []URIMatch `json:"uri,omitempty" yaml:"uri,omitempty"`
	// Query parameter conditions.
	Query []QueryMatch `json:"query,omitempty" yaml:"query,omitempty"`
	// Method holds the request methods of which one must match (case-insensitive).
	Method []string `json:"method,omitempty" yaml:"method,omitempty"`
	// ClientIP holds CIDR prefixes or single addresses of which one must contain the client address.
	ClientIP []string `json:"client_ip,omitempty" yaml:"client_ip,omitempty"`
}

// ValueMatch says how a value must look. Exactly one field is set.
type ValueMatch struct {
	Exact   string `json:"value_match,omitempty" yaml:"value_match,omitempty"`
	Prefix  string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	Regex   string `json:"regex,omitempty" yaml:"regex,omitempty"` // RE2 syntax, unanchored
	Present bool   `json:"present,omitempty" yaml:"present,omitempty"`
	Absent  bool   `json:"absent,omitempty" yaml:"absent,omitempty"`
	// InSegment names a segment (see Segment) that must hold the value, compared byte for byte. The
	// snapshot looks the segment up when it is built (WithSegments); while it has no segment of
	// that name the condition matches no request and the snapshot reports a *SegmentMissingError.
	// Not allowed on the whole Cookie header (a cookie condition without a name).
	InSegment string `json:"in_segment,omitempty" yaml:"in_segment,omitempty"`
}

// HeaderMatch is a condition on one request header.
type HeaderMatch struct {
	Key        string `json:"key" yaml:"key"`
	ValueMatch `yaml:",inline"`
}

// CookieMatch is a condition on one cookie, or on the whole Cookie header when Name is empty.
type CookieMatch struct {
	Name       string `json:"name,omitempty" yaml:"name,omitempty"`
	ValueMatch `yaml:",inline"`
}

// QueryMatch is a condition on one query parameter.
type QueryMatch struct {
	Name       string `json:"name" yaml:"name"`
	ValueMatch `yaml:",inline"`
}

// URIMatch is a condition on the request path. Exactly one field is set; Prefix and Exact match when
// any of their entries does.
type URIMatch struct {
	Prefix []string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	Exact  []string `json:"exact,omitempty" yaml:"exact,omitempty"`
	Regex  string   `json:"regex,omitempty" yaml:"regex,omitempty"` // RE2 syntax, unanchored
}

// RulesJSON returns the compact canonical JSON of rules, as the match meta key holds it before any
// split (HTML characters unescaped: regexes often hold '<', '>' and '&').
func RulesJSON(rules []Rule) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rules); err != nil {
		// The rule types hold only strings, string slices and booleans.
		panic("gray: encoding rules: " + err.Error())
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// decodeRulesJSON decodes the match value: a JSON list of rules, or a single rule.
func decodeRulesJSON(text []byte) ([]Rule, error) {
	var tree any
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	if err := dec.Decode(&tree); err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	if dec.More() {
		return nil, errors.New("not valid JSON: text after the rule list")
	}
	return decodeRuleTree(tree)
}

// decodeRuleTree turns a generic tree (from JSON or YAML) into rules. The tree is first normalized so
// that both forms accept the same shorthands: a single rule or condition where a list is expected, and
// numbers or booleans where a string is expected ("value_match: 123", "value_match: true").
func decodeRuleTree(tree any) ([]Rule, error) {
	list, ok := asList(tree)
	if !ok {
		return nil, fmt.Errorf("expected a list of rules, got %s", kindOf(tree))
	}
	if len(list) == 0 {
		return nil, errors.New("the rule list is empty; leave the match key out instead")
	}
	rules := make([]Rule, len(list))
	for i, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("rule %d: expected a mapping, got %s", i+1, kindOf(item))
		}
		data, err := json.Marshal(normalizeRule(m))
		if err != nil {
			return nil, fmt.Errorf("rule %d: %v", i+1, err)
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rules[i]); err != nil {
			return nil, fmt.Errorf("rule %d: %s", i+1, cleanJSONError(err))
		}
	}
	return rules, nil
}

// normalizeRule rewrites one rule's generic tree so that JSON and YAML accept the same shorthands: a
// single condition or string where a list is expected, numbers and booleans where a string is
// expected ("value_match: 123", "value_match: true"), and "true"/"false" strings for booleans.
// Unknown keys are kept so that strict decoding reports them.
func normalizeRule(rule map[string]any) map[string]any {
	out := make(map[string]any, len(rule))
	for k, v := range rule {
		switch k {
		case "header", "cookie", "query":
			out[k] = mapConditions(v, normalizeValueCondition)
		case "uri":
			out[k] = mapConditions(v, normalizeURICondition)
		case "method", "client_ip":
			out[k] = stringList(v)
		default:
			out[k] = v
		}
	}
	return out
}

func normalizeValueCondition(cond map[string]any) map[string]any {
	out := make(map[string]any, len(cond))
	for k, v := range cond {
		if k == "present" || k == "absent" {
			if s, ok := v.(string); ok {
				switch strings.ToLower(s) {
				case "true":
					v = true
				case "false":
					v = false
				}
			}
			out[k] = v
			continue
		}
		out[k] = scalarString(v)
	}
	return out
}

func normalizeURICondition(cond map[string]any) map[string]any {
	out := make(map[string]any, len(cond))
	for k, v := range cond {
		if k == "prefix" || k == "exact" {
			out[k] = stringList(v)
		} else {
			out[k] = scalarString(v)
		}
	}
	return out
}

// mapConditions applies f to a list of conditions, or to a single condition written alone.
func mapConditions(v any, f func(map[string]any) map[string]any) any {
	switch t := v.(type) {
	case map[string]any:
		return []any{f(t)}
	case []any:
		out := make([]any, len(t))
		for i, item := range t {
			if m, ok := item.(map[string]any); ok {
				out[i] = f(m)
			} else {
				out[i] = item
			}
		}
		return out
	}
	return v
}

func stringList(v any) any {
	switch t := v.(type) {
	case nil:
		return nil
	case []any:
		out := make([]any, len(t))
		for i, item := range t {
			out[i] = scalarString(item)
		}
		return out
	case map[string]any:
		return t
	}
	return []any{scalarString(v)}
}

// scalarString turns numbers and booleans into their text; strings and structures pass unchanged.
func scalarString(v any) any {
	switch t := v.(type) {
	case nil, string, map[string]any, []any:
		return v
	default: // bool, json.Number, numbers from YAML
		return fmt.Sprint(t)
	}
}

func asList(v any) ([]any, bool) {
	switch t := v.(type) {
	case []any:
		return t, true
	case map[string]any:
		return []any{t}, true
	}
	return nil, false
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "a string"
	}
	return fmt.Sprintf("%v", v)
}

// cleanJSONError rewords encoding/json's errors for people who wrote YAML or meta by hand.
func cleanJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		where := strings.ReplaceAll(typeErr.Field, ".ValueMatch", "")
		if where == "" {
			where = "the rule"
		}
		return fmt.Sprintf("%s: expected %s, got %s", where, describeGoType(typeErr.Type.String()), typeErr.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func describeGoType(t string) string {
	switch {
	case strings.HasPrefix(t, "[]gray."):
		return "a list of conditions"
	case strings.HasPrefix(t, "[]"):
		return "a list of strings"
	case strings.HasPrefix(t, "gray."):
		return "a mapping"
	}
	return "a " + t
}
