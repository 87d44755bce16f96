package portal

// The pure part of the segment pages: what they show (the views), reading the values typed into a
// form, working out what an add or a remove does, and saying what a confirmed change did. Nothing
// here asks Consul; segments.go does.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// segmentSampleShown is how many of the values a planned change adds or removes its confirmation
// names.
const segmentSampleShown = 20

// segmentNav is the navigation's entry for the segments.
type segmentNav struct {
	Known   bool
	Count   int
	Current bool
}

// segmentListView is the page of every segment.
type segmentListView struct {
	Rows  []segmentRow
	Known bool
	Err   string
}

type segmentRow struct {
	registrar.SegmentInfo
	UsedBy []string // the services whose lanes name the segment
}

// segmentView is a segment's page.
type segmentView struct {
	Name    string
	Info    *registrar.SegmentInfo // nil: no such segment
	Values  []string               // the first segmentShownValues
	More    int                    // the values beyond them
	History []segmentHistoryView   // newest first, at most historyLimit
	HistErr string
	Deleted *segmentHistoryView // for a segment that does not exist: its deletion, when recorded
	Err     string              // the segment could not be read, or the name names none
	Uses    []segmentUse
	Form    segmentForm // what the operator typed, when the page sends a form back
}

// segmentForm is what an add or remove form held.
type segmentForm struct{ Op, Values string }

// segmentUse is a lane that names a segment.
type segmentUse struct {
	Service, Lane, Color string
	How                  string // what it does with the segment
	Closed               bool   // the lane takes tagged requests only (see gray.LaneInfo.Closed)
}

type segmentHistoryView struct {
	Time                       time.Time
	Who, Action                string
	Before, After              int
	Added, Removed             int
	AddedSample, RemovedSample string // the first values added and removed, joined
	AddedMore, RemovedMore     int    // the values beyond those samples
	Description                string // the change of the description, when it changed
}

// segmentPlan is an add or a remove shown for confirmation.
type segmentPlan struct {
	name, action string   // registrar.SegmentAdd or registrar.SegmentRemove
	values       []string // the values given, sorted, without duplicates
	before       int      // the segment's size when planned
	after        int
	changing     int      // the values the change adds (not held) or removes (held)
	ignored      int      // the values given that it leaves as they are
	sample       []string // the first of the changing values
}

// segmentConfirmView is a planned change of a segment, for its confirmation.
type segmentConfirmView struct {
	ID, Action, Segment string
	Before, After       int
	Changing, Ignored   int
	Sample              []string
	More                int // changing values beyond the sample
}

func (p *segmentPlan) view(id string) *segmentConfirmView {
	return &segmentConfirmView{ID: id, Action: p.action, Segment: p.name, Before: p.before, After: p.after,
		Changing: p.changing, Ignored: p.ignored, Sample: p.sample, More: p.changing - len(p.sample)}
}

// planSegmentChange works out what adding or removing values does to a segment that holds current
// (sorted, as the registrar returns them). Neither slice is changed.
func planSegmentChange(name, action string, current, given []string) *segmentPlan {
	values := slices.Clone(given)
	slices.Sort(values)
	values = slices.Compact(values)
	p := &segmentPlan{name: name, action: action, values: values, before: len(current)}
	adding := action == registrar.SegmentAdd
	for _, v := range values {
		if _, held := slices.BinarySearch(current, v); held == adding {
			p.ignored++
			continue
		}
		p.changing++
		if len(p.sample) < segmentSampleShown {
			p.sample = append(p.sample, v)
		}
	}
	p.after = p.before + p.changing
	if !adding {
		p.after = p.before - p.changing
	}
	return p
}

// parseSegmentValues reads the values typed into a form: one a line, or several on a line
// separated by commas; blank entries are skipped, and each entry is trimmed. A value the registrar
// would refuse is a problem that says where it is and what is wrong with it.
func parseSegmentValues(text string) (values, problems []string) {
	for i, line := range strings.Split(text, "\n") {
		items := strings.Split(line, ",")
		for j, item := range items {
			v := strings.TrimSpace(item)
			if v == "" {
				continue
			}
			if err := registrar.ValidateSegmentValue(v); err != nil {
				where := fmt.Sprintf("line %d", i+1)
				if len(items) > 1 {
					where += fmt.Sprintf(", item %d", j+1)
				}
				problems = append(problems, where+": "+err.Error())
				continue
			}
			values = append(values, v)
		}
	}
	return values, problems
}

// segmentUses returns the lanes of the services that name a segment: in a match rule, or in their
// exclude_segment.
func segmentUses(models []*serviceModel, name string) []segmentUse {
	var uses []segmentUse
	for _, m := range models {
		if m == nil {
			continue
		}
		for _, l := range m.Lanes {
			u := segmentUse{Service: m.Name, Lane: l.Name, Color: l.Color, Closed: l.Closed}
			if slices.Contains(l.Segments, name) {
				u.How = "a match rule takes the requests whose value it holds"
				uses = append(uses, u)
			}
			if slices.Contains(l.Exclude, name) {
				u.How = "excluded: the lane never takes its users by rule or weight"
				uses = append(uses, u)
			}
		}
	}
	return uses
}

func newSegmentHistoryView(h registrar.SegmentHistoryEntry) segmentHistoryView {
	v := segmentHistoryView{Time: h.Time, Who: h.Who, Action: h.Action, Before: h.Before, After: h.After,
		Added: h.Added, Removed: h.Removed, AddedSample: strings.Join(h.AddedSample, ", "), RemovedSample: strings.Join(h.RemovedSample, ", "),
		AddedMore: h.Added - len(h.AddedSample), RemovedMore: h.Removed - len(h.RemovedSample)}
	if h.DescriptionBefore != h.DescriptionAfter {
		v.Description = fmt.Sprintf("description %s → %s", quoteOrNone(h.DescriptionBefore), quoteOrNone(h.DescriptionAfter))
	}
	return v
}

func quoteOrNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return strconv.Quote(s)
}

// thousands writes a count with thousands separators: 100,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func toOrFrom(action string) string {
	if action == registrar.SegmentRemove {
		return "remove from"
	}
	return "add to"
}

// segmentOutcome says what a confirmed change of a segment did, or why it was not made.
func segmentOutcome(p *segmentPlan, operator string, res *registrar.SegmentResult, err error) flash {
	what := p.action + " on segment " + p.name
	var (
		conflict *registrar.SegmentConflictError
		perm     *registrar.SegmentPermissionError
		bad      *registrar.SegmentValueError
		limit    *registrar.SegmentLimitError
	)
	switch {
	case err == nil && res.Unchanged:
		return flash{Kind: "info", Text: fmt.Sprintf("%s: nothing to change (someone made the change meanwhile), nothing recorded.", what)}
	case err == nil:
		counts := []string{}
		if res.Added > 0 {
			counts = append(counts, "+"+thousands(res.Added))
		}
		if res.Removed > 0 {
			counts = append(counts, "−"+thousands(res.Removed))
		}
		msg := fmt.Sprintf("%s: done (%s), %s values now, recorded as %s.", what, strings.Join(counts, " "), thousands(res.After), operator)
		if res.Before != p.before || res.Retries > 0 {
			msg += fmt.Sprintf(" The segment had changed since the preview: it held %s values, not %s; the change was made on the newer values.",
				thousands(res.Before), thousands(p.before))
		}
		return flash{Kind: "ok", Text: msg}
	case errors.As(err, &conflict):
		msg := fmt.Sprintf("Conflict: %s was not made. The segment kept changing while it was written", what)
		if conflict.Attempts > 1 {
			msg += fmt.Sprintf(" (%d tries)", conflict.Attempts)
		}
		if l := conflict.Last; l != nil {
			msg += fmt.Sprintf("; the last change: %q by %s at %s UTC", l.Action, l.Who, l.Time.UTC().Format("15:04:05"))
		}
		return flash{Kind: "conflict", Text: msg + ". Nothing was changed; the page shows the current values. Plan the change again if it is still wanted."}
	case errors.As(err, &perm):
		return flash{Kind: "error", Text: fmt.Sprintf("Refused by Consul: %v", perm)}
	case errors.Is(err, registrar.ErrSegmentNotFound):
		return flash{Kind: "error", Text: fmt.Sprintf("%s was not made: segment %s does not exist any more (deleted since the preview?). Nothing was changed.", what, p.name)}
	case errors.As(err, &bad):
		return flash{Kind: "error", Text: fmt.Sprintf("%s was not made: value %q: %s. Nothing was changed.", what, bad.Value, bad.Problem)}
	case errors.As(err, &limit):
		return flash{Kind: "error", Text: fmt.Sprintf("%s was not made: segment %s would hold %s values; a segment holds at most %s. Nothing was changed.",
			what, p.name, thousands(limit.Count), thousands(gray.MaxSegmentValues))}
	}
	return flash{Kind: "error", Text: fmt.Sprintf("%s failed: %v", what, err)}
}
