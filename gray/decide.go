package gray

import "math/rand/v2"

// Reason says why a decision chose its lane.
type Reason uint8

const (
	// ReasonBase: nothing sent the request elsewhere; it goes to the base lane.
	ReasonBase Reason = iota
	// ReasonTag: the request carried a lane tag naming a lane of this service.
	ReasonTag
	// ReasonMatch: the request satisfied one of the lane's match rules.
	ReasonMatch
	// ReasonWeight: the request's bucket fell into the lane's weight range.
	ReasonWeight
	// ReasonFallback: the service has no registered base instance; the request goes where the
	// service's Fallback policy says (see the package documentation), or nowhere.
	ReasonFallback
	// ReasonExcluded: a lane's rule or weight range would have taken the request, but the lane
	// excludes a segment holding the request's user (Decision.Segment), or its exclusion cannot be
	// checked (Segment empty; see Snapshot.Problems); the request goes to the base lane instead.
	// Decision.ExcludedFrom names the lane. (When the base lane has no registered instance, the
	// decision is ReasonFallback with ExcludedFrom set.)
	ReasonExcluded
)

var reasonNames = [...]string{"base", "tag", "match", "weight", "fallback", "excluded"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Decision is the outcome of Decide.
type Decision[T any] struct {
	// Lane is the chosen lane; several base lanes are joined with '+'; empty on fallback.
	Lane   string
	Reason Reason
	// Instances are the instances to balance over. The slice belongs to the snapshot: do not modify it.
	Instances []T
	// Rule is the index of the matched rule for ReasonMatch, else -1.
	Rule int
	// Segment names the segment that decided: for ReasonMatch, the segment of the matched rule's
	// in_segment condition (several joined with ','; empty when the rule has none); for
	// ReasonExcluded, the excluded segment that holds the request's user (empty when the lane's
	// exclusion cannot be checked and the lane takes no matched or weighted traffic).
	Segment string
	// ExcludedFrom names the lane that kept the request out, for ReasonExcluded (or ReasonFallback
	// after an exclusion); else empty.
	ExcludedFrom string
	// Wait is set when the chosen lane has registered instances but none that can take the request
	// now (Instance.Pending): Instances is empty, and the enforcer holds the request until one is
	// ready, within the request's deadline, rather than sending it to another lane.
	Wait bool
}

// Propagate reports whether the decision should travel to the next hop as a lane tag: it chose a
// gray lane by tag, match or weight. Base and fallback decisions are not propagated, so that the next
// service decides for itself.
func (d *Decision[T]) Propagate() bool {
	return d.Reason == ReasonTag || d.Reason == ReasonMatch || d.Reason == ReasonWeight
}

// TagKey returns the header that carries the lane tag for this snapshot.
func (s *Snapshot[T]) TagKey() HeaderKey { return s.tagKey }

// Decide chooses the lane for a request and the instances to balance over. It reads the immutable
// snapshot only: it is safe for concurrent use, does not allocate, and costs the same for any number
// of instances. The decision is one the snapshot prepared when it was built: read it, do not modify
// it.
func (s *Snapshot[T]) Decide(r Request) *Decision[T] {
	if tag, ok := r.Header(s.tagKey); ok && tag != "" {
		if d := s.tagged(tag); d != nil {
			return d
		}
	}
	if s.excluding {
		return s.decideExcluding(r, nil, false)
	}
	for _, l := range s.matchLanes {
		if i := l.rules.match(r); i >= 0 {
			return &l.matched[i]
		}
	}
	if len(s.weighted) > 0 {
		return s.byBucket(s.bucket(r))
	}
	return &s.base
}

// tagged returns the decision for a request tagged with tag, or nil when no lane has that name.
func (s *Snapshot[T]) tagged(tag string) *Decision[T] {
	for _, l := range s.lanes {
		if l.name == tag {
			return &l.tagged
		}
	}
	return nil
}

// byBucket returns the decision for a bucket: the weighted lane whose range holds it, else the base.
func (s *Snapshot[T]) byBucket(b uint32) *Decision[T] {
	for i := range s.weighted {
		if w := &s.weighted[i]; b < w.upper {
			return &w.decision
		}
	}
	return &s.base
}

// Base returns the decision for a request that no tag, rule or weight sends elsewhere: the base
// lanes, or the fallback when they are empty. Gateways use it to keep a route's default upstream
// equal to the base. Read it, do not modify it.
func (s *Snapshot[T]) Base() *Decision[T] { return &s.base }

// bucket returns the request's bucket in [0, 10000): from the sticky key when the request has one,
// else random.
func (s *Snapshot[T]) bucket(r Request) uint32 {
	if v, ok := s.stickyValue(r); ok {
		return bucketOf(s.seed, v)
	}
	return randomBucket()
}

// stickyValue returns the request's sticky key, its user: the sticky header's value, else the
// sticky cookie's; false when it has neither (or they are empty).
func (s *Snapshot[T]) stickyValue(r Request) (string, bool) {
	if !s.stickyHeader.IsZero() {
		if v, ok := r.Header(s.stickyHeader); ok && v != "" {
			return v, true
		}
	}
	return s.stickyCookieValue(r)
}

// randomBucket is the bucket of a request without a sticky key.
func randomBucket() uint32 { return uint32(rand.Uint64N(uint64(MaxWeight))) }

// stickyCookieValue returns the sticky cookie's value, the sticky key when the sticky header is
// absent.
func (s *Snapshot[T]) stickyCookieValue(r Request) (string, bool) {
	if s.stickyCookie != "" {
		if h, ok := r.Header(cookieKey); ok {
			if v, ok := cookieValue(h, s.stickyCookie); ok && v != "" {
				return v, true
			}
		}
	}
	return "", false
}
