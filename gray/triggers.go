package gray

import (
	"slices"
)

// Triggers says which requests a snapshot can decide for anything but its base decision (Base):
// a request that carries none of the headers and cookies listed, and the snapshot is not Always,
// gets Base from Decide, whatever else it holds. A gateway can check that much itself and ask for a
// decision only when a request may need one; everything else goes where Base goes. The lists may
// name more than needed, never less.
type Triggers struct {
	// Always is set when any request may leave the base: a lane takes a weighted share (a request
	// without a sticky key gets a random bucket), a rule holds no condition that needs a header or
	// cookie to be there (it reads the path, the query, the method or the client address, or asks
	// for a header to be absent), or the base is a weighted fallback that keeps excluded users out.
	Always bool
	// Headers are lower-case header names, sorted: the lane tag header, and for each match rule one
	// header it needs (any value, even empty).
	Headers []string
	// Cookies are the names of cookies, sorted, of which a rule with no header condition needs one.
	// A rule on the whole Cookie header is listed under Headers as "cookie".
	Cookies []string
}

// Triggers returns what a request must carry for the snapshot to decide it anything but Base.
// It reads the same rules, weights and tag header as Decide.
func (s *Snapshot[T]) Triggers() Triggers {
	if len(s.weighted) > 0 || len(s.fallbackExcluders) > 0 {
		return Triggers{Always: true}
	}
	t := Triggers{Headers: []string{s.tagKey.Lower()}}
	for _, l := range s.matchLanes {
		for _, rule := range l.rules {
			header, cookie, ok := ruleTrigger(rule)
			switch {
			case !ok:
				return Triggers{Always: true}
			case header != "":
				t.Headers = append(t.Headers, header)
			default:
				t.Cookies = append(t.Cookies, cookie)
			}
		}
	}
	slices.Sort(t.Headers)
	slices.Sort(t.Cookies)
	t.Headers, t.Cookies = slices.Compact(t.Headers), slices.Compact(t.Cookies)
	return t
}

// ruleTrigger returns a header (lower case) or a cookie that a request must carry for the rule to
// match; false when the rule needs neither. A rule matches only when all its conditions do, so one
// such condition is enough; a header is preferred, being the cheaper check for a gateway.
func ruleTrigger(rule compiledRule) (header, cookie string, ok bool) {
	for _, c := range rule {
		if h, ok := c.(*headerCondition); ok && h.vm.op != opAbsent {
			return h.key.Lower(), "", true
		}
	}
	for _, c := range rule {
		if ck, ok := c.(*cookieCondition); ok && ck.vm.op != opAbsent {
			if ck.name == "" {
				return cookieKey.Lower(), "", true
			}
			return "", ck.name, true
		}
	}
	return "", "", false
}
