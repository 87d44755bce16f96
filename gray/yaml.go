package gray

import (
	"errors"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// The YAML form is the meta schema with match written as YAML instead of a JSON string. Scalars are
// read as the same strings Consul would hold, and structured match rules go through the same
// normalization and strict decoding as the JSON in meta, so both forms accept exactly the same rules.

var (
	_ yaml.Unmarshaler = (*Meta)(nil)
	_ yaml.Marshaler   = Meta{}
)

// UnmarshalYAML decodes the YAML form (see Meta). Unknown keys are errors, so that a misspelt key is
// not silently ignored; a caller that mixes graylane's keys with other meta keys splits them first
// with IsMetaKey. Errors are *MetaError values with Line set.
func (m *Meta) UnmarshalYAML(node *yaml.Node) error {
	node = resolveAlias(node)
	if node.Kind != yaml.MappingNode {
		return &MetaError{Key: "meta", Line: node.Line, Err: errors.New("expected a mapping of gray meta keys")}
	}
	flat := make(map[string]string)
	lines := make(map[string]int)
	var structured *yaml.Node
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], resolveAlias(node.Content[i+1])
		key := k.Value
		if first, dup := lines[key]; dup {
			return &MetaError{Key: key, Line: k.Line, Err: fmt.Errorf("repeated (first at line %d); a mapping holds each key once", first)}
		}
		lines[key] = k.Line
		switch key {
		case KeyCanary, KeyBlueGreen, KeyWeight, KeyLane, KeyDrain:
			if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
				return &MetaError{Key: key, Line: v.Line, Err: errors.New("expected a single value")}
			}
			flat[key] = v.Value
		case KeyExcludeSegment:
			// One name, names separated by commas as in meta, or a list of names.
			switch {
			case v.Kind == yaml.ScalarNode && v.Tag != "!!null":
				flat[key] = v.Value
			case v.Kind == yaml.SequenceNode && len(v.Content) > 0:
				names := make([]string, len(v.Content))
				for j, item := range v.Content {
					item = resolveAlias(item)
					if item.Kind != yaml.ScalarNode || item.Tag == "!!null" || strings.Contains(item.Value, ",") {
						return &MetaError{Key: key, Line: item.Line, Err: errors.New("expected a list of segment names")}
					}
					names[j] = item.Value
				}
				flat[key] = strings.Join(names, ",")
			default:
				return &MetaError{Key: key, Line: v.Line, Err: errors.New("expected a segment name, names separated by commas, or a list of names")}
			}
		case KeyMatch:
			if v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
				flat[key] = v.Value // the JSON text, as it is stored in meta
			} else {
				structured = v
			}
		default:
			return &MetaError{Key: key, Line: k.Line, Err: fmt.Errorf("not a gray meta key (%s, %s, %s, %s, %s, %s, %s)",
				KeyCanary, KeyBlueGreen, KeyWeight, KeyMatch, KeyLane, KeyDrain, KeyExcludeSegment)}
		}
	}
	decoded, _, err := parseMeta(flat)
	if err == nil && structured != nil {
		decoded.Match, err = decodeRuleTree(yamlTree(structured))
		if err == nil {
			_, err = compileRules(decoded.Match)
		}
		if err != nil {
			err = &MetaError{Key: KeyMatch, Err: err}
		}
	}
	if err != nil {
		return addLines(err, lines)
	}
	*m = decoded
	return nil
}

// addLines sets Line on each MetaError in err from the line of its key.
func addLines(err error, lines map[string]int) error {
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	for _, e := range errs {
		var me *MetaError
		if errors.As(e, &me) && me.Line == 0 {
			me.Line = lines[me.Key]
		}
	}
	return err
}

// MarshalYAML writes the YAML form: booleans and the weight as YAML scalars, match as YAML.
func (m Meta) MarshalYAML() (any, error) {
	out := &yaml.Node{Kind: yaml.MappingNode}
	add := func(key string, value *yaml.Node) {
		out.Content = append(out.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, value)
	}
	scalar := func(tag, value string) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
	}
	if m.Canary {
		add(KeyCanary, scalar("!!bool", "true"))
	}
	if m.BlueGreen != "" {
		add(KeyBlueGreen, scalar("!!str", string(m.BlueGreen)))
	}
	if m.Weight > 0 {
		tag := "!!int"
		if m.Weight%100 != 0 {
			tag = "!!float"
		}
		add(KeyWeight, scalar(tag, m.Weight.String()))
	}
	if len(m.Match) > 0 {
		var rules yaml.Node
		if err := rules.Encode(m.Match); err != nil {
			return nil, err
		}
		add(KeyMatch, &rules)
	}
	if m.Lane != "" {
		add(KeyLane, scalar("!!str", m.Lane))
	}
	if m.Drain {
		add(KeyDrain, scalar("!!bool", "true"))
	}
	if len(m.ExcludeSegments) > 0 {
		add(KeyExcludeSegment, scalar("!!str", strings.Join(m.ExcludeSegments, ",")))
	}
	return out, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		return resolveAlias(n.Content[0])
	}
	return n
}

// yamlTree turns a YAML node into a generic tree whose scalars are the literal text the user wrote
// ("0123" stays "0123"), null being nil.
func yamlTree(n *yaml.Node) any {
	n = resolveAlias(n)
	switch n.Kind {
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			out[n.Content[i].Value] = yamlTree(n.Content[i+1])
		}
		return out
	case yaml.SequenceNode:
		out := make([]any, len(n.Content))
		for i, c := range n.Content {
			out[i] = yamlTree(c)
		}
		return out
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil
		}
		return n.Value
	}
	return nil
}
