package gray

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The meta keys graylane owns. Every other key is left as it is.
const (
	KeyCanary    = "canary"
	KeyBlueGreen = "bluegreen"
	KeyWeight    = "weight"
	KeyMatch     = "match"
	KeyLane      = "lane"
	KeyDrain     = "drain"
	// KeyExcludeSegment holds the segments whose users the instance's lane must not take, as
	// comma-separated segment names ("vip,internal").
	KeyExcludeSegment = "exclude_segment"
)

// Lane names the decision knows without being told.
const (
	// StableLane is the base lane of instances that carry no gray role.
	StableLane = "stable"
	// CanaryLane is the lane of canary instances that name no lane of their own.
	CanaryLane = "canary"
)

// Consul's limits on service meta (enforced by the server).
const (
	MaxMetaPairs       = 64
	MaxMetaKeyLength   = 128
	MaxMetaValueLength = 512
	// maxMatchChunks bounds how many keys a long match value may be split over.
	maxMatchChunks = 32
	maxLaneLength  = 63
)

// Color is a blue/green environment.
type Color string

// The two colours of a blue/green deployment.
const (
	Blue  Color = "blue"
	Green Color = "green"
)

// Weight is a share of traffic in hundredths of a percent: 0 is none, 10000 is all. Its text form
// is a percentage with at most two decimals ("5", "0.25", "100").
type Weight uint16

// MaxWeight is 100 %.
const MaxWeight Weight = 10000

// Percent returns the weight as a percentage.
func (w Weight) Percent() float64 { return float64(w) / 100 }

// String formats the weight as a percentage without trailing zeros: "5", "12.5", "0.01".
func (w Weight) String() string {
	whole, frac := w/100, w%100
	switch {
	case frac == 0:
		return strconv.Itoa(int(whole))
	case frac%10 == 0:
		return fmt.Sprintf("%d.%d", whole, frac/10)
	default:
		return fmt.Sprintf("%d.%02d", whole, frac)
	}
}

// ParseWeight reads a percentage between 0 and 100 with at most two decimals ("5", "0.25", "100").
func ParseWeight(s string) (Weight, error) {
	whole, frac, hasDot := strings.Cut(s, ".")
	if whole == "" || len(whole) > 3 || !allDigits(whole) || hasDot && (frac == "" || len(frac) > 2 || !allDigits(frac)) {
		return 0, fmt.Errorf("%q is not a percentage between 0 and 100 with at most two decimals (write 5, 0.5 or 12.25)", s)
	}
	w, _ := strconv.Atoi(whole)
	w *= 100
	if frac != "" {
		f, _ := strconv.Atoi(frac)
		if len(frac) == 1 {
			f *= 10
		}
		w += f
	}
	if w > int(MaxWeight) {
		return 0, fmt.Errorf("%q is more than 100 percent", s)
	}
	return Weight(w), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Meta is the gray part of one instance's service meta.
//
// Its YAML form is the one users write in registration specs:
//
//	canary: true
//	bluegreen: green
//	weight: 10
//	match:
//	  - header:
//	      - key: "userid"
//	        value_match: "123"
//	    cookie:
//	        regex: "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$"
//	    uri:
//	      - prefix:
//	          - "/api/user"
//	  - header:
//	      - key: "userid"
//	        in_segment: "beta-testers"
//	exclude_segment: vip # or "vip,internal", or [vip, internal]
//
// The zero Meta is a stable instance.
type Meta struct {
	Canary    bool
	BlueGreen Color
	Weight    Weight
	Match     []Rule
	// Lane names the lane explicitly; empty means the default (see LaneName).
	Lane string
	// Drain marks an instance that is being drained: no new traffic is chosen for it.
	Drain bool
	// ExcludeSegments names segments whose users the lane must not take by match rule or weight
	// (a tag still sends them). In meta it is one comma-separated value under exclude_segment; each
	// name is a segment name (see ValidateSegmentName), named once.
	ExcludeSegments []string
}

// LaneName returns the instance's lane: Lane if set, else "canary" for a canary, else the colour,
// else "stable".
func (m *Meta) LaneName() string {
	switch {
	case m.Lane != "":
		return m.Lane
	case m.Canary:
		return CanaryLane
	case m.BlueGreen != "":
		return string(m.BlueGreen)
	default:
		return StableLane
	}
}

// IsMetaKey reports whether key is one of the meta keys graylane owns (including match chunks).
func IsMetaKey(key string) bool {
	switch key {
	case KeyCanary, KeyBlueGreen, KeyWeight, KeyMatch, KeyLane, KeyDrain, KeyExcludeSegment:
		return true
	}
	_, ok := matchChunkIndex(key)
	return ok
}

// matchChunkIndex returns n for a key "match_n" with n >= 1.
func matchChunkIndex(key string) (int, bool) {
	digits, ok := strings.CutPrefix(key, KeyMatch+"_")
	if !ok || digits == "" || digits[0] == '0' || !allDigits(digits) || len(digits) > 4 {
		return 0, false
	}
	n, _ := strconv.Atoi(digits)
	return n, true
}

// ParseMeta decodes the gray keys of a Consul service meta map and validates them. Keys graylane does
// not own are ignored. Errors are *MetaError values naming the key and the problem; the instance is
// left empty for the caller to fill in.
func ParseMeta(meta map[string]string) (Meta, error) {
	m, _, err := parseMeta(meta)
	return m, err
}

// ParseInstanceMeta is ParseMeta for a named instance: every *MetaError it returns carries the
// instance ID.
func ParseInstanceMeta(id string, meta map[string]string) (Meta, error) {
	m, _, err := parseMeta(meta)
	if err != nil {
		err = withInstance(err, id)
	}
	return m, err
}

// withInstance names the instance in every MetaError inside err.
func withInstance(err error, id string) error {
	var errs []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		var me *MetaError
		if errors.As(e, &me) {
			c := *me
			c.Instance = id
			out[i] = &c
		} else {
			out[i] = fmt.Errorf("gray: instance %q: %w", id, e)
		}
	}
	if len(out) == 1 {
		return out[0]
	}
	return errors.Join(out...)
}

// parseMeta is ParseMeta that also returns the compiled match rules.
func parseMeta(meta map[string]string) (Meta, ruleSet, error) {
	var m Meta
	var errs []error
	fail := func(key string, err error) { errs = append(errs, &MetaError{Key: key, Err: err}) }

	if v, ok := meta[KeyCanary]; ok {
		b, err := parseBool(v)
		if err != nil {
			fail(KeyCanary, err)
		}
		m.Canary = b
	}
	if v, ok := meta[KeyBlueGreen]; ok {
		c, err := parseColor(v)
		if err != nil {
			fail(KeyBlueGreen, err)
		}
		m.BlueGreen = c
	}
	if v, ok := meta[KeyWeight]; ok {
		w, err := ParseWeight(v)
		if err != nil {
			fail(KeyWeight, err)
		}
		m.Weight = w
	}
	if v, ok := meta[KeyLane]; ok {
		if err := validateLane(v); err != nil {
			fail(KeyLane, err)
		}
		m.Lane = v
	}
	if v, ok := meta[KeyDrain]; ok {
		b, err := parseBool(v)
		if err != nil {
			fail(KeyDrain, err)
		}
		m.Drain = b
	}
	if v, ok := meta[KeyExcludeSegment]; ok {
		names, err := parseSegmentList(v)
		if err != nil {
			fail(KeyExcludeSegment, err)
		}
		m.ExcludeSegments = names
	}
	if m.Lane == StableLane && (m.Canary || m.BlueGreen != "") {
		fail(KeyLane, fmt.Errorf("%q is the base lane; a canary or a colour cannot join it (remove lane, or use another lane name)", StableLane))
	}
	var rules ruleSet
	if text, key, err := joinMatch(meta); err != nil {
		fail(key, err)
	} else if text != "" {
		m.Match, err = decodeRulesJSON([]byte(text))
		if err == nil {
			rules, err = compileRules(m.Match)
		}
		if err != nil {
			fail(KeyMatch, err)
		}
	}
	if len(errs) > 0 {
		return m, nil, errors.Join(errs...)
	}
	return m, rules, nil
}

// joinMatch joins match, match_1, match_2, ... On error it returns the key at fault.
func joinMatch(meta map[string]string) (string, string, error) {
	first, ok := meta[KeyMatch]
	var present []int
	for k := range meta {
		if i, isChunk := matchChunkIndex(k); isChunk {
			present = append(present, i)
		}
	}
	if len(present) == 0 {
		return first, KeyMatch, nil
	}
	slices.Sort(present)
	keys := []string{KeyMatch}
	for _, i := range present {
		keys = append(keys, KeyMatch+"_"+strconv.Itoa(i))
	}
	const hint = "the rules are incomplete (a half-written change?); set them again with graylane match"
	if !ok {
		return "", KeyMatch, fmt.Errorf("missing: the rules are split over %s, but the first part is missing; %s",
			strings.Join(keys[1:], ", "), hint)
	}
	var b strings.Builder
	b.WriteString(first)
	for i := 1; i <= present[len(present)-1]; i++ {
		key := KeyMatch + "_" + strconv.Itoa(i)
		part, ok := meta[key]
		if !ok {
			return "", key, fmt.Errorf("missing: the rules are split over %s, but %s is missing; %s",
				strings.Join(keys, ", "), key, hint)
		}
		b.WriteString(part)
	}
	return b.String(), KeyMatch, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true":
		return true, nil
	case "false", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", s)
}

func parseColor(s string) (Color, error) {
	switch c := Color(s); c {
	case Blue, Green:
		return c, nil
	case "":
		return "", nil
	}
	return "", fmt.Errorf("%q is not blue or green", s)
}

func validateLane(s string) error {
	if s == "" || len(s) > maxLaneLength {
		return fmt.Errorf("%q: a lane name has 1 to %d characters", s, maxLaneLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%q: a lane name uses only lower-case letters, digits, '-', '_' and '.'", s)
		}
	}
	return nil
}

// SegmentNames returns the segments the meta names, in its exclusion and its match rules, sorted
// and each once. It allocates.
func (m *Meta) SegmentNames() []string {
	names := slices.Clone(m.ExcludeSegments)
	names = appendRuleSegments(names, m.Match)
	slices.Sort(names)
	return slices.Compact(names)
}

// Validate checks the meta as ParseMeta would after encoding it.
func (m *Meta) Validate() error {
	_, err := m.Encode()
	return err
}

// Encode returns the gray keys for m in Consul meta form. A weight of 0, canary false, drain false
// and empty fields write no key; a match value longer than 512 characters is split into chunks.
func (m *Meta) Encode() (map[string]string, error) {
	var errs []error
	fail := func(key string, err error) { errs = append(errs, &MetaError{Key: key, Err: err}) }
	out := make(map[string]string, 4)
	if m.Canary {
		out[KeyCanary] = "true"
	}
	if m.BlueGreen != "" {
		if _, err := parseColor(string(m.BlueGreen)); err != nil {
			fail(KeyBlueGreen, err)
		}
		out[KeyBlueGreen] = string(m.BlueGreen)
	}
	if m.Weight > MaxWeight {
		fail(KeyWeight, fmt.Errorf("%d hundredths of a percent is more than 100", m.Weight))
	} else if m.Weight > 0 {
		out[KeyWeight] = m.Weight.String()
	}
	if m.Lane != "" {
		if err := validateLane(m.Lane); err != nil {
			fail(KeyLane, err)
		} else if m.Lane == StableLane && (m.Canary || m.BlueGreen != "") {
			fail(KeyLane, fmt.Errorf("%q is the base lane; a canary or a colour cannot join it (remove lane, or use another lane name)", StableLane))
		}
		out[KeyLane] = m.Lane
	}
	if m.Drain {
		out[KeyDrain] = "true"
	}
	if len(m.ExcludeSegments) > 0 {
		if err := validateSegmentNames(m.ExcludeSegments); err != nil {
			fail(KeyExcludeSegment, err)
		} else {
			out[KeyExcludeSegment] = strings.Join(m.ExcludeSegments, ",")
		}
	}
	if len(m.Match) > 0 {
		if _, err := compileRules(m.Match); err != nil {
			fail(KeyMatch, err)
		} else if err := putMatch(out, RulesJSON(m.Match)); err != nil {
			fail(KeyMatch, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// putMatch writes text under match, match_1, ..., each part at most MaxMetaValueLength bytes and
// cut on a UTF-8 character boundary (Consul stores strings; half a character would be mangled).
func putMatch(out map[string]string, text string) error {
	for i := 0; text != ""; i++ {
		if i == maxMatchChunks {
			return fmt.Errorf("the rules need more than %d keys of %d bytes", maxMatchChunks, MaxMetaValueLength)
		}
		n := min(len(text), MaxMetaValueLength)
		for n < len(text) && !utf8.RuneStart(text[n]) {
			n--
		}
		key := KeyMatch
		if i > 0 {
			key += "_" + strconv.Itoa(i)
		}
		out[key] = text[:n]
		text = text[n:]
	}
	return nil
}

// Merge returns a copy of meta in which graylane's keys are replaced by m's encoding; every other key
// is kept. meta itself is not modified. It fails when the result would break Consul's limits.
func (m *Meta) Merge(meta map[string]string) (map[string]string, error) {
	gray, err := m.Encode()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(meta)+len(gray))
	for k, v := range meta {
		if !IsMetaKey(k) {
			out[k] = v
		}
	}
	maps.Copy(out, gray)
	if len(out) > MaxMetaPairs {
		return nil, fmt.Errorf("gray: the meta would hold %d keys; Consul allows at most %d", len(out), MaxMetaPairs)
	}
	return out, nil
}

// CheckConsulLimits reports the first way meta breaks the limits Consul enforces on service meta, so
// that a caller can reject it with a clear error instead of a 400 from the server.
func CheckConsulLimits(meta map[string]string) error {
	if len(meta) > MaxMetaPairs {
		return fmt.Errorf("meta has %d keys; Consul allows at most %d", len(meta), MaxMetaPairs)
	}
	for k, v := range meta {
		switch {
		case k == "" || len(k) > MaxMetaKeyLength:
			return fmt.Errorf("meta key %q: Consul allows 1 to %d bytes", k, MaxMetaKeyLength)
		case strings.HasPrefix(k, "consul-"):
			return fmt.Errorf("meta key %q: the prefix consul- is reserved by Consul", k)
		case !validMetaKey(k):
			return fmt.Errorf("meta key %q: Consul allows only letters, digits, '_' and '-'", k)
		case len(v) > MaxMetaValueLength:
			return fmt.Errorf("meta key %q: value has %d bytes; Consul allows at most %d (counted in bytes: a non-ASCII character takes 2 to 4)", k, len(v), MaxMetaValueLength)
		}
	}
	return nil
}

func validMetaKey(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
