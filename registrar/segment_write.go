package registrar

// How a change of a segment reaches KV.
//
// A change reads the segment's folder in one consistent List: the head with its ModifyIndex, the
// values of the head's generation, and the names of any other generations. It builds the whole new
// set, sorted, and writes it as a new generation GEN (the time in hex, then a random part, so that
// generations sort by age and two writers never share one). The commit is one transaction:
// check-and-set on the head against the index read, the history entry, the deletion of the
// generation the head named until then, and of generations a killed change left behind.
//
// When the new chunks are small (at most singleTxnChunkBytes, which Consul's 512 kB limit on a
// transaction takes with room for base64 and the rest), they go in the commit itself: one
// transaction in all. Otherwise each chunk is written in a transaction of its own first (a chunk
// is up to 256 kB, 341 kB in base64: two do not fit in one), then the commit checks that every
// chunk is still as written (check-index) as it switches the head. Until the commit, no reader
// sees the new chunks: a reader takes the generation the head names. When the commit loses the
// check-and-set, the new chunks are deleted and the change fails with a *SegmentConflictError;
// an add or a remove then reads the segment again and tries on the newer values.
//
// A process killed between its chunk writes and its commit leaves a generation that no head names.
// The next change of the segment deletes such generations once they are older than abandonedAfter
// by the time in their name: a younger one may be a change still in progress. Should a host's
// clock be far enough off that a change in progress is taken for abandoned, the check-index of its
// commit fails and the change fails with nothing visible, never a head naming missing chunks.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/internal/retry"
)

// abandonedAfter is how old a generation that no head names must be, by the time in its name, for
// a change to delete it as left behind by a killed change. The tests shorten it.
var abandonedAfter = time.Hour

// beforeSegmentCommit, when set (by tests), is called with the segment's name after a change has
// read the segment and written its chunks, just before its commit.
var beforeSegmentCommit func(name string)

const (
	// singleTxnChunkBytes is the most bytes of chunks written in the commit itself: 400 kB in
	// base64, under Consul's 512 kB limit on a transaction (txn_max_req_len) with the head, the
	// history entry (its samples hold up to 40 values of 256 bytes) and the keys.
	singleTxnChunkBytes = 300 << 10
	// singleTxnOps is the most operations of a commit that carries its chunks.
	singleTxnOps = 60
	// maxCommitOps bounds the operations of a commit: Consul takes at most 128 in a transaction.
	// A commit holds 3, one check-index per chunk (at most 101: 100,000 values of 256 bytes) and
	// the deletion of abandoned generations, at most maxAbandonedPerCommit of them.
	maxCommitOps = 125
	// maxAbandonedPerCommit is the most abandoned generations one change deletes; the next
	// change deletes more.
	maxAbandonedPerCommit = 16
	// segmentRetries is how often an add or a remove that lost a race is made again.
	segmentRetries = 5
	// chunkWriters is how many chunk transactions run at once.
	chunkWriters = 4
)

// segmentChange is one change of a segment, as changeSegment makes it.
type segmentChange struct {
	action string
	// values are the values the caller gave, checked before anything is read.
	values []string
	// apply returns the new sorted set from the current one (which it must not modify).
	apply func(cur []string) []string
	// description replaces the description when set.
	description *string
	// retry: the change commutes with others (add, remove), and is made again after a lost race.
	retry bool
	// mayCreate: a segment that does not exist is created (import with Create).
	mayCreate bool
	deleting  bool
}

// segmentState is a segment as one List of its folder showed it.
type segmentState struct {
	head  *record.SegmentHead // nil: the segment does not exist
	index uint64              // the head's ModifyIndex; 0 without a head
	// values of the head's generation, sorted.
	values []string
	// gens names the generations in the folder that the head does not name.
	gens []string
}

// readSegment reads a segment's folder in one List.
func (r *Registrar) readSegment(ctx context.Context, name, action string, consistent bool) (*segmentState, error) {
	folder := record.SegmentFolder(r.prefix, name)
	pairs, meta, err := r.client.KV().List(folder, (&api.QueryOptions{RequireConsistent: consistent}).WithContext(ctx))
	if err != nil {
		return nil, r.segmentReadError(err, name, action)
	}
	if meta != nil && meta.ResultsFilteredByACLs {
		return nil, &SegmentPermissionError{Segment: name, Action: action, Missing: []string{"key read on " + folder}}
	}
	values, head, err := record.SegmentValues(r.prefix, name, pairs)
	if err != nil {
		return nil, err
	}
	st := &segmentState{head: head, values: values}
	headKey, genFolder := record.SegmentHeadKey(r.prefix, name), folder+"gen/"
	seen := map[string]bool{}
	for _, p := range pairs {
		if p.Key == headKey {
			st.index = p.ModifyIndex
			continue
		}
		rest, ok := strings.CutPrefix(p.Key, genFolder)
		if !ok {
			continue
		}
		gen, _, ok := strings.Cut(rest, "/")
		if !ok || gen == "" || head != nil && gen == head.Generation || seen[gen] {
			continue
		}
		seen[gen] = true
		st.gens = append(st.gens, gen)
	}
	return st, nil
}

// changeSegment checks a change, the token's permissions, and makes the change; an add or a
// remove that loses a race is made again on the newer values.
func (r *Registrar) changeSegment(ctx context.Context, name string, c segmentChange) (*SegmentResult, error) {
	if err := checkSegment(name, c.values); err != nil {
		return nil, err
	}
	if err := r.authorizeSegment(ctx, name, c.action); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		cur, err := r.readSegment(ctx, name, c.action, true)
		if err != nil {
			return nil, err
		}
		res, err := r.commitSegment(ctx, name, c, cur)
		var conflict *SegmentConflictError
		if errors.As(err, &conflict) {
			conflict.Attempts = attempt
			if c.retry && attempt <= segmentRetries {
				if !retry.Sleep(ctx, retry.Backoff(10*time.Millisecond, 200*time.Millisecond, attempt)) {
					return nil, ctx.Err()
				}
				continue
			}
			if hist, _ := r.SegmentHistory(ctx, name); len(hist) > 0 {
				conflict.Last = &hist[len(hist)-1]
			}
		}
		if res != nil {
			res.Retries = attempt - 1
		}
		return res, err
	}
}

// commitSegment makes a change against the segment as cur shows it: one transaction, or chunk
// transactions and a commit.
func (r *Registrar) commitSegment(ctx context.Context, name string, c segmentChange, cur *segmentState) (*SegmentResult, error) {
	switch {
	case cur.head == nil && (c.action == SegmentCreate || c.mayCreate):
	case cur.head == nil:
		return nil, &SegmentNotFoundError{Segment: name}
	case c.action == SegmentCreate:
		return nil, &SegmentExistsError{Segment: name, Existing: infoOf(cur.head, cur.index)}
	}
	var after []string
	if !c.deleting {
		after = c.apply(cur.values)
	}
	if len(after) > gray.MaxSegmentValues {
		return nil, &SegmentLimitError{Segment: name, Action: c.action, Count: len(after)}
	}
	descBefore := ""
	if cur.head != nil {
		descBefore = cur.head.Description
	}
	desc := descBefore
	if c.description != nil {
		desc = *c.description
	}
	res := &SegmentResult{Segment: name, Action: c.action, Before: len(cur.values), After: len(after)}
	added, removed, addedSample, removedSample := diff(cur.values, after)
	res.Added, res.Removed = added, removed
	if cur.head != nil && !c.deleting && added == 0 && removed == 0 && desc == descBefore {
		res.Unchanged = true
		return res, nil
	}

	now := r.now().UTC()
	entry := SegmentHistoryEntry{Time: now, Who: r.operator, Segment: name, Action: c.action, Before: res.Before, After: res.After,
		Added: added, Removed: removed, AddedSample: addedSample, RemovedSample: removedSample, Base: cur.index}
	if desc != descBefore {
		entry.DescriptionBefore, entry.DescriptionAfter = descBefore, desc
	}
	headKey := record.SegmentHeadKey(r.prefix, name)
	histKey := fmt.Sprintf("%s%020d-%08x", record.SegmentHistoryFolder(r.prefix, name), now.UnixNano(), rand.Uint32())

	if c.deleting {
		histJSON, err := json.Marshal(entry)
		if err != nil {
			return nil, err
		}
		ops := api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: headKey, Index: cur.index}},
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: histKey, Value: histJSON}},
			{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: record.SegmentFolder(r.prefix, name)}},
		}
		if err := r.commitTxn(ctx, name, c, ops, nil); err != nil {
			return nil, err
		}
		res.Transactions = 1
		return res, nil
	}

	gen := newGeneration(now)
	chunks := record.Chunks(after)
	res.Generation, res.Chunks = gen, len(chunks)
	entry.Generation = gen
	head := record.SegmentHead{Name: name, Description: desc, Generation: gen, Chunks: len(chunks), Count: len(after), Updated: now, Who: r.operator}
	headJSON, err := json.Marshal(head)
	if err != nil {
		return nil, err
	}
	histJSON, err := json.Marshal(entry)
	if err != nil {
		return nil, err
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: headKey, Index: cur.index, Value: headJSON}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: histKey, Value: histJSON}},
	}
	if cur.head != nil && cur.head.Generation != "" {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: record.SegmentGenerationFolder(r.prefix, name, cur.head.Generation)}})
	}
	var abandoned api.TxnOps
	for _, g := range cur.gens {
		if t, ok := generationTime(g); ok && now.Sub(t) > abandonedAfter && len(abandoned) < maxAbandonedPerCommit {
			abandoned = append(abandoned, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDeleteTree, Key: record.SegmentGenerationFolder(r.prefix, name, g)}})
		}
	}
	total := 0
	for _, ch := range chunks {
		total += len(ch)
	}
	if total <= singleTxnChunkBytes && len(ops)+len(abandoned)+len(chunks) <= singleTxnOps {
		for i, ch := range chunks {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: record.SegmentChunkKey(r.prefix, name, gen, i), Value: ch}})
		}
		ops = append(ops, abandoned...)
		res.Transactions = 1
		if beforeSegmentCommit != nil {
			beforeSegmentCommit(name)
		}
		if err := r.commitTxn(ctx, name, c, ops, nil); err != nil {
			return nil, err
		}
		res.Abandoned = len(abandoned)
		return res, nil
	}

	indexes, err := r.writeChunks(ctx, name, c.action, gen, chunks)
	if err != nil {
		r.dropGeneration(ctx, name, gen)
		return nil, err
	}
	checks := make(map[int]bool, len(chunks)) // the op indexes of the check-index operations
	for i := range chunks {
		checks[len(ops)] = true
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: record.SegmentChunkKey(r.prefix, name, gen, i), Index: indexes[i]}})
	}
	if room := maxCommitOps - len(ops); len(abandoned) > room {
		abandoned = abandoned[:max(room, 0)]
	}
	ops = append(ops, abandoned...)
	res.ChunkTransactions, res.Transactions = len(chunks), len(chunks)+1
	if beforeSegmentCommit != nil {
		beforeSegmentCommit(name)
	}
	if err := r.commitTxn(ctx, name, c, ops, checks); err != nil {
		// A commit that Consul refused left the head as it was: its chunks go. One whose answer
		// was lost may have been applied, and its chunks be the segment's now: they stay, and
		// are deleted as abandoned later if the head does not name them.
		var unknown *commitUnknownError
		if !errors.As(err, &unknown) {
			r.dropGeneration(ctx, name, gen)
		}
		return nil, err
	}
	res.Abandoned = len(abandoned)
	return res, nil
}

// commitTxn runs a commit, whose first operation is the check-and-set on the head. checks holds
// the indexes of the operations that check a chunk written before.
func (r *Registrar) commitTxn(ctx context.Context, name string, c segmentChange, ops api.TxnOps, checks map[int]bool) error {
	refused, err := r.segmentTxn(ctx, name, c.action, ops)
	if err != nil || len(refused) == 0 {
		return err
	}
	var msgs []string
	for _, e := range refused {
		if e.OpIndex == 0 {
			if c.action == SegmentCreate {
				exists := &SegmentExistsError{Segment: name}
				if cur, err := r.readSegment(ctx, name, c.action, true); err == nil && cur.head != nil {
					exists.Existing = infoOf(cur.head, cur.index)
				}
				return exists
			}
			return &SegmentConflictError{Segment: name, Action: c.action}
		}
		if checks[e.OpIndex] {
			return fmt.Errorf("registrar: %s on segment %s not applied: a chunk it had written changed before its commit "+
				"(another change took it for abandoned: are the clocks of the hosts that change segments over %v apart?); "+
				"nothing of this change was kept; run it again", c.action, name, abandonedAfter)
		}
		msgs = append(msgs, e.What)
	}
	return fmt.Errorf("registrar: %s on segment %s: transaction refused: %s; nothing was changed", c.action, name, strings.Join(msgs, "; "))
}

// commitUnknownError reports a transaction whose outcome is not known: Consul's answer did not
// arrive (a lost connection, a context that ended), so it may have been applied.
type commitUnknownError struct{ err error }

func (e *commitUnknownError) Error() string { return e.err.Error() }

func (e *commitUnknownError) Unwrap() error { return e.err }

// segmentTxn runs a transaction. It returns the operations Consul refused (none: it was applied);
// a refusal for the token is a *SegmentPermissionError, and a transaction that may or may not have
// been applied a *commitUnknownError.
func (r *Registrar) segmentTxn(ctx context.Context, name, action string, ops api.TxnOps) ([]*api.TxnError, error) {
	ok, resp, _, err := r.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if consulclient.IsPermissionDenied(err) {
			return nil, &SegmentPermissionError{Segment: name, Action: action, Err: consulclient.Redact(err, r.cfg.Token)}
		}
		// No answer, or one that is no transaction's result (a 500 may come from a raft apply
		// that timed out and happens later): whether it was applied is not known.
		return nil, &commitUnknownError{r.wrap(err, "writing segment %s (%s), which may or may not have been applied; "+
			"graylane segment show %s tells", name, action, name)}
	}
	if ok {
		return nil, nil
	}
	if resp == nil || len(resp.Errors) == 0 {
		return nil, fmt.Errorf("registrar: %s on segment %s: transaction refused without a reason", action, name)
	}
	for _, e := range resp.Errors {
		if strings.Contains(e.What, "Permission denied") || strings.Contains(e.What, "ACL not found") {
			missing := []string{}
			if e.OpIndex >= 0 && e.OpIndex < len(ops) && ops[e.OpIndex].KV != nil {
				missing = append(missing, "key write on "+ops[e.OpIndex].KV.Key)
			}
			return nil, &SegmentPermissionError{Segment: name, Action: action, Missing: missing, Err: errors.New(e.What)}
		}
	}
	return resp.Errors, nil
}

// writeChunks writes the chunks of a new generation, each in a transaction of its own, a few at a
// time, and returns the ModifyIndex of each.
func (r *Registrar) writeChunks(ctx context.Context, name, action, gen string, chunks [][]byte) ([]uint64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	indexes := make([]uint64, len(chunks))
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		first   error
		next    = make(chan int)
		workers = min(chunkWriters, len(chunks))
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				key := record.SegmentChunkKey(r.prefix, name, gen, i)
				ok, resp, _, err := r.client.Txn().Txn(api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: chunks[i]}}},
					(&api.QueryOptions{}).WithContext(ctx))
				switch {
				case err != nil && consulclient.IsPermissionDenied(err):
					err = &SegmentPermissionError{Segment: name, Action: action, Missing: []string{"key write on " + key}, Err: consulclient.Redact(err, r.cfg.Token)}
				case err != nil:
					err = r.wrap(err, "writing chunk %d of segment %s", i, name)
				case !ok:
					what := "refused without a reason"
					if resp != nil && len(resp.Errors) > 0 {
						what = resp.Errors[0].What
					}
					if strings.Contains(what, "Permission denied") || strings.Contains(what, "ACL not found") {
						err = &SegmentPermissionError{Segment: name, Action: action, Missing: []string{"key write on " + key}, Err: errors.New(what)}
					} else {
						err = fmt.Errorf("registrar: writing chunk %d of segment %s: %s", i, name, what)
					}
				case resp == nil || len(resp.Results) == 0 || resp.Results[0].KV == nil:
					err = fmt.Errorf("registrar: writing chunk %d of segment %s: Consul did not return the key's index", i, name)
				default:
					indexes[i] = resp.Results[0].KV.ModifyIndex
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
feed:
	for i := range chunks {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return indexes, first
}

// dropGeneration deletes a generation no head names (a change that failed), even when ctx ended.
// If that fails too, the next change deletes it once it is older than abandonedAfter.
func (r *Registrar) dropGeneration(ctx context.Context, name, gen string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, _ = r.client.KV().DeleteTree(record.SegmentGenerationFolder(r.prefix, name, gen), (&api.WriteOptions{}).WithContext(ctx))
}

// newGeneration names a new generation: the time in 16 hex digits, so that generations sort by
// age, and a random part.
func newGeneration(now time.Time) string {
	return fmt.Sprintf("%016x-%08x", uint64(now.UnixNano()), rand.Uint32())
}

// generationTime reads the time in a generation's name.
func generationTime(gen string) (time.Time, bool) {
	if len(gen) < 16 {
		return time.Time{}, false
	}
	n, err := strconv.ParseUint(gen[:16], 16, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, int64(n)), true
}

// authorizeSegment asks Consul whether the token may change the segment: write its folder and its
// history. Without ACLs everything is allowed. A check that cannot be made is not an error: the
// change then fails where Consul refuses it, before anything is visible.
func (r *Registrar) authorizeSegment(ctx context.Context, name, action string) error {
	refused, missing := r.askACL(ctx, []aclRequest{
		{Resource: "key", Segment: record.SegmentFolder(r.prefix, name), Access: "write"},
		{Resource: "key", Segment: record.SegmentHistoryFolder(r.prefix, name), Access: "write"},
	})
	if refused != nil || len(missing) > 0 {
		return &SegmentPermissionError{Segment: name, Action: action, Missing: missing, Err: refused}
	}
	return nil
}
