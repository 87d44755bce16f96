// Package explain answers "where would this request go?" for one service, through the same
// decision the data planes make: the service's recorded options, overridden as asked, a snapshot of
// its passing instances, and gray's Decide. The graylane command's explain and the portal's explain
// form both call it, so they cannot disagree.
package explain

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// Input is the request to explain.
type Input struct {
	// Headers maps header names (any case) to values.
	Headers map[string]string
	// Cookie is the whole Cookie header ("a=1; b=2"), if any.
	Cookie string
	Path   string // default "/"
	Query  string // raw query, without '?'
	Method string // default GET
	IP     string // client address, if any
	// Lane is a propagated lane tag, sent in the tag key header.
	Lane string
	// Key is a sticky key (a user ID): it picks the bucket whichever header or cookie holds it.
	Key string
	// Override replaces the service's recorded options field by field.
	Override gray.Options
}

// InputError is a mistake in the request to explain (an IP address that does not parse, a header
// line without a colon): the caller's to fix, Consul was not asked.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

// Target is an instance the request would be balanced over.
type Target struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Port    int    `json:"port"`
}

// Result is the decision and why.
type Result struct {
	Service string `json:"service"`
	// Lane is the chosen lane; empty on fallback or when no instance can serve.
	Lane   string `json:"lane"`
	Reason string `json:"reason"`
	// Rule is the 1-based number of the matched rule, for reason "match".
	Rule *int `json:"rule,omitempty"`
	// Segment is the segment that decided: the one a matching rule found the request's value in
	// (reason "match"), or the one that kept the request's user out of a lane (reason "excluded").
	Segment string `json:"segment,omitempty"`
	// ExcludedFrom is the lane that would have taken the request but excludes its user's segment.
	ExcludedFrom string `json:"excluded_from,omitempty"`
	// Bucket is the sticky key's bucket in [0, 10000), when Input.Key was given.
	Bucket *int `json:"bucket,omitempty"`
	// Random is set when the decision drew a random bucket: the service has a weighted lane and the
	// request has no sticky key, so the same request may land in another lane next time.
	Random    bool     `json:"random,omitempty"`
	Propagate bool     `json:"propagate"`
	Instances []Target `json:"instances"`
	// Problems are the service's conflicts and invalid meta, as status shows them.
	Problems []string `json:"problems,omitempty"`
	// Options are the decision options used (TagKey always set).
	Options gray.Options `json:"-"`
}

// ParseHeaders turns "Name: value" or "name=value" lines into a header map; blank lines are
// skipped. A line is split at its first ':' or '=', whichever comes first: a header name has
// neither, a value may have both ("cookie: a=b").
func ParseHeaders(lines []string) (map[string]string, error) {
	out := map[string]string{}
	for _, h := range lines {
		if strings.TrimSpace(h) == "" {
			continue
		}
		i := strings.IndexAny(h, ":=")
		if i < 0 || strings.TrimSpace(h[:i]) == "" {
			return nil, &InputError{fmt.Sprintf("header %q: write 'Name: value' or name=value", h)}
		}
		out[strings.TrimSpace(h[:i])] = strings.TrimSpace(h[i+1:])
	}
	return out, nil
}

// Explain decides in for the service as the data planes would now. It reads the service's options
// and status from Consul through r. An *InputError reports a bad Input before Consul is asked.
func Explain(ctx context.Context, r *registrar.Registrar, service string, in Input) (*Result, error) {
	method := strings.ToUpper(in.Method)
	if method == "" {
		method = "GET"
	}
	path := in.Path
	if path == "" {
		path = "/"
	}
	req := &gray.StaticRequest{Headers: map[string]string{}, URLPath: path, URLQuery: in.Query, HTTPMethod: method}
	for k, v := range in.Headers {
		req.Headers[strings.ToLower(strings.TrimSpace(k))] = v
	}
	if in.Cookie != "" {
		req.Headers["cookie"] = in.Cookie
	}
	if in.IP != "" {
		var err error
		if req.Client, err = netip.ParseAddr(strings.TrimSpace(in.IP)); err != nil {
			return nil, &InputError{fmt.Sprintf("IP %q is not an IP address", in.IP)}
		}
	}
	// Decide with the options the data planes use: the service's, overridden as asked.
	options, err := r.ServiceOptions(ctx, service)
	if err != nil {
		return nil, err
	}
	options = options.Override(in.Override)
	if options.TagKey == "" {
		options.TagKey = gray.DefaultTagKey
	}
	if in.Lane != "" {
		req.Headers[strings.ToLower(options.TagKey)] = in.Lane
	}
	decideWith := options
	if in.Key != "" {
		// The bucket depends on the service and the key only, whichever header or cookie holds it.
		decideWith.StickyHeader = "x-graylane-explain-key"
		req.Headers[decideWith.StickyHeader] = in.Key
	}
	st, err := r.Status(ctx, service, decideWith)
	if err != nil {
		return nil, err
	}
	d := st.Snapshot.Decide(req)
	byID := map[string]registrar.Instance{}
	for _, inst := range st.Instances {
		byID[inst.ID] = inst
	}
	out := &Result{Service: service, Lane: d.Lane, Reason: d.Reason.String(), Propagate: d.Propagate(),
		Instances: []Target{}, Options: options, Segment: d.Segment, ExcludedFrom: d.ExcludedFrom}
	if d.Rule >= 0 {
		rule := d.Rule + 1
		out.Rule = &rule
	}
	if in.Key != "" {
		b := gray.Bucket(service, in.Key)
		out.Bucket = &b
	} else if d.Reason == gray.ReasonWeight || d.Reason == gray.ReasonBase || d.Reason == gray.ReasonExcluded {
		out.Random = !hasStickyKey(req, options) && hasWeightedLane(st.Snapshot.Lanes())
	}
	for _, id := range d.Instances {
		inst := byID[id]
		out.Instances = append(out.Instances, Target{id, inst.Address, inst.Port})
	}
	for _, p := range st.Problems {
		out.Problems = append(out.Problems, p.Error())
	}
	return out, nil
}

// hasStickyKey reports whether the request carries the sticky header or cookie options name.
func hasStickyKey(req *gray.StaticRequest, options gray.Options) bool {
	if options.StickyHeader != "" && req.Headers[strings.ToLower(options.StickyHeader)] != "" {
		return true
	}
	if options.StickyCookie != "" {
		for _, c := range strings.Split(req.Headers["cookie"], ";") {
			if name, value, _ := strings.Cut(strings.TrimSpace(c), "="); name == options.StickyCookie && value != "" {
				return true
			}
		}
	}
	return false
}

// hasWeightedLane reports whether a lane other than the base takes a share of unmatched traffic.
func hasWeightedLane(lanes []gray.LaneInfo) bool {
	for _, l := range lanes {
		if !l.Base && l.Share > 0 {
			return true
		}
	}
	return false
}
