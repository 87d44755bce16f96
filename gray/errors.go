package gray

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MetaError reports a gray meta value that cannot be used. Inspect it with errors.As.
type MetaError struct {
	// Instance is the instance ID, when known.
	Instance string
	// Key is the meta key at fault ("weight", "match", "match_2", ...).
	Key string
	// Line is the line in the YAML form, when the meta was decoded from YAML.
	Line int
	// Err says what is wrong, quoting the value.
	Err error
}

func (e *MetaError) Error() string {
	var b strings.Builder
	b.WriteString("gray: ")
	if e.Instance != "" {
		fmt.Fprintf(&b, "instance %q: ", e.Instance)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	fmt.Fprintf(&b, "meta key %q: %v", e.Key, e.Err)
	return b.String()
}

func (e *MetaError) Unwrap() error { return e.Err }

// LaneConflictError reports instances of one lane that ask for different policies. The lane keeps the
// safer one: the smallest weight, and match rules only where all instances carry the same.
type LaneConflictError struct {
	Service string
	Lane    string
	// Key is the meta key the instances disagree on: "weight" or "match".
	Key string
	// Instances are the IDs of the lane's instances.
	Instances []string
	// Resolution says what the lane uses instead.
	Resolution string
}

func (e *LaneConflictError) Error() string {
	return fmt.Sprintf("gray: service %q: lane %q: instances %s disagree on %s; %s",
		e.Service, e.Lane, strings.Join(e.Instances, ", "), e.Key, e.Resolution)
}

// WeightOverflowError reports lanes whose weights add up to more than 100 %. The snapshot scales
// them down in proportion.
type WeightOverflowError struct {
	Service string
	Total   int // hundredths of a percent
}

func (e *WeightOverflowError) Error() string {
	return fmt.Sprintf("gray: service %q: lane weights add up to %s%%; scaled down in proportion to 100%%",
		e.Service, strconv.FormatFloat(float64(e.Total)/100, 'f', -1, 64))
}

// AmbiguousBaseError reports a service without stable instances where several lanes ask for nothing
// (no canary, weight or match rules). When blue is one of them, blue alone is the base (Base is
// "blue") and the others take no production traffic; otherwise they all form the base and share its
// traffic. Give the live colour a weight of 100, or match rules to the one that should only take
// test traffic.
type AmbiguousBaseError struct {
	Service string
	Lanes   []string
	// Base is the lane chosen as the base, or "" when the lanes share it.
	Base string
}

func (e *AmbiguousBaseError) Error() string {
	prefix := fmt.Sprintf("gray: service %q: lanes %s all ask for nothing (none is stable, none has a weight or match rules)",
		e.Service, strings.Join(e.Lanes, " and "))
	if e.Base != "" {
		return prefix + "; " + e.Base + " is the base and the others take no production traffic until given a weight or promoted"
	}
	return prefix + "; they form the base together and unmatched traffic is spread across them"
}

// SegmentMissingError reports a segment that a lane's match rules or exclusion names but that the
// snapshot was not given (see WithSegments). Nothing fails open: a condition on a missing segment
// matches no request, and a lane whose exclusion names one takes no matched or weighted traffic,
// only tagged requests, until a snapshot is built with the segment.
type SegmentMissingError struct {
	Service string
	Lane    string
	// Instances are the IDs of the lane's instances whose meta names the segment.
	Instances []string
	// Key is the meta key that names it: KeyMatch or KeyExcludeSegment.
	Key     string
	Segment string
	// NotLoaded is set when the snapshot was given no segments at all (WithSegments was not used,
	// or was given nil): the segment may exist but is not known yet. Otherwise the collection given
	// has no segment of that name.
	NotLoaded bool
}

func (e *SegmentMissingError) Error() string {
	state := "which does not exist"
	if e.NotLoaded {
		state = "which is not loaded (the snapshot was built without segments)"
	}
	effect := "the condition matches no request"
	if e.Key == KeyExcludeSegment {
		effect = "the lane takes no matched or weighted traffic, only tagged requests"
	}
	return fmt.Sprintf("gray: service %q: lane %q: instances %s: meta key %q names segment %q, %s; %s",
		e.Service, e.Lane, strings.Join(e.Instances, ", "), e.Key, e.Segment, state, effect)
}

// Reasons an exclusion cannot be applied, found in ExclusionError.Err.
var (
	// ErrExclusionWithoutStickyKey: the options name no sticky key, so no request has a user to
	// check against the lane's exclusion. The lane takes no matched or weighted traffic, only tagged
	// requests.
	ErrExclusionWithoutStickyKey = errors.New("the options name no sticky key (sticky_header or sticky_cookie), so no request has a user to check")
	// ErrExclusionOnBase: the lane is a base lane. The base takes what the other lanes leave, and an
	// excluded user has nowhere else to go; the exclusion is ignored.
	ErrExclusionOnBase = errors.New("the lane is a base lane, which takes every request the other lanes leave")
)

// ExclusionError reports a lane exclusion (exclude_segment) that cannot be applied as written. Err is
// ErrExclusionWithoutStickyKey or ErrExclusionOnBase; inspect it with errors.Is.
type ExclusionError struct {
	Service string
	Lane    string
	// Instances are the IDs of the lane's instances whose meta sets exclude_segment.
	Instances []string
	// Segments are the lane's excluded segments.
	Segments []string
	Err      error
}

func (e *ExclusionError) Error() string {
	resolution := "the lane takes no matched or weighted traffic, only tagged requests"
	if errors.Is(e.Err, ErrExclusionOnBase) {
		resolution = "the exclusion is ignored (set it on a gray lane, or remove it)"
	}
	return fmt.Sprintf("gray: service %q: lane %q: instances %s: meta key %q excludes %s, but %v; %s",
		e.Service, e.Lane, strings.Join(e.Instances, ", "), KeyExcludeSegment, strings.Join(e.Segments, ", "), e.Err, resolution)
}

func (e *ExclusionError) Unwrap() error { return e.Err }
