package record

// Segments in KV.
//
// A segment NAME lives under PREFIX/segments/NAME/:
//
//	head                 JSON SegmentHead: the description, and which generation holds the values
//	gen/GEN/0000, 0001…  the values of generation GEN, one per line, sorted, each chunk at most
//	                     ChunkBytes long (Consul keeps a value to 512 kB)
//
// A change writes a whole new generation, then switches the head to it with check-and-set and
// deletes the old generation, in one transaction when the values are small enough, else after
// writing the chunks in transactions of their own. A reader lists the folder (one blocking query)
// and takes the chunks of the generation the head names: a change in progress, or one a killed
// process left half-written, is never seen. The history of a segment lives outside that folder,
// under PREFIX/segment-history/NAME/, so that watching a segment never reads its history.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
)

// ChunkBytes is the most bytes of values one chunk key holds. A transaction carries its values in
// base64, and Consul refuses a transaction over 512 kB (txn_max_req_len): a chunk of 256 kB and
// its key fit in one with room to spare.
const ChunkBytes = 256 << 10

// SegmentHead is a segment's head key: what it is and where its values are.
type SegmentHead struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Generation names the folder gen/GEN that holds the values.
	Generation string `json:"generation"`
	// Chunks is how many chunk keys the generation has (0 for an empty segment).
	Chunks int `json:"chunks"`
	// Count is how many values the segment holds.
	Count   int       `json:"count"`
	Updated time.Time `json:"updated"`
	Who     string    `json:"who,omitempty"`
}

// SegmentsFolder returns the KV folder that holds every segment.
func SegmentsFolder(prefix string) string { return prefix + "/segments/" }

// SegmentFolder returns the KV folder of one segment: its head and its generations.
func SegmentFolder(prefix, name string) string { return SegmentsFolder(prefix) + name + "/" }

// SegmentHeadKey returns the key of a segment's head.
func SegmentHeadKey(prefix, name string) string { return SegmentFolder(prefix, name) + "head" }

// SegmentGenerationFolder returns the folder of one generation of a segment's values.
func SegmentGenerationFolder(prefix, name, gen string) string {
	return SegmentFolder(prefix, name) + "gen/" + gen + "/"
}

// SegmentChunkKey returns the key of chunk i of a generation.
func SegmentChunkKey(prefix, name, gen string, i int) string {
	return fmt.Sprintf("%s%04d", SegmentGenerationFolder(prefix, name, gen), i)
}

// SegmentHistoryFolder returns the KV folder of a segment's history.
func SegmentHistoryFolder(prefix, name string) string {
	return prefix + "/segment-history/" + name + "/"
}

// Chunks cuts sorted values into chunk bodies of at most ChunkBytes, one value per line.
func Chunks(values []string) [][]byte {
	var out [][]byte
	var cur []byte
	for _, v := range values {
		if len(cur) > 0 && len(cur)+len(v)+1 > ChunkBytes {
			out = append(out, cur)
			cur = nil
		}
		cur = append(cur, v...)
		cur = append(cur, '\n')
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// ValidSegmentValue reports what is wrong with a segment value, or nil: a value is 1 to
// gray.MaxSegmentValueLength bytes of printable text without line breaks (the chunks hold one
// value per line).
func ValidSegmentValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("an empty value")
	case len(v) > gray.MaxSegmentValueLength:
		return fmt.Errorf("value %.40q… has %d bytes; a value has at most %d", v, len(v), gray.MaxSegmentValueLength)
	case strings.ContainsAny(v, "\r\n\x00"):
		return fmt.Errorf("value %q holds a line break or NUL", v)
	}
	return nil
}

// SegmentError says why a segment's keys in KV do not make a segment.
type SegmentError struct {
	Segment string
	Problem string
}

func (e *SegmentError) Error() string {
	return fmt.Sprintf("segment %q in Consul KV: %s", e.Segment, e.Problem)
}

// DecodeSegment builds a segment from the keys of its folder, as one List of SegmentFolder returns
// them. It returns a nil segment and head, and no error, when the folder has no head (the segment
// does not exist). Chunks of other generations (a change in progress or abandoned) are ignored; a
// missing chunk of the head's generation, or a head that does not decode, is an error.
func DecodeSegment(prefix, name string, pairs api.KVPairs) (*gray.Segment, *SegmentHead, error) {
	values, head, err := SegmentValues(prefix, name, pairs)
	if head == nil || err != nil {
		return nil, nil, err
	}
	seg, err := gray.NewSegment(name, values)
	if err != nil {
		return nil, nil, &SegmentError{Segment: name, Problem: err.Error()}
	}
	return seg, head, nil
}

// SegmentValues reads the values of a segment, in the order its chunks hold them (sorted, as a
// writer stores them), and its head, from the keys of its folder, as DecodeSegment does. It
// returns nil values and head, and no error, when the folder has no head.
func SegmentValues(prefix, name string, pairs api.KVPairs) ([]string, *SegmentHead, error) {
	headKey := SegmentHeadKey(prefix, name)
	var head *SegmentHead
	for _, p := range pairs {
		if p.Key == headKey {
			head = new(SegmentHead)
			if err := json.Unmarshal(p.Value, head); err != nil {
				return nil, nil, &SegmentError{Segment: name, Problem: fmt.Sprintf("head %s: %v", headKey, err)}
			}
			break
		}
	}
	if head == nil {
		return nil, nil, nil
	}
	if head.Chunks < 0 || head.Generation == "" && head.Chunks > 0 || strings.Contains(head.Generation, "/") {
		return nil, nil, &SegmentError{Segment: name, Problem: fmt.Sprintf("head %s names generation %q with %d chunks", headKey, head.Generation, head.Chunks)}
	}
	chunks := make([][]byte, head.Chunks)
	genFolder := SegmentGenerationFolder(prefix, name, head.Generation)
	for _, p := range pairs {
		rest, ok := strings.CutPrefix(p.Key, genFolder)
		if !ok {
			continue
		}
		var i int
		if _, err := fmt.Sscanf(rest, "%04d", &i); err != nil || i < 0 || i >= len(chunks) || fmt.Sprintf("%04d", i) != rest {
			return nil, nil, &SegmentError{Segment: name, Problem: fmt.Sprintf("unexpected key %s", p.Key)}
		}
		chunks[i] = p.Value
	}
	values := make([]string, 0, head.Count)
	for i, c := range chunks {
		if c == nil {
			return nil, nil, &SegmentError{Segment: name, Problem: fmt.Sprintf("chunk %s is missing", SegmentChunkKey(prefix, name, head.Generation, i))}
		}
		for line := range strings.SplitSeq(strings.TrimSuffix(string(c), "\n"), "\n") {
			if line != "" {
				values = append(values, line)
			}
		}
	}
	if len(values) != head.Count {
		return nil, nil, &SegmentError{Segment: name, Problem: fmt.Sprintf("head says %d values, chunks hold %d", head.Count, len(values))}
	}
	return values, head, nil
}

// SortedValues returns the distinct values, sorted, as a generation stores them.
func SortedValues(values []string) []string {
	out := slices.Clone(values)
	slices.Sort(out)
	return slices.Compact(out)
}
