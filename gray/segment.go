package gray

// User segments. A segment is a named set of values (user IDs, tenant IDs) that a match condition
// (in_segment) or a lane exclusion (exclude_segment) names. It is built once and never changes: a
// new version of a segment is a new *Segment, handed to the next snapshot.
//
// The set is an open-addressing hash table over one string. Every distinct value is written to the
// string as one byte holding its length minus one, then its bytes. The table has a power-of-two
// number of uint32 slots, at least twice as many as there are values, so that at most half of them
// are used: a lookup probes 1.5 slots on average for a member and 2.5 for a non-member at the
// fullest (linear probing, half full). A used slot holds the value's offset in the string
// plus one in its low 25 bits (a segment holds at most 100,000 values of at most 256 bytes, under
// 2^25 bytes) and 7 more bits of the value's hash in its high bits, so that a probe that meets
// another value's slot rejects it without reading the string in 127 cases out of 128. An empty
// slot is 0. Values are hashed with segmentHash, the sticky bucket's multiply-and-fold hash
// (bucket.go) with one multiplication fewer, under a random seed drawn for each segment, so that
// nobody can choose request values that collide; an 11-byte value hashes in about 3 ns.
//
// For 100,000 values of 11 bytes this costs 12 bytes of string per value and 262,144 slots of 4
// bytes, 10.5 bytes per value: 22.5 bytes per value in all. A lookup hashes the value once, reads
// one or two slots and, for a member, the string once; it allocates nothing. Building costs one hash
// and a probe or two per value, and three allocations.

import (
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strings"
)

// Segment limits.
const (
	// MaxSegmentValues is the most values a segment holds, duplicates included.
	MaxSegmentValues = 100_000
	// MaxSegmentValueLength is the longest value, in bytes.
	MaxSegmentValueLength = 256
	// MaxSegmentNameLength is the longest segment name.
	MaxSegmentNameLength = 64
)

const (
	slotOffsetBits = 25
	slotOffsetMask = 1<<slotOffsetBits - 1
)

// Segment is an immutable set of values under a name. It is safe for concurrent use. The nil
// *Segment is an empty set.
type Segment struct {
	name  string
	data  string   // each distinct value as one byte (its length - 1) and its bytes
	slots []uint32 // 0: empty; else tag<<25 | offset+1
	mask  uint64   // len(slots) - 1
	seed  uint64   // random, per segment
	n     int
}

// NewSegment builds a segment from its values. The name must be a segment name (see
// ValidateSegmentName). Values are compared byte for byte; each must have 1 to 256 bytes, there may
// be at most 100,000 of them, and duplicates count once. An empty list is an empty segment: it
// matches no request and excludes nobody. values is not retained. Errors are *SegmentError values.
func NewSegment(name string, values []string) (*Segment, error) {
	if err := ValidateSegmentName(name); err != nil {
		return nil, &SegmentError{Segment: name, Err: err}
	}
	if len(values) > MaxSegmentValues {
		return nil, &SegmentError{Segment: name, Err: fmt.Errorf("%d values; a segment holds at most %d", len(values), MaxSegmentValues)}
	}
	size := 0
	for i, v := range values {
		if v == "" || len(v) > MaxSegmentValueLength {
			return nil, &SegmentError{Segment: name, Err: fmt.Errorf("value %d (%.40q) has %d bytes; a value has 1 to %d", i+1, v, len(v), MaxSegmentValueLength)}
		}
		size += 1 + len(v)
	}
	nslots := 8
	if len(values) > 2 {
		nslots = max(nslots, 1<<bits.Len(uint(2*len(values)-1))) // the power of two at or above 2n
	}
	s := &Segment{name: name, slots: make([]uint32, nslots), mask: uint64(nslots - 1), seed: rand.Uint64()}
	var data strings.Builder
	data.Grow(size)
	for _, v := range values {
		h := segmentHash(s.seed, v)
		tag := uint32(h >> (64 - (32 - slotOffsetBits)))
		i := h & s.mask
		for ; s.slots[i] != 0; i = (i + 1) & s.mask {
			// The string written so far: String does not copy, and later writes only append.
			if e := s.slots[i]; e>>slotOffsetBits == tag && valueAt(data.String(), e) == v {
				break
			}
		}
		if s.slots[i] != 0 { // a duplicate
			continue
		}
		s.slots[i] = tag<<slotOffsetBits | uint32(data.Len()+1)
		data.WriteByte(byte(len(v) - 1))
		data.WriteString(v)
		s.n++
	}
	s.data = data.String()
	return s, nil
}

// valueAt returns the value a used slot points to.
func valueAt(data string, slot uint32) string {
	off := int(slot&slotOffsetMask) - 1
	n := int(data[off]) + 1
	return data[off+1 : off+1+n]
}

// Contains reports whether v is in the segment. It allocates nothing. A nil segment contains
// nothing.
func (s *Segment) Contains(v string) bool {
	if s == nil {
		return false
	}
	// An empty or overlong value is never stored: its probe ends at an empty slot or another value.
	h := segmentHash(s.seed, v)
	tag := uint32(h >> (64 - (32 - slotOffsetBits)))
	for i := h & s.mask; ; i = (i + 1) & s.mask {
		e := s.slots[i]
		if e == 0 {
			return false
		}
		if e>>slotOffsetBits == tag && valueAt(s.data, e) == v {
			return true
		}
	}
}

// Name returns the segment's name; "" for a nil segment.
func (s *Segment) Name() string {
	if s == nil {
		return ""
	}
	return s.name
}

// Len returns the number of distinct values.
func (s *Segment) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// ValidateSegmentName reports whether name can name a segment: 1 to 64 lower-case letters, digits,
// '.', '_' and '-', starting with a letter or a digit.
func ValidateSegmentName(name string) error {
	if name == "" || len(name) > MaxSegmentNameLength {
		return fmt.Errorf("segment name %.80q: a segment name has 1 to %d characters", name, MaxSegmentNameLength)
	}
	if c := name[0]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
		return fmt.Errorf("segment name %q: a segment name starts with a lower-case letter or a digit", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("segment name %q: a segment name uses only lower-case letters, digits, '.', '_' and '-'", name)
		}
	}
	return nil
}

// Segments is an immutable collection of segments by name, handed to a snapshot with WithSegments.
// It is safe for concurrent use. The nil *Segments is the state before any segment is known: a
// snapshot built with it reports every segment its meta names as not loaded. NewSegments() with no
// segment is a known, empty collection.
type Segments struct {
	byName map[string]*Segment
}

// NewSegments collects segments by name. Of several segments with one name the last is kept; nil
// segments are skipped. segs is not retained.
func NewSegments(segs ...*Segment) *Segments {
	out := &Segments{byName: make(map[string]*Segment, len(segs))}
	for _, s := range segs {
		if s != nil {
			out.byName[s.name] = s
		}
	}
	return out
}

// With returns a new collection holding s's segments and segs, segs replacing those of the same
// name. s is not modified; a nil s is an empty collection. A watcher uses it to publish one changed
// segment without rebuilding the others.
func (s *Segments) With(segs ...*Segment) *Segments {
	out := &Segments{byName: make(map[string]*Segment, s.Len()+len(segs))}
	if s != nil {
		maps.Copy(out.byName, s.byName)
	}
	for _, seg := range segs {
		if seg != nil {
			out.byName[seg.name] = seg
		}
	}
	return out
}

// Lookup returns the segment with the name, or nil when the collection has none (or is nil).
func (s *Segments) Lookup(name string) *Segment {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// Len returns the number of segments.
func (s *Segments) Len() int {
	if s == nil {
		return 0
	}
	return len(s.byName)
}

// Names returns the segments' names, sorted. It allocates.
func (s *Segments) Names() []string {
	if s == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(s.byName))
}

// SegmentError reports a segment that cannot be built. Inspect it with errors.As.
type SegmentError struct {
	Segment string
	Err     error
}

func (e *SegmentError) Error() string {
	return fmt.Sprintf("gray: segment %.80q: %v", e.Segment, e.Err)
}

func (e *SegmentError) Unwrap() error { return e.Err }

// parseSegmentList reads a comma-separated list of segment names (exclude_segment). Spaces around
// names are allowed; empty names and repeated names are not.
func parseSegmentList(s string) ([]string, error) {
	if len(s) > MaxMetaValueLength {
		return nil, fmt.Errorf("%d bytes; Consul allows at most %d", len(s), MaxMetaValueLength)
	}
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("empty; name one or more segments separated by commas, or leave the key out")
	}
	var names []string
	for part := range strings.SplitSeq(s, ",") {
		name := strings.TrimSpace(part)
		if name == "" {
			return nil, fmt.Errorf("%q: an empty name between commas", s)
		}
		if err := ValidateSegmentName(name); err != nil {
			return nil, err
		}
		if slices.Contains(names, name) {
			return nil, fmt.Errorf("%q names segment %q twice", s, name)
		}
		names = append(names, name)
	}
	return names, nil
}

// validateSegmentNames checks a list of segment names as exclude_segment holds them once joined.
func validateSegmentNames(names []string) error {
	size := len(names) - 1
	for i, name := range names {
		if err := ValidateSegmentName(name); err != nil {
			return err
		}
		if slices.Contains(names[:i], name) {
			return fmt.Errorf("segment %q is named twice", name)
		}
		size += len(name)
	}
	if size > MaxMetaValueLength {
		return fmt.Errorf("the names take %d bytes; Consul allows at most %d", size, MaxMetaValueLength)
	}
	return nil
}

// appendRuleSegments appends the segments that rules name in in_segment conditions.
func appendRuleSegments(names []string, rules []Rule) []string {
	for i := range rules {
		r := &rules[i]
		for _, h := range r.Header {
			if h.InSegment != "" {
				names = append(names, h.InSegment)
			}
		}
		for _, c := range r.Cookie {
			if c.InSegment != "" {
				names = append(names, c.InSegment)
			}
		}
		for _, q := range r.Query {
			if q.InSegment != "" {
				names = append(names, q.InSegment)
			}
		}
	}
	return names
}

// segmentHash is bucketHash with one multiplication fewer for the last 16 bytes: a segment's seed is
// random, and its table needs a good spread, not the bucket's exact contract.
func segmentHash(seed uint64, k string) uint64 {
	h := seed ^ uint64(len(k))
	for len(k) > 16 {
		h = fold(word64(k)^bucketK1^h, word64(k[8:])^bucketK2)
		k = k[16:]
	}
	a, b := tail(k)
	return fold(a^bucketK1^h, b^bucketK2^seed)
}
