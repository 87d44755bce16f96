package gray

// The decision on a header map. gRPC metadata, and Kratos' gRPC transport headers, hold a request's
// headers in one map keyed by lower-case names. When every match rule of a snapshot reads headers
// only, such a request is decided from the map itself: each header is one map read, and a rule is a
// loop over its header conditions, without the interface calls of the general decision. The steps
// and their order are those of Decide; TestVectors and FuzzDecide check that both decide alike.

// DecideWithHeaders is Decide for a request whose headers are all in one map keyed by lower-case
// names, each with its values in order, as gRPC metadata holds them. r must show the same headers
// (r.Header agrees with the map); it answers what the map does not hold (path, query, method, client
// address) when a rule asks for it. A nil map holds no headers.
func (s *Snapshot[T]) DecideWithHeaders(headers map[string][]string, r Request) *Decision[T] {
	if !s.headersOnly {
		return s.Decide(r)
	}
	if tag, _ := firstValue(headers[s.tagKey.lower]); tag != "" {
		if d := s.tagged(tag); d != nil {
			return d
		}
	}
	if s.excluding {
		return s.decideExcluding(r, headers, true)
	}
	for _, l := range s.matchLanes {
		for i, rule := range l.headerRules {
			if matchHeaders(rule, headers) {
				return &l.matched[i]
			}
		}
	}
	if len(s.weighted) > 0 {
		return s.byBucket(s.bucketOfHeaders(headers))
	}
	return &s.base
}

// matchHeaders reports whether every condition of a rule holds on headers.
func matchHeaders(rule []*headerCondition, headers map[string][]string) bool {
	for _, c := range rule {
		v, ok := firstValue(headers[c.key.lower])
		if c.vm.op == opRegex || c.vm.op == opSegment {
			if !c.vm.matches(v, ok) {
				return false
			}
		} else if !c.vm.matchesPlain(v, ok) {
			return false
		}
	}
	return true
}

// bucketOfHeaders is bucket on a header map.
func (s *Snapshot[T]) bucketOfHeaders(headers map[string][]string) uint32 {
	if v, ok := s.stickyOfHeaders(headers); ok {
		return bucketOf(s.seed, v)
	}
	return randomBucket()
}

// stickyOfHeaders is stickyValue on a header map.
func (s *Snapshot[T]) stickyOfHeaders(headers map[string][]string) (string, bool) {
	if !s.stickyHeader.IsZero() {
		if v, _ := firstValue(headers[s.stickyHeader.lower]); v != "" {
			return v, true
		}
	}
	if s.stickyCookie != "" {
		if h, ok := firstValue(headers[cookieKey.lower]); ok {
			if v, ok := cookieValue(h, s.stickyCookie); ok && v != "" {
				return v, true
			}
		}
	}
	return "", false
}

func firstValue(vs []string) (string, bool) {
	if len(vs) == 0 {
		return "", false
	}
	return vs[0], true
}

// prepareHeaderRules sets headersOnly, and the lanes' headerRules, when every match rule has header
// conditions only.
func (s *Snapshot[T]) prepareHeaderRules() {
	for _, l := range s.lanes {
		for _, rule := range l.rules {
			for _, c := range rule {
				if _, ok := c.(*headerCondition); !ok {
					return
				}
			}
		}
	}
	s.headersOnly = true
	for _, l := range s.lanes {
		for _, rule := range l.rules {
			hs := make([]*headerCondition, len(rule))
			for i, c := range rule {
				hs[i] = c.(*headerCondition)
			}
			l.headerRules = append(l.headerRules, hs)
		}
	}
}
