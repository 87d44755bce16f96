package gray

// Compiled matchers. Rules are compiled when meta is decoded: header names are prepared in both
// spellings, methods upper-cased, CIDRs parsed, and regular expressions compiled together with a
// required literal (a substring every match must contain) that rejects most non-matching values with
// one strings.Contains instead of a regexp run. Inside a rule the conditions are ordered by cost so
// that a request that fails a cheap condition never reaches a regexp. Regular expressions run on a
// deterministic automaton where they allow it (dfa.go), else on regexp. An in_segment condition
// compiles to the segment's name and is bound to the *Segment when a snapshot is built (a nil
// segment, not given to the snapshot, matches nothing). Matching allocates nothing, except to
// unescape a query value that holds '%' or '+'.

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"sync"
)

// ruleSet is a compiled rule list: it matches when one of its rules does.
type ruleSet []compiledRule

func (rs ruleSet) match(r Request) int {
	for i := range rs {
		if rs[i].match(r) {
			return i
		}
	}
	return -1
}

// compiledRule matches when all of its conditions do.
type compiledRule []condition

func (cr compiledRule) match(r Request) bool {
	for _, c := range cr {
		if !c.match(r) {
			return false
		}
	}
	return true
}

// condition is one compiled condition.
type condition interface {
	match(r Request) bool
	cost() int
}

// valueOp is how a value is compared.
type valueOp uint8

const (
	opExact valueOp = iota
	opPrefix
	opRegex
	opPresent
	opAbsent
	opSegment
)

// valueMatcher is a compiled ValueMatch. For opSegment, s is the segment's name and seg the segment,
// set when a snapshot is built (bindSegments); a nil seg matches nothing.
type valueMatcher struct {
	op  valueOp
	s   string
	re  *pattern
	seg *Segment
	raw ValueMatch
}

func compileValueMatch(vm ValueMatch) (valueMatcher, error) {
	set := 0
	m := valueMatcher{raw: vm}
	if vm.Exact != "" {
		set++
		m.op, m.s = opExact, vm.Exact
	}
	if vm.Prefix != "" {
		set++
		m.op, m.s = opPrefix, vm.Prefix
	}
	if vm.Regex != "" {
		set++
		re, err := compilePattern(vm.Regex)
		if err != nil {
			return m, err
		}
		m.op, m.re = opRegex, re
	}
	if vm.Present {
		set++
		m.op = opPresent
	}
	if vm.Absent {
		set++
		m.op = opAbsent
	}
	if vm.InSegment != "" {
		set++
		if err := ValidateSegmentName(vm.InSegment); err != nil {
			return m, fmt.Errorf("in_segment: %w", err)
		}
		m.op, m.s = opSegment, vm.InSegment
	}
	switch set {
	case 1:
		return m, nil
	case 0:
		return m, errors.New("needs one of value_match, prefix, regex, present, absent or in_segment (an empty value_match is not allowed: use present)")
	}
	return m, errors.New("sets more than one of value_match, prefix, regex, present, absent and in_segment")
}

func (m *valueMatcher) matches(v string, ok bool) bool {
	switch m.op {
	case opRegex:
		return ok && m.re.matchString(v)
	case opSegment:
		return ok && m.seg.Contains(v)
	}
	return m.matchesPlain(v, ok)
}

// matchesPlain is matches for every operation but opRegex and opSegment: without their calls it is
// small enough to be inlined where a loop checks many conditions.
func (m *valueMatcher) matchesPlain(v string, ok bool) bool {
	switch m.op {
	case opExact:
		return ok && v == m.s
	case opPrefix:
		return ok && strings.HasPrefix(v, m.s)
	case opPresent:
		return ok
	default: // opAbsent
		return !ok
	}
}

func (m *valueMatcher) cost() int {
	switch m.op {
	case opRegex:
		return 50
	case opSegment:
		return 20 // a hash and a table probe
	}
	return 10
}

// segmentMatcher returns the value matcher of a condition on a segment, or nil.
func segmentMatcher(c condition) *valueMatcher {
	var vm *valueMatcher
	switch c := c.(type) {
	case *headerCondition:
		vm = &c.vm
	case *cookieCondition:
		vm = &c.vm
	case *queryCondition:
		vm = &c.vm
	}
	if vm == nil || vm.op != opSegment {
		return nil
	}
	return vm
}

type headerCondition struct {
	key HeaderKey
	vm  valueMatcher
}

func (c *headerCondition) match(r Request) bool {
	v, ok := r.Header(c.key)
	return c.vm.matches(v, ok)
}

func (c *headerCondition) cost() int { return c.vm.cost() }

type cookieCondition struct {
	name string // empty: the whole Cookie header
	vm   valueMatcher
}

func (c *cookieCondition) match(r Request) bool {
	h, ok := r.Header(cookieKey)
	if c.name == "" {
		return c.vm.matches(h, ok)
	}
	v, ok := cookieValue(h, c.name)
	return c.vm.matches(v, ok)
}

func (c *cookieCondition) cost() int { return c.vm.cost() + 5 }

type queryCondition struct {
	name string
	vm   valueMatcher
}

func (c *queryCondition) match(r Request) bool {
	v, ok := queryValue(r.RawQuery(), c.name)
	return c.vm.matches(v, ok)
}

func (c *queryCondition) cost() int { return c.vm.cost() + 5 }

type uriCondition struct {
	prefixes []string
	exact    []string
	re       *pattern
}

func (c *uriCondition) match(r Request) bool {
	p := r.Path()
	switch {
	case c.re != nil:
		return c.re.matchString(p)
	case c.exact != nil:
		return slices.Contains(c.exact, p)
	}
	for _, prefix := range c.prefixes {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}

func (c *uriCondition) cost() int {
	if c.re != nil {
		return 50
	}
	return 10
}

type methodCondition struct{ methods []string }

func (c *methodCondition) match(r Request) bool {
	m := r.Method()
	for _, want := range c.methods {
		if strings.EqualFold(m, want) {
			return true
		}
	}
	return false
}

func (c *methodCondition) cost() int { return 5 }

type clientIPCondition struct{ prefixes []netip.Prefix }

func (c *clientIPCondition) match(r Request) bool {
	ip := r.ClientIP()
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, p := range c.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (c *clientIPCondition) cost() int { return 12 }

// compileRules validates and compiles a rule list.
func compileRules(rules []Rule) (ruleSet, error) {
	set := make(ruleSet, 0, len(rules))
	for i := range rules {
		cr, err := compileRule(&rules[i])
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i+1, err)
		}
		set = append(set, cr)
	}
	return set, nil
}

func compileRule(rule *Rule) (compiledRule, error) {
	var conds compiledRule
	for i, h := range rule.Header {
		if !validHeaderName(h.Key) {
			return nil, fmt.Errorf("header %d: key %q is not a header name", i+1, h.Key)
		}
		vm, err := compileValueMatch(h.ValueMatch)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", h.Key, err)
		}
		conds = append(conds, &headerCondition{key: NewHeaderKey(h.Key), vm: vm})
	}
	for i, c := range rule.Cookie {
		what := "cookie header"
		if c.Name != "" {
			what = fmt.Sprintf("cookie %q", c.Name)
			if strings.ContainsAny(c.Name, "=; \t") {
				return nil, fmt.Errorf("cookie %d: name %q holds '=', ';' or a space", i+1, c.Name)
			}
		}
		vm, err := compileValueMatch(c.ValueMatch)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if c.Name == "" && vm.op == opSegment {
			return nil, fmt.Errorf("%s: in_segment needs a cookie name: the whole Cookie header is no member of a segment", what)
		}
		conds = append(conds, &cookieCondition{name: c.Name, vm: vm})
	}
	for i, q := range rule.Query {
		if q.Name == "" {
			return nil, fmt.Errorf("query %d: needs a name", i+1)
		}
		vm, err := compileValueMatch(q.ValueMatch)
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", q.Name, err)
		}
		conds = append(conds, &queryCondition{name: q.Name, vm: vm})
	}
	for i, u := range rule.URI {
		c, err := compileURIMatch(u)
		if err != nil {
			return nil, fmt.Errorf("uri %d: %w", i+1, err)
		}
		conds = append(conds, c)
	}
	if len(rule.Method) > 0 {
		c := &methodCondition{}
		for _, m := range rule.Method {
			if m == "" || !validHeaderName(m) {
				return nil, fmt.Errorf("method %q is not a method name", m)
			}
			c.methods = append(c.methods, strings.ToUpper(m))
		}
		conds = append(conds, c)
	}
	if len(rule.ClientIP) > 0 {
		c := &clientIPCondition{}
		for _, s := range rule.ClientIP {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("client_ip: %w", err)
			}
			c.prefixes = append(c.prefixes, p)
		}
		conds = append(conds, c)
	}
	if len(conds) == 0 {
		return nil, errors.New("has no condition; a rule without conditions would match every request")
	}
	slices.SortStableFunc(conds, func(a, b condition) int { return cmp.Compare(a.cost(), b.cost()) })
	return conds, nil
}

func compileURIMatch(u URIMatch) (*uriCondition, error) {
	c := &uriCondition{}
	set := 0
	if len(u.Prefix) > 0 {
		set++
		for _, p := range u.Prefix {
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("prefix %q does not start with '/'", p)
			}
		}
		c.prefixes = slices.Clone(u.Prefix)
	}
	if len(u.Exact) > 0 {
		set++
		for _, p := range u.Exact {
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("exact path %q does not start with '/'", p)
			}
		}
		c.exact = slices.Clone(u.Exact)
	}
	if u.Regex != "" {
		set++
		re, err := compilePattern(u.Regex)
		if err != nil {
			return nil, err
		}
		c.re = re
	}
	switch set {
	case 1:
		return c, nil
	case 0:
		return nil, errors.New("needs one of prefix, exact or regex")
	}
	return nil, errors.New("sets more than one of prefix, exact and regex")
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%q is not a CIDR prefix", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// validHeaderName reports whether s is an HTTP token (RFC 9110).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

func unescapeQuery(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// pattern is a compiled regular expression with an optional required literal and, where the
// expression allows, a deterministic automaton (dfa.go) that answers in one step per byte.
type pattern struct {
	re       *regexp.Regexp
	required string
	dfa      *dfa
}

// maxPatternLength bounds a regular expression's source; Consul already bounds a meta value to 512
// characters, but match values may span several keys.
const maxPatternLength = 1024

// patternCache shares compiled patterns (immutable) across snapshot builds: a service's rules are
// compiled once, not at every change of its instances. It is emptied when it reaches
// maxCachedPatterns entries.
var patternCache struct {
	sync.Mutex
	m map[string]*pattern
}

const maxCachedPatterns = 4096

func compilePattern(expr string) (*pattern, error) {
	patternCache.Lock()
	p, ok := patternCache.m[expr]
	patternCache.Unlock()
	if ok {
		return p, nil
	}
	p, err := newPattern(expr)
	if err != nil {
		return nil, err
	}
	patternCache.Lock()
	if patternCache.m == nil || len(patternCache.m) >= maxCachedPatterns {
		patternCache.m = make(map[string]*pattern)
	}
	patternCache.m[expr] = p
	patternCache.Unlock()
	return p, nil
}

func newPattern(expr string) (*pattern, error) {
	if len(expr) > maxPatternLength {
		return nil, fmt.Errorf("regex has %d characters; at most %d are allowed", len(expr), maxPatternLength)
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", expr, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	p := &pattern{re: re, dfa: compileDFA(expr, re)}
	if tree, err := syntax.Parse(expr, syntax.Perl); err == nil {
		p.required = requiredLiteral(tree.Simplify())
	}
	return p, nil
}

func (p *pattern) matchString(s string) bool {
	if p.required != "" && !strings.Contains(s, p.required) {
		return false
	}
	if p.dfa != nil {
		return p.dfa.match(s)
	}
	return p.re.MatchString(s)
}

// requiredLiteral returns the longest case-sensitive literal that every match of re contains: a
// literal reached from the root through concatenations and capture groups only.
func requiredLiteral(re *syntax.Regexp) string {
	best := ""
	var walk func(*syntax.Regexp)
	walk = func(re *syntax.Regexp) {
		switch re.Op {
		case syntax.OpLiteral:
			if re.Flags&syntax.FoldCase == 0 && len(string(re.Rune)) > len(best) {
				best = string(re.Rune)
			}
		case syntax.OpCapture:
			walk(re.Sub[0])
		case syntax.OpConcat:
			for _, sub := range re.Sub {
				walk(sub)
			}
		case syntax.OpPlus:
			// x+ contains at least one x.
			walk(re.Sub[0])
		}
	}
	walk(re)
	return best
}
