package gray

// Lane exclusions and segment references. A lane excludes the segments its instances name in
// exclude_segment (the union: the lane never takes a user any of its instances refused). The
// request's user is its sticky key, the value the weight bucket hashes; a request without one is in
// no segment. When a snapshot has a lane to check, Decide takes decideExcluding, which reads the
// user once and then walks the usual steps, skipping the lanes that keep the user out: a lane whose
// rule matches but that excludes the user is passed over for the next lane, and a bucket in an
// excluding lane's range goes to the base (not to another lane: a user's bucket does not move).
// Every decision that keeps a request out of a lane is prepared with the snapshot, so the path
// allocates nothing; its extra cost is one set lookup per excluding lane met.

import (
	"slices"
	"strings"
)

// resolveExclusion sets the lane's exclusion from its instances: the union of their exclude_segment,
// reported when they differ. On a base lane it is ignored and reported. Where it applies, a lane
// whose exclusion cannot be checked (no sticky key in the options, a segment missing) is closed.
func (s *Snapshot[T]) resolveExclusion(l *lane[T], ds []*decoded, opts Options) {
	var ids []string // the instances that set an exclusion
	differ := false
	for i, d := range ds {
		if len(d.meta.ExcludeSegments) > 0 {
			ids = append(ids, l.ids[i])
			l.excludeNames = append(l.excludeNames, d.meta.ExcludeSegments...)
		}
		if !slices.Equal(sortedCopy(d.meta.ExcludeSegments), sortedCopy(ds[0].meta.ExcludeSegments)) {
			differ = true
		}
	}
	if len(l.excludeNames) == 0 {
		return
	}
	slices.Sort(l.excludeNames)
	l.excludeNames = slices.Compact(l.excludeNames)
	if differ {
		s.problems = append(s.problems, &LaneConflictError{Service: s.service, Lane: l.name, Key: KeyExcludeSegment,
			Instances: slices.Clone(l.ids), Resolution: "the lane excludes every segment any of them names: " + strings.Join(l.excludeNames, ", ")})
	}
	if slices.Contains(s.baseLanes, l) {
		s.problems = append(s.problems, &ExclusionError{Service: s.service, Lane: l.name, Instances: ids,
			Segments: slices.Clone(l.excludeNames), Err: ErrExclusionOnBase})
		return
	}
	if opts.StickyHeader == "" && opts.StickyCookie == "" {
		l.closed = true
		s.problems = append(s.problems, &ExclusionError{Service: s.service, Lane: l.name, Instances: ids,
			Segments: slices.Clone(l.excludeNames), Err: ErrExclusionWithoutStickyKey})
	}
	for _, name := range l.excludeNames {
		seg := s.segments.Lookup(name)
		if seg == nil {
			l.closed = true
			var naming []string
			for i, d := range ds {
				if slices.Contains(d.meta.ExcludeSegments, name) {
					naming = append(naming, l.ids[i])
				}
			}
			s.problems = append(s.problems, &SegmentMissingError{Service: s.service, Lane: l.name, Instances: naming,
				Key: KeyExcludeSegment, Segment: name, NotLoaded: s.segments == nil})
		}
		l.exclude = append(l.exclude, seg)
	}
	if l.closed {
		l.exclude = nil
	}
}

func sortedCopy(names []string) []string {
	if len(names) < 2 {
		return names
	}
	return slices.Sorted(slices.Values(names))
}

// reportMissingRuleSegments reports each segment the lane's match rules name that the snapshot was
// not given; their conditions match nothing.
func (s *Snapshot[T]) reportMissingRuleSegments(l *lane[T]) {
	var reported []string
	for _, rule := range l.rules {
		for _, c := range rule {
			if vm := segmentMatcher(c); vm != nil && vm.seg == nil && !slices.Contains(reported, vm.s) {
				reported = append(reported, vm.s)
				s.problems = append(s.problems, &SegmentMissingError{Service: s.service, Lane: l.name,
					Instances: slices.Clone(l.ids), Key: KeyMatch, Segment: vm.s, NotLoaded: s.segments == nil})
			}
		}
	}
}

// prepareExclusions prepares the decisions that keep a request out of a lane: the base's, by each
// exclusion segment and by the lane's being closed. They go where the base decision goes, except that
// a weighted fallback leaves out the lanes that exclude segments (fallbackSafe): the request's user is
// excluded from one lane, and may be from others.
func (s *Snapshot[T]) prepareExclusions() {
	to := s.base
	if len(s.fallbackExcluders) > 0 {
		to = s.fallbackSafe
	}
	if to.Reason == ReasonBase {
		to.Reason = ReasonExcluded
	}
	to.ExcludedFrom = ""
	for _, l := range s.lanes {
		if !l.excludes() {
			continue
		}
		s.excluding = true
		l.shut = to
		l.shut.ExcludedFrom = l.name
		for _, seg := range l.exclude {
			d := l.shut
			d.Segment = seg.Name()
			l.excluded = append(l.excluded, d)
		}
	}
}

// ruleSegments returns the segments a rule's in_segment conditions name, joined with ','.
func ruleSegments(rule *Rule) string {
	names := appendRuleSegments(nil, []Rule{*rule})
	switch len(names) {
	case 0:
		return ""
	case 1:
		return names[0]
	}
	var unique []string
	for _, n := range names {
		if !slices.Contains(unique, n) {
			unique = append(unique, n)
		}
	}
	return strings.Join(unique, ",")
}

// decideExcluding is Decide after the tag step, for a snapshot with lanes that exclude users. With
// useMap the request's headers are read from headers (DecideWithHeaders on a headersOnly snapshot).
func (s *Snapshot[T]) decideExcluding(r Request, headers map[string][]string, useMap bool) *Decision[T] {
	var user string
	var known bool
	if useMap {
		user, known = s.stickyOfHeaders(headers)
	} else {
		user, known = s.stickyValue(r)
	}
	var skipped *Decision[T] // the first lane whose rule matched but that kept the request out
	for _, l := range s.matchLanes {
		i := -1
		if useMap {
			for j, rule := range l.headerRules {
				if matchHeaders(rule, headers) {
					i = j
					break
				}
			}
		} else {
			i = l.rules.match(r)
		}
		if i < 0 {
			continue
		}
		if d := l.keptOut(user, known); d != nil {
			if skipped == nil {
				skipped = d
			}
			continue
		}
		return &l.matched[i]
	}
	if len(s.weighted) > 0 {
		b := randomBucket()
		if known {
			b = bucketOf(s.seed, user)
		}
		for i := range s.weighted {
			if w := &s.weighted[i]; b < w.upper {
				if d := w.lane.keptOut(user, known); d != nil {
					return d
				}
				return &w.decision
			}
		}
	}
	if skipped != nil {
		return skipped
	}
	if known {
		for _, l := range s.fallbackExcluders {
			if l.keptOut(user, known) != nil {
				return &s.fallbackSafe
			}
		}
	}
	return &s.base
}

// ReferencedSegments returns the names of the segments the instances' meta names, in match rules
// and exclusions, sorted and each once: what a watcher loads before building the snapshot. It reads
// only the keys that name segments (meta that does not decode there names none) and decodes each
// distinct meta once; it does not modify instances.
func ReferencedSegments[T any](instances []Instance[T]) []string {
	seen := make(map[string]bool)
	var names []string
	for _, inst := range instances {
		key := segmentFingerprint(inst.Meta)
		if key == "" || seen[key] {
			continue
		}
		seen[key] = true
		if v, ok := inst.Meta[KeyExcludeSegment]; ok {
			if list, err := parseSegmentList(v); err == nil {
				names = append(names, list...)
			}
		}
		if text, _, err := joinMatch(inst.Meta); err == nil && strings.Contains(text, "in_segment") {
			if rules, err := decodeRulesJSON([]byte(text)); err == nil {
				names = appendRuleSegments(names, rules)
			}
		}
	}
	names = slices.DeleteFunc(names, func(n string) bool { return ValidateSegmentName(n) != nil })
	slices.Sort(names)
	return slices.Compact(names)
}

// segmentFingerprint is grayFingerprint over the keys that can name a segment; "" when there are none.
func segmentFingerprint(meta map[string]string) string {
	if _, ok := meta[KeyExcludeSegment]; !ok {
		if _, ok := meta[KeyMatch]; !ok {
			return ""
		}
	}
	return grayFingerprint(meta)
}
