package registrar

// User segments: named sets of values (user IDs, tenant IDs) that a match rule names with
// in_segment and a lane excludes with exclude_segment. Their form in KV is internal/record's
// (segment.go): a head key that names a generation, and the generation's sorted values cut into
// chunks. This file holds the API; segment_write.go how a change reaches KV.
//
// Every change is made as the service changes are (record.go): it is planned from the head read
// with a consistent query, committed with check-and-set on the head, and recorded with a history
// entry in the same transaction, so that two operators never lose each other's change and no
// reader ever sees half of one.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
)

// Segment actions, as SegmentResult.Action and SegmentHistoryEntry.Action name them.
const (
	SegmentCreate = "create"
	SegmentAdd    = "add"
	SegmentRemove = "remove"
	SegmentImport = "import"
	SegmentDelete = "delete"
)

// MaxSegmentDescriptionLength is the longest description of a segment, in bytes.
const MaxSegmentDescriptionLength = 512

// Sentinel errors of segments, for errors.Is.
var (
	// ErrSegmentNotFound: no segment of that name. Errors that match it match ErrNotFound too.
	ErrSegmentNotFound = errors.New("registrar: no such segment")
	// ErrSegmentExists: a segment of that name exists already (CreateSegment).
	ErrSegmentExists = errors.New("registrar: the segment exists already")
)

// SegmentInfo is what a segment's head says of it.
type SegmentInfo struct {
	Name        string    `json:"name"`
	Description string    `json:"description"`
	Count       int       `json:"count"`
	Updated     time.Time `json:"updated"`
	Who         string    `json:"who"`
	// Generation names the KV folder that holds the values; Chunks is how many keys it has.
	Generation string `json:"generation"`
	Chunks     int    `json:"chunks"`
	// Index is the head's ModifyIndex: it changes with every change of the segment.
	Index uint64 `json:"index"`
}

func infoOf(h *record.SegmentHead, index uint64) *SegmentInfo {
	return &SegmentInfo{Name: h.Name, Description: h.Description, Count: h.Count, Updated: h.Updated, Who: h.Who,
		Generation: h.Generation, Chunks: h.Chunks, Index: index}
}

// ImportOptions are the options of ImportSegment.
type ImportOptions struct {
	// Description, when set, replaces the segment's description; nil keeps it.
	Description *string
	// Create creates the segment when it does not exist; without it, importing into a segment that
	// does not exist fails with ErrSegmentNotFound (a misspelt name creates nothing).
	Create bool
}

// SegmentResult is what a change of a segment did.
type SegmentResult struct {
	Segment string `json:"segment"`
	Action  string `json:"action"`
	// Before and After count the values before and after the change.
	Before int `json:"before"`
	After  int `json:"after"`
	// Added and Removed count the values the change added and removed.
	Added   int `json:"added"`
	Removed int `json:"removed"`
	// Unchanged is set when the segment held what the change asked for already: nothing was written
	// and no history was recorded.
	Unchanged bool `json:"unchanged,omitempty"`
	// Generation names the new generation, and Chunks counts its keys.
	Generation string `json:"generation,omitempty"`
	Chunks     int    `json:"chunks"`
	// ChunkTransactions counts the transactions that wrote chunks before the commit: 0 when the
	// chunks went in the commit itself. Transactions counts every transaction, the commit included.
	ChunkTransactions int `json:"chunk_transactions"`
	Transactions      int `json:"transactions"`
	// Retries counts the times an add or remove lost a race with another change and was made again
	// on the newer values.
	Retries int `json:"retries,omitempty"`
	// Abandoned counts the generations a killed change had left behind, deleted with this one.
	Abandoned int `json:"abandoned_deleted,omitempty"`
}

// Written says how the change was written: "one transaction", "5 chunk transactions and one
// commit", or "nothing written".
func (r *SegmentResult) Written() string {
	switch {
	case r.Transactions == 0:
		return "nothing written"
	case r.ChunkTransactions == 0:
		return "one transaction"
	case r.ChunkTransactions == 1:
		return "1 chunk transaction and one commit"
	}
	return fmt.Sprintf("%d chunk transactions and one commit", r.ChunkTransactions)
}

// SegmentHistoryEntry is one recorded change of a segment.
type SegmentHistoryEntry struct {
	Time    time.Time `json:"time"`
	Who     string    `json:"who"`
	Segment string    `json:"segment"`
	// Action is SegmentCreate, SegmentAdd, SegmentRemove, SegmentImport or SegmentDelete.
	Action string `json:"action"`
	// Before and After count the values before and after the change.
	Before int `json:"before"`
	After  int `json:"after"`
	// Added and Removed count the values the change added and removed; AddedSample and
	// RemovedSample hold the first of them in sort order, at most SegmentHistorySample each.
	Added         int      `json:"added"`
	Removed       int      `json:"removed"`
	AddedSample   []string `json:"added_sample,omitempty"`
	RemovedSample []string `json:"removed_sample,omitempty"`
	// DescriptionBefore and DescriptionAfter are set when the change changed the description.
	DescriptionBefore string `json:"description_before,omitempty"`
	DescriptionAfter  string `json:"description_after,omitempty"`
	// Base is the ModifyIndex of the head the change replaced (0 for a create).
	Base uint64 `json:"base"`
	// Generation names the generation the change wrote (empty for a delete).
	Generation string `json:"generation,omitempty"`
}

// SegmentHistorySample is the most added and removed values a history entry names.
const SegmentHistorySample = 20

// SegmentValueError reports a value that cannot be in a segment. Nothing was changed.
type SegmentValueError struct {
	Segment string
	// Position is the value's place in the list given, from 1.
	Position int
	Value    string
	Problem  string
}

func (e *SegmentValueError) Error() string {
	return fmt.Sprintf("registrar: segment %s: value %d: %s", e.Segment, e.Position, e.Problem)
}

// SegmentNameError reports a name that cannot name a segment.
type SegmentNameError struct {
	Name string
	Err  error
}

func (e *SegmentNameError) Error() string { return "registrar: " + e.Err.Error() }

func (e *SegmentNameError) Unwrap() error { return e.Err }

// SegmentLimitError reports a change after which the segment would hold more values than
// gray.MaxSegmentValues. Nothing was changed.
type SegmentLimitError struct {
	Segment string
	Action  string
	// Count is how many distinct values the segment would hold.
	Count int
}

func (e *SegmentLimitError) Error() string {
	return fmt.Sprintf("registrar: %s on segment %s refused: it would hold %d values; a segment holds at most %d; nothing was changed",
		e.Action, e.Segment, e.Count, gray.MaxSegmentValues)
}

// SegmentNotFoundError reports a segment that does not exist. It matches ErrSegmentNotFound and
// ErrNotFound.
type SegmentNotFoundError struct {
	Segment string
}

func (e *SegmentNotFoundError) Error() string {
	return fmt.Sprintf("registrar: segment %s does not exist", e.Segment)
}

func (e *SegmentNotFoundError) Is(target error) bool {
	return target == ErrSegmentNotFound || target == ErrNotFound
}

// SegmentExistsError reports a create of a segment that exists. It matches ErrSegmentExists.
type SegmentExistsError struct {
	Segment string
	// Existing is the segment's head, when it was read.
	Existing *SegmentInfo
}

func (e *SegmentExistsError) Error() string {
	msg := fmt.Sprintf("registrar: segment %s exists already", e.Segment)
	if h := e.Existing; h != nil {
		msg += fmt.Sprintf(" (%d values, updated %s by %s)", h.Count, h.Updated.Format(time.RFC3339), h.Who)
	}
	return msg + "; add, remove or import change it; nothing was changed"
}

func (e *SegmentExistsError) Is(target error) bool { return target == ErrSegmentExists }

// SegmentConflictError reports a change of a segment that lost a check-and-set race: someone
// changed the segment after it was read. Nothing of the change is visible: the chunks it had
// written were deleted. It matches ErrConflict.
type SegmentConflictError struct {
	Segment string
	Action  string
	// Attempts counts the tries (add and remove try again on the newer values a few times).
	Attempts int
	// Last is the most recent recorded change, when it can be read.
	Last *SegmentHistoryEntry
}

func (e *SegmentConflictError) Error() string {
	msg := fmt.Sprintf("registrar: %s on segment %s not applied: the segment changed since it was read", e.Action, e.Segment)
	if e.Attempts > 1 {
		msg += fmt.Sprintf(", %d times", e.Attempts)
	}
	if e.Last != nil {
		msg += fmt.Sprintf(" (%s by %s at %s)", e.Last.Action, e.Last.Who, e.Last.Time.Format(time.RFC3339))
	}
	return msg + "; nothing of this change was kept; look at the segment and run the command again"
}

func (e *SegmentConflictError) Is(target error) bool { return target == ErrConflict }

// SegmentPermissionError reports a segment the token may not read or change. Nothing was changed;
// running the command again with the same token will not help. It matches ErrPermission.
type SegmentPermissionError struct {
	Segment string
	Action  string
	// Segment is empty for a refused list of every segment.
	// Missing lists the permissions the token lacks ("key write on graylane/segments/x/"), when
	// Consul said which.
	Missing []string
	// Err is Consul's answer.
	Err error
}

func (e *SegmentPermissionError) Error() string {
	what := "segment " + e.Segment
	if e.Segment == "" {
		what = "the segments"
	}
	msg := fmt.Sprintf("registrar: %s on %s refused: permission denied", e.Action, what)
	if len(e.Missing) > 0 {
		msg += ": the token lacks " + strings.Join(e.Missing, " and ")
	} else if e.Err != nil {
		msg += " (" + e.Err.Error() + ")"
	}
	return msg + "; nothing was changed; use a token with these permissions"
}

func (e *SegmentPermissionError) Is(target error) bool { return target == ErrPermission }

func (e *SegmentPermissionError) Unwrap() error { return e.Err }

// ValidateSegmentValue reports what is wrong with a value for a segment, or nil: a value is 1 to
// gray.MaxSegmentValueLength bytes of valid UTF-8 without control characters, that neither begins
// nor ends with white space (an HTTP header value never does, so such a value would match nothing)
// and does not begin with '#' (a segment file, one value a line, reads such a line as a comment:
// whatever a segment holds, export and import carry over).
func ValidateSegmentValue(v string) error {
	if err := record.ValidSegmentValue(v); err != nil {
		return err
	}
	switch {
	case !utf8.ValidString(v):
		return fmt.Errorf("value %q is not valid UTF-8", v)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return fmt.Errorf("value %q holds a control character", v)
	case strings.TrimSpace(v) != v:
		return fmt.Errorf("value %q begins or ends with white space", v)
	case v[0] == '#':
		return fmt.Errorf("value %q begins with '#', which a segment file reads as a comment", v)
	}
	return nil
}

// checkSegment checks a segment's name and the values of a change; nothing is asked of Consul.
func checkSegment(name string, values []string) error {
	if err := gray.ValidateSegmentName(name); err != nil {
		return &SegmentNameError{Name: name, Err: err}
	}
	for i, v := range values {
		if err := ValidateSegmentValue(v); err != nil {
			return &SegmentValueError{Segment: name, Position: i + 1, Value: v, Problem: err.Error()}
		}
	}
	return nil
}

func checkDescription(name, d string) error {
	switch {
	case len(d) > MaxSegmentDescriptionLength:
		return fmt.Errorf("registrar: segment %s: the description has %d bytes; at most %d", name, len(d), MaxSegmentDescriptionLength)
	case !utf8.ValidString(d) || strings.IndexFunc(d, unicode.IsControl) >= 0:
		return fmt.Errorf("registrar: segment %s: the description %.40q is not one line of text", name, d)
	}
	return nil
}

// Segments returns the head of every segment, sorted by name. A folder under the segments folder
// that has no head (a create that was killed before its commit) is not a segment and is left out.
func (r *Registrar) Segments(ctx context.Context) ([]SegmentInfo, error) {
	folders, meta, err := r.client.KV().Keys(record.SegmentsFolder(r.prefix), "/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, r.segmentReadError(err, "", "list")
	}
	if meta != nil && meta.ResultsFilteredByACLs {
		return nil, &SegmentPermissionError{Action: "list", Missing: []string{"key read on " + record.SegmentsFolder(r.prefix)}}
	}
	out := []SegmentInfo{}
	for _, f := range folders {
		name := strings.TrimSuffix(strings.TrimPrefix(f, record.SegmentsFolder(r.prefix)), "/")
		if !strings.HasSuffix(f, "/") || gray.ValidateSegmentName(name) != nil {
			continue
		}
		pair, _, err := r.client.KV().Get(record.SegmentHeadKey(r.prefix, name), (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, r.segmentReadError(err, name, "list")
		}
		if pair == nil {
			continue
		}
		var h record.SegmentHead
		if err := json.Unmarshal(pair.Value, &h); err != nil {
			return nil, &record.SegmentError{Segment: name, Problem: fmt.Sprintf("head %s: %v", pair.Key, err)}
		}
		out = append(out, *infoOf(&h, pair.ModifyIndex))
	}
	slices.SortFunc(out, func(a, b SegmentInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Segment returns a segment's head and its values, sorted. A segment that does not exist is a
// *SegmentNotFoundError; keys that do not make a segment are a *record.SegmentError.
func (r *Registrar) Segment(ctx context.Context, name string) (*SegmentInfo, []string, error) {
	if err := checkSegment(name, nil); err != nil {
		return nil, nil, err
	}
	cur, err := r.readSegment(ctx, name, "show", false)
	if err != nil {
		return nil, nil, err
	}
	if cur.head == nil {
		return nil, nil, &SegmentNotFoundError{Segment: name}
	}
	return infoOf(cur.head, cur.index), cur.values, nil
}

// SegmentHistory returns a segment's recorded changes in the order they were committed (the KV
// index of each entry, whatever the operators' clocks say). The history outlives a deleted segment.
// Entries that do not decode are left out and reported in a *HistoryError returned with the others
// (its Service names the segment: "segment NAME").
func (r *Registrar) SegmentHistory(ctx context.Context, name string) ([]SegmentHistoryEntry, error) {
	if err := checkSegment(name, nil); err != nil {
		return nil, err
	}
	pairs, meta, err := r.client.KV().List(record.SegmentHistoryFolder(r.prefix, name), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, r.segmentReadError(err, name, "history")
	}
	if meta != nil && meta.ResultsFilteredByACLs {
		return nil, &SegmentPermissionError{Segment: name, Action: "history", Missing: []string{"key read on " + record.SegmentHistoryFolder(r.prefix, name)}}
	}
	type indexed struct {
		index uint64
		entry SegmentHistoryEntry
	}
	read := make([]indexed, 0, len(pairs))
	var bad *HistoryError
	for _, p := range pairs {
		var h SegmentHistoryEntry
		if err := json.Unmarshal(p.Value, &h); err != nil {
			if bad == nil {
				bad = &HistoryError{Service: "segment " + name, Unreadable: map[string]error{}}
			}
			bad.Unreadable[p.Key] = err
			continue
		}
		read = append(read, indexed{p.CreateIndex, h})
	}
	slices.SortStableFunc(read, func(a, b indexed) int {
		return cmp.Or(cmp.Compare(a.index, b.index), a.entry.Time.Compare(b.entry.Time))
	})
	out := make([]SegmentHistoryEntry, len(read))
	for i := range read {
		out[i] = read[i].entry
	}
	if bad != nil {
		return out, bad
	}
	return out, nil
}

// CreateSegment creates a segment with values (none: an empty segment, which matches nobody). It
// fails with a *SegmentExistsError when the segment exists, also when another operator created it
// since it was read.
func (r *Registrar) CreateSegment(ctx context.Context, name, description string, values []string) (*SegmentResult, error) {
	if err := checkDescription(name, description); err != nil {
		return nil, err
	}
	return r.changeSegment(ctx, name, segmentChange{action: SegmentCreate, values: values, description: &description,
		apply: func([]string) []string { return record.SortedValues(values) }})
}

// AddToSegment adds values to a segment; values it holds already are left as they are. Two adds
// (or an add and a remove) that race both land: the one that loses the check-and-set reads the
// segment again and adds its values to the newer set, a few times at most.
func (r *Registrar) AddToSegment(ctx context.Context, name string, values []string) (*SegmentResult, error) {
	return r.changeSegment(ctx, name, segmentChange{action: SegmentAdd, values: values, retry: true,
		apply: func(cur []string) []string { return union(cur, record.SortedValues(values)) }})
}

// RemoveFromSegment removes values from a segment; values it does not hold are ignored. It retries
// a lost race as AddToSegment does.
func (r *Registrar) RemoveFromSegment(ctx context.Context, name string, values []string) (*SegmentResult, error) {
	return r.changeSegment(ctx, name, segmentChange{action: SegmentRemove, values: values, retry: true,
		apply: func(cur []string) []string { return difference(cur, record.SortedValues(values)) }})
}

// ImportSegment replaces a segment's values with values. A change by someone else since the segment
// was read makes it fail with a *SegmentConflictError (it is not retried: the import would undo
// that change).
func (r *Registrar) ImportSegment(ctx context.Context, name string, values []string, opts ImportOptions) (*SegmentResult, error) {
	if opts.Description != nil {
		if err := checkDescription(name, *opts.Description); err != nil {
			return nil, err
		}
	}
	return r.changeSegment(ctx, name, segmentChange{action: SegmentImport, values: values, description: opts.Description, mayCreate: opts.Create,
		apply: func([]string) []string { return record.SortedValues(values) }})
}

// DeleteSegment deletes a segment: its head and every generation, in one transaction with a history
// entry (the history stays). Match conditions that name it then match no request, and lanes that
// exclude it take tagged requests only, until a segment of that name exists again.
func (r *Registrar) DeleteSegment(ctx context.Context, name string) (*SegmentResult, error) {
	return r.changeSegment(ctx, name, segmentChange{action: SegmentDelete, deleting: true})
}

// union returns the sorted union of two sorted lists of distinct values.
func union(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := strings.Compare(a[i], b[j]); {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// difference returns the values of sorted a that are not in sorted b.
func difference(a, b []string) []string {
	out := make([]string, 0, len(a))
	j := 0
	for _, v := range a {
		for j < len(b) && b[j] < v {
			j++
		}
		if j < len(b) && b[j] == v {
			continue
		}
		out = append(out, v)
	}
	return out
}

// diff counts the values added and removed from sorted before to sorted after, with the first
// SegmentHistorySample of each.
func diff(before, after []string) (added, removed int, addedSample, removedSample []string) {
	i, j := 0, 0
	add := func(v string) {
		added++
		if len(addedSample) < SegmentHistorySample {
			addedSample = append(addedSample, v)
		}
	}
	remove := func(v string) {
		removed++
		if len(removedSample) < SegmentHistorySample {
			removedSample = append(removedSample, v)
		}
	}
	for i < len(before) && j < len(after) {
		switch c := strings.Compare(before[i], after[j]); {
		case c < 0:
			remove(before[i])
			i++
		case c > 0:
			add(after[j])
			j++
		default:
			i, j = i+1, j+1
		}
	}
	for ; i < len(before); i++ {
		remove(before[i])
	}
	for ; j < len(after); j++ {
		add(after[j])
	}
	return added, removed, addedSample, removedSample
}

// segmentReadError words a failed read of a segment.
func (r *Registrar) segmentReadError(err error, name, action string) error {
	what := "segment " + name
	if name == "" {
		what = "the segments"
	}
	if consulclient.IsPermissionDenied(err) {
		return &SegmentPermissionError{Segment: name, Action: action, Err: consulclient.Redact(err, r.cfg.Token)}
	}
	return r.wrap(err, "reading %s", what)
}
