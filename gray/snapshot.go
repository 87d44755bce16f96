package gray

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// DefaultTagKey is the header that carries a propagated lane tag. Kratos' metadata middleware copies
// keys with the x-md-global- prefix from hop to hop; the gateway sets it as a plain header.
const DefaultTagKey = "x-md-global-gray-lane"

// Options configure a Snapshot's decision. Both enforcers must be given the same options to decide
// the same way. The zero Options uses DefaultTagKey and no sticky key.
type Options struct {
	// TagKey is the header that carries a propagated lane tag. Default: DefaultTagKey.
	TagKey string `json:"tag_key,omitempty" yaml:"tag_key,omitempty"`
	// StickyHeader names a header whose value keeps one user in one lane, for example a user ID.
	StickyHeader string `json:"sticky_header,omitempty" yaml:"sticky_header,omitempty"`
	// StickyCookie names a cookie used the same way when the sticky header is absent.
	StickyCookie string `json:"sticky_cookie,omitempty" yaml:"sticky_cookie,omitempty"`
	// Fallback says where the traffic of the base lane goes when the base lane has no registered
	// instance. Default: FallbackWeighted.
	Fallback Fallback `json:"fallback,omitempty" yaml:"fallback,omitempty"`
}

// Fallback is a policy for the traffic of a base lane that has no registered instance: the
// requests no tag, rule or weight sends elsewhere. Lanes whose instances are registered but not yet
// reachable are not empty (see Instance.Pending): their requests wait, whatever the policy.
type Fallback string

const (
	// FallbackWeighted, the default, sends it to the lanes that take production traffic already
	// (a weight above 0), then to draining instances of such lanes or of the base, and never to a
	// lane that takes only matched or tagged traffic: a canary at weight 0 stays test-only when
	// stable is gone. With nothing left the decision has no instances and the request fails.
	FallbackWeighted Fallback = "weighted"
	// FallbackNone fails the request: the base is the only place for production traffic.
	FallbackNone Fallback = "none"
	// FallbackAny sends it to every active instance with valid meta, test-only lanes included,
	// then to draining ones: availability before isolation.
	FallbackAny Fallback = "any"
)

// Fallbacks lists the policies, the default first.
var Fallbacks = []Fallback{FallbackWeighted, FallbackNone, FallbackAny}

// Valid reports whether f is a known policy or empty (the default).
func (f Fallback) Valid() bool { return f == "" || slices.Contains(Fallbacks, f) }

// OrDefault returns f, or FallbackWeighted when f is empty.
func (f Fallback) OrDefault() Fallback { return cmp.Or(f, FallbackWeighted) }

// Override returns o with every field that is set in with replacing o's. A service keeps its options
// in Consul; an enforcer's own configuration overrides them field by field.
func (o Options) Override(with Options) Options {
	if with.TagKey != "" {
		o.TagKey = with.TagKey
	}
	if with.StickyHeader != "" {
		o.StickyHeader = with.StickyHeader
	}
	if with.StickyCookie != "" {
		o.StickyCookie = with.StickyCookie
	}
	if with.Fallback != "" {
		o.Fallback = with.Fallback
	}
	return o
}

// Validate reports options that no request could satisfy: header and cookie names must be tokens.
func (o Options) Validate() error {
	for _, f := range []struct{ name, value string }{
		{"tag_key", o.TagKey}, {"sticky_header", o.StickyHeader}, {"sticky_cookie", o.StickyCookie},
	} {
		if f.value != "" && !validHeaderName(f.value) {
			return fmt.Errorf("gray: option %s: %q is not a valid header or cookie name", f.name, f.value)
		}
	}
	if tag := cmp.Or(o.TagKey, DefaultTagKey); o.StickyHeader != "" && strings.EqualFold(o.StickyHeader, tag) {
		return fmt.Errorf("gray: option sticky_header: %q is the lane tag's header: a user key there would be read as a lane name", o.StickyHeader)
	}
	if !o.Fallback.Valid() {
		return fmt.Errorf("gray: option fallback: %q is not a policy (%s)", o.Fallback, fallbackNames())
	}
	return nil
}

func fallbackNames() string {
	names := make([]string, len(Fallbacks))
	for i, f := range Fallbacks {
		names[i] = string(f)
	}
	return strings.Join(names, ", ")
}

// Instance is one instance of a service as an enforcer sees it: its ID, its Consul meta and the
// enforcer's own handle for it (a Kratos node, an upstream address), which decisions hand back.
type Instance[T any] struct {
	ID    string
	Meta  map[string]string
	Value T
	// Pending marks an instance that is registered and passing but that the enforcer cannot send
	// to yet: its connection is not ready (a client that has just started, a reconnect). It counts
	// for its lane, so the lane is not taken for empty and its traffic does not fall back
	// elsewhere, but it is never among a decision's instances: a lane whose instances are all
	// pending yields a decision with Wait set.
	Pending bool
}

// Snapshot is the prepared, immutable routing state of one service: its instances grouped into lanes
// with their compiled policies. Build a new one whenever the instance set changes and publish it
// atomically; Decide may be called concurrently and never blocks.
type Snapshot[T any] struct {
	service      string
	tagKey       HeaderKey
	stickyHeader HeaderKey
	stickyCookie string
	seed         uint64

	fallback Fallback

	lanes      []*lane[T] // every lane, in lane order
	matchLanes []*lane[T] // lanes with match rules, in lane order
	weighted   []weightRange[T]
	base       Decision[T] // the decision when nothing else applies

	baseLanes []*lane[T]
	problems  []error

	segments     *Segments
	segmentNames []string
	// excluding: some lane has an exclusion to check (or is closed), so Decide takes the path that
	// reads the request's user first (decideExcluding).
	excluding bool
	// fallbackExcluders: the base is a weighted fallback over lanes of which these exclude
	// segments. A request whose user one of them excludes falls back to fallbackSafe, which leaves
	// them out.
	fallbackExcluders []*lane[T]
	fallbackSafe      Decision[T]

	// headersOnly: every match rule has header conditions only, so that DecideWithHeaders decides
	// from the header map alone (headers.go).
	headersOnly bool
}

type lane[T any] struct {
	name      string
	rank      int
	instances []T      // the instances a request can be sent to now
	ids       []string // every registered instance, pending ones included
	weight    Weight   // after conflicts and scaling
	match     []Rule   // after conflicts
	rules     ruleSet
	gray      bool // some instance is a canary or asks for a weight or match rules
	// headerRules are rules as their header conditions, when the snapshot is headersOnly.
	headerRules [][]*headerCondition

	// excludeNames is the union of its instances' exclude_segment, sorted. The exclusion applies
	// (exclude holds the segments, in the same order) unless the lane is a base lane; closed is set
	// when it applies but cannot be checked: the lane then takes tagged requests only.
	excludeNames []string
	exclude      []*Segment
	closed       bool

	// The decisions that send a request to this lane, prepared once.
	tagged  Decision[T]   // by its tag
	matched []Decision[T] // by each of its match rules
	// The decisions that keep a request out of this lane: to the base, by each of its exclusions
	// (excluded[i] for exclude[i]), and by its being closed (shut).
	excluded []Decision[T]
	shut     Decision[T]
}

// excludes reports whether the lane has an exclusion to check.
func (l *lane[T]) excludes() bool { return l.closed || len(l.exclude) > 0 }

// keptOut returns the decision that keeps a request whose user is user (known: the request has a
// sticky key) out of the lane, or nil when the lane may take it. A request without a user is in no
// segment; a closed lane keeps every request out.
func (l *lane[T]) keptOut(user string, known bool) *Decision[T] {
	if l.closed {
		return &l.shut
	}
	if known {
		for i, seg := range l.exclude {
			if seg.Contains(user) {
				return &l.excluded[i]
			}
		}
	}
	return nil
}

type weightRange[T any] struct {
	upper    uint32 // the lane takes buckets below upper (and at or above the previous range's upper)
	lane     *lane[T]
	decision Decision[T]
}

// Lane ranks, in lane order.
const (
	rankCanary = iota
	rankGray
	rankStable
)

// decoded is one instance's decoded meta, shared by instances with identical gray keys.
type decoded struct {
	meta  Meta
	rules ruleSet
	match string // canonical JSON of meta.Match
	err   error
}

// SnapshotOption configures what a snapshot is built with, beside Options.
type SnapshotOption func(*snapshotConfig)

type snapshotConfig struct {
	segments *Segments
}

// WithSegments gives a snapshot the segments its match rules (in_segment) and lane exclusions
// (exclude_segment) name. The snapshot keeps the *Segment values it uses, not the collection's later
// versions: build a new snapshot when a segment changes. A nil collection, like building without
// this option, means the segments are not known yet: every segment the meta names is reported
// missing (SegmentMissingError.NotLoaded), its conditions match nothing and lanes excluding it take
// tagged requests only.
func WithSegments(segs *Segments) SnapshotOption {
	return func(c *snapshotConfig) { c.segments = segs }
}

// NewSnapshot decodes the instances' meta and prepares the decision. Instances whose meta does not
// decode are reported in Problems and left out of every lane. instances is not retained or modified.
// It costs O(instances); identical meta is decoded once. Segments are looked up once per distinct
// meta, in O(1) each.
func NewSnapshot[T any](service string, instances []Instance[T], opts Options, options ...SnapshotOption) *Snapshot[T] {
	var cfg snapshotConfig
	for _, o := range options {
		o(&cfg)
	}
	if opts.TagKey == "" {
		opts.TagKey = DefaultTagKey
	}
	s := &Snapshot[T]{
		service:      service,
		tagKey:       NewHeaderKey(opts.TagKey),
		stickyCookie: opts.StickyCookie,
		seed:         bucketSeed(service),
		fallback:     opts.Fallback.OrDefault(),
		segments:     cfg.segments,
	}
	if opts.StickyHeader != "" {
		s.stickyHeader = NewHeaderKey(opts.StickyHeader)
	}

	cache := make(map[string]*decoded)
	byName := make(map[string]*lane[T])
	laneInstances := make(map[*lane[T]][]*decoded)
	var draining, drainingProduction []T
	var drainingSafe []T // draining production instances that exclude no segment
	for _, inst := range instances {
		d := decodeCached(cache, inst.Meta, s.segments)
		if d.err != nil {
			s.problems = append(s.problems, withInstance(d.err, inst.ID))
			continue
		}
		if d.meta.Drain {
			if !inst.Pending {
				draining = append(draining, inst.Value)
				if d.takesProduction() {
					drainingProduction = append(drainingProduction, inst.Value)
					if len(d.meta.ExcludeSegments) == 0 {
						drainingSafe = append(drainingSafe, inst.Value)
					}
				}
			}
			continue
		}
		name := d.meta.LaneName()
		l := byName[name]
		if l == nil {
			l = &lane[T]{name: name, rank: rankGray}
			byName[name] = l
		}
		if !inst.Pending {
			l.instances = append(l.instances, inst.Value)
		}
		l.ids = append(l.ids, inst.ID)
		laneInstances[l] = append(laneInstances[l], d)
	}

	for _, l := range byName {
		s.resolvePolicy(l, laneInstances[l])
		s.lanes = append(s.lanes, l)
	}
	slices.SortFunc(s.lanes, func(a, b *lane[T]) int {
		return cmp.Or(cmp.Compare(a.rank, b.rank), strings.Compare(a.name, b.name))
	})

	// The base: the stable lane, else (pure blue/green) the lanes that ask for nothing. When blue is
	// one of several such lanes, blue alone is the base: a colour deployed beside a live blue takes
	// no production traffic before it is given a weight or promoted.
	if stable := byName[StableLane]; stable != nil {
		s.baseLanes = []*lane[T]{stable}
	} else {
		var names []string
		for _, l := range s.lanes {
			if !l.gray {
				s.baseLanes = append(s.baseLanes, l)
				names = append(names, l.name)
			}
		}
		if len(names) > 1 {
			ambiguous := &AmbiguousBaseError{Service: service, Lanes: names}
			if blue := byName[string(Blue)]; blue != nil && !blue.gray {
				s.baseLanes, ambiguous.Base = []*lane[T]{blue}, blue.name
			}
			s.problems = append(s.problems, ambiguous)
		}
	}

	for _, l := range s.lanes {
		s.reportMissingRuleSegments(l)
		s.resolveExclusion(l, laneInstances[l], opts)
	}
	for _, d := range cache {
		if d.err == nil {
			s.segmentNames = append(s.segmentNames, d.meta.SegmentNames()...)
		}
	}
	slices.Sort(s.segmentNames)
	s.segmentNames = slices.Compact(s.segmentNames)

	s.prepareHeaderRules()
	var total int
	for _, l := range s.lanes {
		l.tagged = l.decision(ReasonTag, -1)
		for i := range l.rules {
			d := l.decision(ReasonMatch, i)
			d.Segment = ruleSegments(&l.match[i])
			l.matched = append(l.matched, d)
		}
		if len(l.rules) > 0 {
			s.matchLanes = append(s.matchLanes, l)
		}
		if l.weight > 0 && l.name != StableLane {
			total += int(l.weight)
		}
	}
	if total > int(MaxWeight) {
		s.problems = append(s.problems, &WeightOverflowError{Service: service, Total: total})
	}
	var upper uint32
	for _, l := range s.lanes {
		if l.weight == 0 || l.name == StableLane {
			continue
		}
		if total > int(MaxWeight) {
			l.weight = Weight(int(l.weight) * int(MaxWeight) / total)
		}
		upper += uint32(l.weight)
		s.weighted = append(s.weighted, weightRange[T]{upper: upper, lane: l, decision: l.decision(ReasonWeight, -1)})
	}

	s.base = s.baseDecision(draining, drainingProduction, drainingSafe)
	s.prepareExclusions()
	return s
}

// decision returns the decision that sends a request to the lane: to its instances that can take it
// now, or, when all of them are pending, to wait for one.
func (l *lane[T]) decision(reason Reason, rule int) Decision[T] {
	return Decision[T]{Lane: l.name, Reason: reason, Instances: l.instances, Rule: rule, Wait: len(l.instances) == 0}
}

// takesProduction reports whether an instance's meta lets it take unmatched production traffic: it
// asks for a weight, or it asks for nothing (a stable or base-colour instance). A canary or a lane
// with match rules and no weight takes test traffic only.
func (d *decoded) takesProduction() bool {
	return d.meta.Weight > 0 || !(d.meta.Canary || d.match != "")
}

// resolvePolicy sets a lane's rank and policy from its instances: the smallest weight, and the match
// rules only where every instance carries the same ones.
func (s *Snapshot[T]) resolvePolicy(l *lane[T], ds []*decoded) {
	first := ds[0]
	l.weight, l.match, l.rules = first.meta.Weight, first.meta.Match, first.rules
	weightsDiffer, matchDiffers := false, false
	for _, d := range ds {
		if d.meta.Canary {
			l.rank = rankCanary
		}
		if d.meta.Canary || d.meta.Weight > 0 || d.match != "" {
			l.gray = true
		}
		if d.meta.Weight != first.meta.Weight {
			weightsDiffer = true
			l.weight = min(l.weight, d.meta.Weight)
		}
		if d.match != first.match {
			matchDiffers = true
		}
	}
	if l.name == StableLane {
		l.rank = rankStable
	}
	if weightsDiffer {
		s.problems = append(s.problems, &LaneConflictError{Service: s.service, Lane: l.name, Key: KeyWeight,
			Instances: slices.Clone(l.ids), Resolution: "the lane takes the smallest, " + l.weight.String() + "%"})
	}
	if matchDiffers {
		l.match, l.rules = nil, nil
		s.problems = append(s.problems, &LaneConflictError{Service: s.service, Lane: l.name, Key: KeyMatch,
			Instances: slices.Clone(l.ids), Resolution: "the lane takes no matched traffic"})
	}
}

// baseDecision prepares the decision for requests that no tag, rule or weight sends elsewhere. A base
// lane with registered instances is the answer even when none of them can take the request yet (the
// request waits). Only a base without registered instances falls back, as the snapshot's Fallback
// policy says: weighted lanes then draining production instances, nothing, or every active
// instance then every draining one. Instances whose meta did not decode are never chosen: with
// nothing else, the decision has no instances.
//
// A closed lane takes no weighted traffic, so it is no weighted fallback either. When a weighted
// fallback lane excludes segments, fallbackSafe is prepared too: the same fallback without the lanes
// (and draining instances) that exclude any, for the requests whose users they exclude.
func (s *Snapshot[T]) baseDecision(draining, drainingProduction, drainingSafe []T) Decision[T] {
	var names []string
	var base []T
	for _, l := range s.baseLanes {
		names = append(names, l.name)
		base = append(base, l.instances...)
	}
	if len(s.baseLanes) > 0 {
		return Decision[T]{Lane: strings.Join(names, "+"), Reason: ReasonBase, Instances: base, Rule: -1, Wait: len(base) == 0}
	}
	var candidates []*lane[T]
	switch s.fallback {
	case FallbackNone:
		return Decision[T]{Reason: ReasonFallback, Rule: -1}
	case FallbackAny:
		candidates = s.lanes
	default: // FallbackWeighted
		var safe []*lane[T]
		for _, l := range s.lanes {
			if l.weight > 0 && !l.closed {
				candidates = append(candidates, l)
				if l.excludes() {
					s.fallbackExcluders = append(s.fallbackExcluders, l)
				} else {
					safe = append(safe, l)
				}
			}
		}
		if len(s.fallbackExcluders) > 0 {
			s.fallbackSafe = fallbackOver(safe, drainingSafe)
		}
		draining = drainingProduction
	}
	return fallbackOver(candidates, draining)
}

// fallbackOver is the fallback decision over candidate lanes, then draining instances.
func fallbackOver[T any](candidates []*lane[T], draining []T) Decision[T] {
	fallback := Decision[T]{Reason: ReasonFallback, Rule: -1}
	for _, l := range candidates {
		fallback.Instances = append(fallback.Instances, l.instances...)
	}
	switch {
	case len(fallback.Instances) > 0:
	case len(candidates) > 0: // registered, none reachable yet
		fallback.Wait = true
	default:
		fallback.Instances = draining
	}
	return fallback
}

// decodeCached decodes meta once per distinct gray keys, and binds the segment conditions of its
// rules to segs (nil where segs has no segment of their name).
func decodeCached(cache map[string]*decoded, meta map[string]string, segs *Segments) *decoded {
	key := grayFingerprint(meta)
	if d, ok := cache[key]; ok {
		return d
	}
	d := &decoded{}
	d.meta, d.rules, d.err = parseMeta(meta)
	if d.err == nil && len(d.meta.Match) > 0 {
		d.match = RulesJSON(d.meta.Match)
		for _, rule := range d.rules {
			for _, c := range rule {
				if vm := segmentMatcher(c); vm != nil {
					vm.seg = segs.Lookup(vm.s)
				}
			}
		}
	}
	cache[key] = d
	return d
}

// grayFingerprint is a string that is equal for two meta maps exactly when their gray keys are.
func grayFingerprint(meta map[string]string) string {
	keys := make([]string, 0, 4)
	for k := range meta {
		if IsMetaKey(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(meta[k])
		b.WriteByte(0)
	}
	return b.String()
}

// Service returns the service the snapshot was built for.
func (s *Snapshot[T]) Service() string { return s.service }

// Problems returns what went wrong while building the snapshot: *MetaError for instances left out,
// *LaneConflictError and *WeightOverflowError for policies that were adjusted, *SegmentMissingError
// for segments named but not given, and *ExclusionError for exclusions that cannot be applied. The
// slice is shared: do not modify it.
func (s *Snapshot[T]) Problems() []error { return s.problems }

// SegmentNames returns the names of the segments that the meta of the snapshot's instances names,
// in match rules and exclusions, sorted and each once: the segments a watcher must load and give
// to the next snapshot (WithSegments). Instances whose meta does not decode are left out; draining
// instances are not. The slice is shared: do not modify it.
func (s *Snapshot[T]) SegmentNames() []string { return s.segmentNames }

// Segments returns the segments the snapshot was built with; nil when it was given none.
func (s *Snapshot[T]) Segments() *Segments { return s.segments }

// LaneInfo describes one lane of a snapshot, for status displays and tools.
type LaneInfo struct {
	Name string
	// Base is set on the lanes that take the traffic no tag, rule or weight sends elsewhere.
	Base bool
	// Weight is the lane's weight after conflicts and scaling.
	Weight Weight
	// Share is the lane's share of unmatched, untagged traffic: its weight, or for a base lane what
	// the weighted lanes leave, split by instance count when several lanes form the base.
	Share Weight
	// Match holds the lane's match rules after conflicts.
	Match []Rule
	// Exclude names the segments whose users the lane does not take by rule or weight: the union of
	// its instances' exclude_segment, sorted. On a base lane the exclusion is ignored (and reported).
	Exclude []string
	// Closed is set when the lane's exclusion cannot be checked (the options name no sticky key, or
	// a segment is missing): the lane takes tagged requests only, and its weight range goes to the
	// base (its Share is 0).
	Closed bool
	// Instances holds the IDs of the lane's active instances.
	Instances []string
}

// Lanes describes the lanes in decision order, base lanes last. It allocates; it is meant for tools,
// not for the request path.
func (s *Snapshot[T]) Lanes() []LaneInfo {
	var weighted, lower uint32
	for _, w := range s.weighted {
		if !w.lane.closed {
			weighted += w.upper - lower
		}
		lower = w.upper
	}
	rest := uint32(MaxWeight) - weighted
	baseCount := 0
	for _, l := range s.baseLanes {
		baseCount += len(l.ids) // registered instances: a lane's pending ones count for its share
	}
	var out []LaneInfo
	add := func(l *lane[T], base bool) {
		info := LaneInfo{Name: l.name, Base: base, Weight: l.weight, Match: l.match, Exclude: slices.Clone(l.excludeNames),
			Closed: l.closed, Instances: slices.Clone(l.ids)}
		switch {
		case base:
			info.Share = Weight(rest * uint32(len(l.ids)) / uint32(baseCount))
		case l.name != StableLane && !l.closed:
			info.Share = l.weight
		}
		out = append(out, info)
	}
	for _, l := range s.lanes {
		if !slices.Contains(s.baseLanes, l) {
			add(l, false)
		}
	}
	for _, l := range s.baseLanes {
		add(l, true)
	}
	return out
}
