package portal

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// serviceModel is what the page shows of one service, read from Consul once per change and shared
// by every open page. It is immutable once built.
type serviceModel struct {
	Name      string
	Err       string // the service could not be read
	Gray      bool   // the service has gray meta or recorded changes
	Options   string
	Lanes     []laneView
	Instances []instanceView
	Problems  []string
	Drift     []driftView
	History   []historyView // newest first
	HistErr   string
	Rollout   *Rollout
	Steered   bool // the page may steer the rollout (its source is a RolloutControl)
	Rates     []rateView
	Stale     bool
	Read      time.Time

	seq        uint64
	readFailed bool // Consul did not answer: the model holds no state
}

type laneView struct {
	Name      string
	Color     string // CSS class: the lane's colour everywhere on the page
	Base      bool
	Weight    string
	Share     string
	SharePct  float64
	Rules     []string // readable match rules
	Segments  []string // the segments its match rules name (in_segment), sorted
	Exclude   []string // the segments whose users it does not take (exclude_segment), sorted
	Closed    bool     // its exclusion cannot be checked: it takes tagged requests only
	Instances []string
	Gray      bool // not the stable lane: weight, promote and rollback apply
	Next      *nextStep
	Driven    bool // a running rollout that the page steers drives this lane
}

// nextStep is the usual next move of a release for a lane, offered as one button that leads to the
// same confirmation as any other change.
type nextStep struct {
	Op     string // weight or promote
	Weight string
	Label  string
}

// releaseLadder is the weights a canary usually climbs before it is promoted: the README's release.
var releaseLadder = []gray.Weight{500, 2500, 5000}

// nextFor suggests a lane's next step: the next weight on the ladder, then promotion; for the colour
// that is not live in a blue/green service, the switch (promotion). No suggestion for base lanes or
// while a rollout drives the lane.
func nextFor(l gray.LaneInfo, blueGreen bool) *nextStep {
	if l.Name == gray.StableLane || l.Base {
		return nil
	}
	if blueGreen {
		return &nextStep{Op: "promote", Label: "Switch: promote " + l.Name}
	}
	for _, w := range releaseLadder {
		if l.Weight < w {
			return &nextStep{Op: "weight", Weight: w.String(), Label: "Next: weight " + w.String() + " %"}
		}
	}
	return &nextStep{Op: "promote", Label: "Next: promote " + l.Name}
}

type instanceView struct {
	ID       string
	Address  string
	Health   string
	Lane     string
	Color    string
	Meta     string
	Err      string
	Draining bool
	Drift    bool
}

type driftView struct{ Instance, Recorded, Actual string }

type historyView struct {
	Time    time.Time
	Who     string
	Action  string
	Outcome string
	OutKind string // ok, pending, error
	Lane    string // the lane the action names, for its colour
	Color   string
	Changes []changeView
	// ID names the entry in its undo form: its time exactly as the history records it (RFC 3339
	// with nanoseconds).
	ID string
	// NoUndo says why the page offers no undo of the entry (it changed no instance, they are all
	// gone, a rollout drives one of its lanes); empty when it does.
	NoUndo string

	instances []string // the instances the entry changed
	lanes     []string // the lanes those instances were in before it
}

type changeView struct{ Instance, Before, After string }

type rateView struct {
	Lane, Color string
	RPS, Errors string
	P99         string
	Bad         bool
}

// laneColor gives each lane its colour class: stable, canary, blue and green are fixed; other lane
// names get one of a few further colours by hash, the same on every page and every update.
func laneColor(lane string) string {
	switch lane {
	case gray.StableLane, gray.CanaryLane, string(gray.Blue), string(gray.Green):
		return "lane-" + lane
	case "":
		return "lane-none"
	}
	h := fnv.New32a()
	h.Write([]byte(lane))
	return fmt.Sprintf("lane-x%d", h.Sum32()%4)
}

// buildModel reads a service's status and history.
func (s *Server) buildModel(ctx context.Context, name string, stale bool) *serviceModel {
	m := &serviceModel{Name: name, Stale: stale, Read: time.Now()}
	var registered map[string]string // instance ID -> its lane now; nil when unknown
	st, err := s.reader.Status(ctx, name, gray.Options{})
	if err != nil {
		s.noteRefusal(err)
		m.Err = err.Error()
		if errors.Is(err, registrar.ErrNotFound) {
			m.Err = "no instances are registered"
			registered = map[string]string{}
		} else {
			m.readFailed = true
		}
	} else {
		m.fill(st)
		registered = map[string]string{}
		for _, inst := range st.Instances {
			registered[inst.ID] = inst.Lane()
		}
	}
	hist, err := s.reader.History(ctx, name)
	s.noteRefusal(err)
	var partial *registrar.HistoryError
	switch {
	case errors.As(err, &partial):
		m.HistErr = err.Error() // the readable entries are shown
	case err != nil:
		m.HistErr, m.readFailed = err.Error(), true
	}
	if len(hist) > 0 {
		m.Gray = true
	}
	for i := len(hist) - 1; i >= 0 && len(m.History) < historyLimit; i-- {
		m.History = append(m.History, newHistoryView(hist[i]))
	}
	if s.cfg.Rollouts != nil {
		if ro, err := s.cfg.Rollouts.Rollout(ctx, name); err == nil && ro != nil {
			m.Rollout = ro
			_, m.Steered = s.cfg.Rollouts.(RolloutControl)
			for i := range m.Lanes {
				if m.Lanes[i].Name == ro.Lane && !ro.Done {
					m.Lanes[i].Next = nil // the rollout takes the steps
					m.Lanes[i].Driven = m.Steered
				}
			}
		}
	}
	m.offerUndo(registered)
	if s.cfg.Rates != nil {
		if rates, err := s.cfg.Rates.Rates(ctx, name); err == nil && len(rates) > 0 {
			for _, lane := range slices.Sorted(maps.Keys(rates)) {
				r := rates[lane]
				v := rateView{Lane: lane, Color: laneColor(lane), RPS: strconv.FormatFloat(r.RequestsPerSecond, 'f', 1, 64),
					Errors: strconv.FormatFloat(100*r.ErrorRatio, 'f', 2, 64) + " %", P99: "-", Bad: r.ErrorRatio >= 0.01}
				if r.P99 > 0 {
					v.P99 = r.P99.Round(time.Millisecond / 10).String()
				}
				m.Rates = append(m.Rates, v)
			}
		}
	}
	return m
}

// historyLimit bounds the entries the page shows; `graylane history` has them all.
const historyLimit = 50

func (m *serviceModel) fill(st *registrar.Status) {
	m.Options = describeOptions(st.Options)
	blueGreen := true // no stable lane: the colours take turns being live
	for _, l := range st.Lanes {
		if l.Name == gray.StableLane {
			blueGreen = false
		}
	}
	for _, l := range st.Lanes {
		lv := laneView{Name: l.Name, Color: laneColor(l.Name), Base: l.Base, Weight: l.Weight.String(), Share: l.Share.String(),
			SharePct: l.Share.Percent(), Instances: l.Instances, Gray: l.Name != gray.StableLane,
			Next: nextFor(l, blueGreen && (l.Name == string(gray.Blue) || l.Name == string(gray.Green)))}
		for _, r := range l.Match {
			lv.Rules = append(lv.Rules, readableRule(r))
			for _, name := range ruleSegments(r) {
				if !slices.Contains(lv.Segments, name) {
					lv.Segments = append(lv.Segments, name)
				}
			}
		}
		slices.Sort(lv.Segments)
		lv.Exclude, lv.Closed = l.Exclude, l.Closed
		if lv.Gray {
			m.Gray = true
		}
		m.Lanes = append(m.Lanes, lv)
	}
	drifted := map[string]bool{}
	for _, d := range st.Drift {
		drifted[d.Instance] = true
		m.Drift = append(m.Drift, driftView{d.Instance, describeMap(d.Recorded), describeMap(d.Actual)})
	}
	for _, inst := range st.Instances {
		iv := instanceView{ID: inst.ID, Address: fmt.Sprintf("%s:%d", inst.Address, inst.Port), Health: inst.Health,
			Lane: inst.Lane(), Color: laneColor(inst.Lane()), Drift: drifted[inst.ID]}
		if inst.GrayErr != nil {
			iv.Err, iv.Lane, iv.Color = inst.GrayErr.Error(), "(none)", laneColor("")
			m.Gray = true
		} else {
			enc, _ := inst.Gray.Encode()
			iv.Meta = describeMap(enc)
			iv.Draining = inst.Gray.Drain
			if len(enc) > 0 {
				m.Gray = true
			}
		}
		m.Instances = append(m.Instances, iv)
	}
	for _, p := range st.Problems {
		m.Problems = append(m.Problems, p.Error())
	}
}

// offerUndo says, for each history entry the page shows, why it offers no undo: the entry changed
// no instance, none of its instances is registered now, or the rollout in m.Rollout drives a lane
// the undo would touch (the lane an instance goes back to or the lane it is in now). registered
// maps the service's instances to their lanes now; nil when the status could not be read: then the
// page does not know, offers the undo, and the planning says. The server checks the same when the
// undo is planned; this only spares a click.
func (m *serviceModel) offerUndo(registered map[string]string) {
	ro := m.Rollout
	for i := range m.History {
		h := &m.History[i]
		if h.NoUndo != "" {
			continue
		}
		lanes := slices.Clone(h.lanes)
		present := registered == nil
		for _, id := range h.instances {
			if lane, ok := registered[id]; ok {
				present = true
				lanes = append(lanes, lane)
			}
		}
		switch {
		case !present:
			h.NoUndo = "none of its instances is registered now"
		case ro != nil && !ro.Done && slices.Contains(lanes, ro.Lane):
			h.NoUndo = "lane " + ro.Lane + " is driven by a rollout: use its controls"
		}
	}
}

func newHistoryView(h registrar.HistoryEntry) historyView {
	v := historyView{Time: h.Time, Who: h.Who, Action: h.Action, Outcome: h.Outcome, ID: h.Time.UTC().Format(time.RFC3339Nano)}
	if len(h.Before) == 0 {
		v.NoUndo = "changed no instance: nothing to undo"
	}
	switch {
	case h.Outcome == registrar.OutcomeApplied:
		v.OutKind = "ok"
	case h.Outcome == registrar.OutcomeRecorded || h.Outcome == "":
		v.OutKind = "pending"
		if v.Outcome == "" {
			v.Outcome = "-"
		}
	default:
		v.OutKind = "error"
	}
	if f := strings.Fields(h.Action); len(f) >= 2 && (f[0] == "weight" || f[0] == "promote" || f[0] == "rollback" || f[0] == "match") {
		v.Lane, v.Color = f[1], laneColor(f[1])
	}
	for _, id := range slices.Sorted(maps.Keys(h.Before)) {
		v.instances = append(v.instances, id)
		if before, err := gray.ParseMeta(h.Before[id]); err == nil && !slices.Contains(v.lanes, before.LaneName()) {
			v.lanes = append(v.lanes, before.LaneName())
		}
		after := "deregistered"
		if a, ok := h.After[id]; ok {
			after = describeMap(a)
		}
		v.Changes = append(v.Changes, changeView{id, describeMap(h.Before[id]), after})
	}
	if h.OptionsAfter != nil {
		before := gray.Options{}
		if h.OptionsBefore != nil {
			before = *h.OptionsBefore
		}
		v.Changes = append(v.Changes, changeView{"options", describeOptions(before), describeOptions(*h.OptionsAfter)})
	}
	return v
}

func describeOptions(o gray.Options) string {
	tag := o.TagKey
	if tag == "" {
		tag = gray.DefaultTagKey
	}
	parts := []string{"lane tag " + tag}
	if o.StickyHeader != "" {
		parts = append(parts, "sticky header "+o.StickyHeader)
	}
	if o.StickyCookie != "" {
		parts = append(parts, "sticky cookie "+o.StickyCookie)
	}
	if o.StickyHeader == "" && o.StickyCookie == "" {
		parts = append(parts, "no sticky key")
	}
	parts = append(parts, "fallback "+string(o.Fallback.OrDefault()))
	return strings.Join(parts, " · ")
}

// describeMap writes gray meta keys in words: "canary · green · weight 10 % · 1 rule".
func describeMap(meta map[string]string) string {
	if len(meta) == 0 {
		return "stable"
	}
	m, err := gray.ParseMeta(meta)
	if err != nil {
		return "invalid meta"
	}
	return describeMeta(m)
}

func describeMeta(m gray.Meta) string {
	var parts []string
	if m.Lane != "" {
		parts = append(parts, "lane "+m.Lane)
	}
	if m.Canary {
		parts = append(parts, "canary")
	}
	if m.BlueGreen != "" {
		parts = append(parts, string(m.BlueGreen))
	}
	if len(parts) == 0 {
		parts = append(parts, "stable")
	}
	if m.Weight > 0 || m.Drain || parts[0] != "stable" {
		parts = append(parts, "weight "+m.Weight.String()+" %")
	}
	switch len(m.Match) {
	case 0:
	case 1:
		parts = append(parts, "1 rule")
	default:
		parts = append(parts, fmt.Sprintf("%d rules", len(m.Match)))
	}
	if m.Drain {
		parts = append(parts, "draining")
	}
	return strings.Join(parts, " · ")
}

// readableRules writes match rules in words, one string per rule.
func readableRules(rules []gray.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = readableRule(r)
	}
	return out
}

// readableRule writes one match rule in words, its conditions joined with "and".
func readableRule(r gray.Rule) string {
	var conds []string
	for _, h := range r.Header {
		conds = append(conds, "header "+h.Key+" "+readableValue(h.ValueMatch))
	}
	for _, c := range r.Cookie {
		if c.Name == "" {
			conds = append(conds, "cookies "+readableValue(c.ValueMatch))
		} else {
			conds = append(conds, "cookie "+c.Name+" "+readableValue(c.ValueMatch))
		}
	}
	for _, u := range r.URI {
		switch {
		case len(u.Prefix) > 0:
			conds = append(conds, "path starts with "+quoteList(u.Prefix))
		case len(u.Exact) > 0:
			conds = append(conds, "path is "+quoteList(u.Exact))
		case u.Regex != "":
			conds = append(conds, "path matches /"+u.Regex+"/")
		}
	}
	for _, q := range r.Query {
		conds = append(conds, "query "+q.Name+" "+readableValue(q.ValueMatch))
	}
	if len(r.Method) > 0 {
		conds = append(conds, "method is "+strings.Join(r.Method, " or "))
	}
	if len(r.ClientIP) > 0 {
		conds = append(conds, "client IP in "+strings.Join(r.ClientIP, ", "))
	}
	if len(conds) == 0 {
		return "every request"
	}
	return strings.Join(conds, " and ")
}

// ruleSegments returns the segments a rule's conditions name with in_segment, in the rule's order.
func ruleSegments(r gray.Rule) []string {
	var names []string
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
	return names
}

func readableValue(v gray.ValueMatch) string {
	switch {
	case v.Present:
		return "is present"
	case v.Absent:
		return "is absent"
	case v.Prefix != "":
		return "starts with " + strconv.Quote(v.Prefix)
	case v.Regex != "":
		return "matches /" + v.Regex + "/"
	case v.InSegment != "":
		return "in segment " + v.InSegment
	default:
		return "= " + strconv.Quote(v.Exact)
	}
}

func quoteList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, " or ")
}
