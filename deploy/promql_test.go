package deploy

import (
	"slices"
	"strings"
	"testing"
)

// promqlNames returns the metric names and the label names a PromQL expression refers to: the names
// of its selectors (also as {__name__="..."}), the label names of their matchers, and those of by,
// without, on, ignoring, group_left and group_right. It is a lexer, not a parser: string literals,
// ranges and numbers are skipped, a word followed by "(" is a function, and a word that is neither a
// keyword nor an aggregation is a metric. Whether the expression parses is Prometheus' to say
// (TestDashboardQueriesAnswer).
func promqlNames(expr string) (metrics, labels []string) {
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			_, i = stringLiteral(expr, i)
		case c == '[':
			for i < len(expr) && expr[i] != ']' {
				i++
			}
		case c == '{':
			var name string
			var ls []string
			name, ls, i = matchers(expr, i)
			if name != "" {
				metrics = append(metrics, name)
			}
			labels = append(labels, ls...)
		case isDigit(c) || c == '.' && i+1 < len(expr) && isDigit(expr[i+1]):
			for i < len(expr) && (isWordByte(expr[i]) || expr[i] == '.') {
				i++ // 0.99, 5m, 1e3, 0x1f
			}
		case isWordStart(c):
			j := i
			for j < len(expr) && isWordByte(expr[j]) {
				j++
			}
			word := expr[i:j]
			i = j
			next := skipSpace(expr, i)
			switch w := strings.ToLower(word); {
			case groupingWords[w]:
				if next < len(expr) && expr[next] == '(' {
					var ls []string
					ls, i = labelList(expr, next)
					labels = append(labels, ls...)
				}
			case keywords[w] || aggregations[w]:
			case next < len(expr) && expr[next] == '(':
				// a function
			default:
				metrics = append(metrics, word)
			}
		default:
			i++
		}
	}
	return metrics, labels
}

var (
	groupingWords = set("by", "without", "on", "ignoring", "group_left", "group_right")
	keywords      = set("and", "or", "unless", "atan2", "bool", "offset", "nan", "inf")
	aggregations  = set("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio")
)

// matchers reads the label matchers that start at expr[i] == '{' and returns the metric name they
// give (__name__="..."), the other label names and the index after the closing brace.
func matchers(expr string, i int) (name string, labels []string, end int) {
	i++
	for {
		i = skipSpace(expr, i)
		if i >= len(expr) {
			return name, labels, i
		}
		switch c := expr[i]; {
		case c == '}':
			return name, labels, i + 1
		case c == ',':
			i++
			continue
		}
		var label string
		if c := expr[i]; c == '"' || c == '\'' || c == '`' {
			label, i = stringLiteral(expr, i) // a quoted name (Prometheus 3)
		} else {
			j := i
			for j < len(expr) && isWordByte(expr[j]) {
				j++
			}
			label, i = expr[i:j], j
		}
		i = skipSpace(expr, i)
		op := ""
		for i < len(expr) && strings.IndexByte("=!~", expr[i]) >= 0 {
			op += string(expr[i])
			i++
		}
		if op == "" { // {"metric.name"}: a quoted metric name alone
			name = label
			if i < len(expr) && expr[i] != ',' && expr[i] != '}' {
				i++ // not PromQL; let Prometheus say so
			}
			continue
		}
		i = skipSpace(expr, i)
		var value string
		if i < len(expr) && strings.IndexByte("\"'`", expr[i]) >= 0 {
			value, i = stringLiteral(expr, i)
		}
		if label == "__name__" {
			if op == "=" {
				name = value
			}
			continue
		}
		labels = append(labels, label)
	}
}

// labelList reads a parenthesized list of label names at expr[i] == '('.
func labelList(expr string, i int) (labels []string, end int) {
	i++
	for i < len(expr) && expr[i] != ')' {
		if isWordStart(expr[i]) {
			j := i
			for j < len(expr) && isWordByte(expr[j]) {
				j++
			}
			labels = append(labels, expr[i:j])
			i = j
			continue
		}
		i++
	}
	return labels, i + 1
}

// stringLiteral returns the text of the string literal at expr[i] (escapes kept) and the index after it.
func stringLiteral(expr string, i int) (string, int) {
	quote := expr[i]
	j := i + 1
	for j < len(expr) && expr[j] != quote {
		if expr[j] == '\\' && quote != '`' {
			j++
		}
		j++
	}
	return expr[i+1 : min(j, len(expr))], j + 1
}

func skipSpace(s string, i int) int {
	for i < len(s) && strings.IndexByte(" \t\r\n", s[i]) >= 0 {
		i++
	}
	return i
}

func isDigit(c byte) bool     { return c >= '0' && c <= '9' }
func isWordStart(c byte) bool { return c == '_' || c == ':' || c|0x20 >= 'a' && c|0x20 <= 'z' }
func isWordByte(c byte) bool  { return isWordStart(c) || isDigit(c) }

func set(words ...string) map[string]bool {
	m := make(map[string]bool, len(words))
	for _, w := range words {
		m[w] = true
	}
	return m
}

func TestPromQLNames(t *testing.T) {
	for _, tc := range []struct {
		expr            string
		metrics, labels []string
	}{
		{`up`, []string{"up"}, nil},
		{`sum by (lane) (rate(graylane_server_requests_total{service="$service"}[$__rate_interval]))`,
			[]string{"graylane_server_requests_total"}, []string{"lane", "service"}},
		{`histogram_quantile(0.99, sum by (lane, le) (rate(x_bucket{service="a{b}", code!~"5.."}[5m:1m])))`,
			[]string{"x_bucket"}, []string{"lane", "le", "service", "code"}},
		{`(a{phase="x"} == 1) * on (instance) group_left () (b == 1)`,
			[]string{"a", "b"}, []string{"phase", "instance"}},
		{`100 * sum(x) / ignoring (lane) group_left () SUM WITHOUT (job) (y offset 5m)`,
			[]string{"x", "y"}, []string{"lane", "job"}},
		{`{__name__="foo", job='j"}'} > bool 1e3 and count_values("v", z) or NaN`,
			[]string{"foo", "z"}, []string{"job"}},
		{`topk(3, rate(q[1m]) @ end())`, []string{"q"}, nil},
	} {
		metrics, labels := promqlNames(tc.expr)
		if !slices.Equal(metrics, tc.metrics) || !slices.Equal(labels, tc.labels) {
			t.Errorf("promqlNames(%s) = %q, %q; want %q, %q", tc.expr, metrics, labels, tc.metrics, tc.labels)
		}
	}
}
