package main

// graylane segment: user segments, the named sets of values (user IDs, tenant IDs) that a match
// rule names with in_segment and a lane excludes with exclude_segment.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// segmentOpts holds the flags of graylane segment.
type segmentOpts struct {
	description optionalString
	create      bool
}

// optionalString is a string flag that knows whether it was given.
type optionalString struct {
	value string
	set   bool
}

func (s *optionalString) String() string { return s.value }
func (s *optionalString) Set(v string) error {
	s.value, s.set = v, true
	return nil
}
func (s *optionalString) Type() string { return "string" }

// segmentShown is how many values and history entries segment show prints.
const (
	segmentShownValues  = 20
	segmentShownChanges = 5
)

func segmentFileFlag(fs *pflag.FlagSet, o *opts) {
	fs.StringVarP(&o.file, "file", "f", "", "`file` of values, one a line; blank lines and lines starting with # are skipped; - reads stdin")
	// Any file: the flag's completion is not the spec files' *.yaml.
	_ = fs.SetAnnotation("file", cobra.BashCompFilenameExt, []string{})
}

func segmentDescriptionFlag(fs *pflag.FlagSet, o *opts) {
	fs.Var(&o.segment.description, "description", "what the segment holds, one line of `text`")
}

func segmentCreateFlags(fs *pflag.FlagSet, o *opts) {
	segmentDescriptionFlag(fs, o)
	segmentFileFlag(fs, o)
}

func segmentImportFlags(fs *pflag.FlagSet, o *opts) {
	segmentFileFlag(fs, o)
	segmentDescriptionFlag(fs, o)
	fs.BoolVar(&o.segment.create, "create", false, "create the segment when it does not exist")
}

// segmentCommand is graylane segment and its actions.
func segmentCommand() *command {
	c := &command{name: "segment", summary: "named sets of user or tenant IDs that match rules (in_segment) and lane exclusions (exclude_segment) name",
		long: "A segment holds up to 100,000 values of up to 256 bytes. Every change is recorded with check-and-set\n" +
			"and a history entry, and reaches the data planes whole or not at all.",
		group: groupChange, maxargs: -1,
		example: `  graylane segment create beta-testers --description 'users who try things first' u1001 u1002
  graylane segment import beta-testers -f beta-testers.txt
  graylane segment add beta-testers u1003
  graylane segment list
  graylane segment export beta-testers > beta-testers.txt`,
		subs: []*command{
			{name: "create", args: "NAME [VALUE...]", nargs: 1, maxargs: -1, summary: "create a segment, with the values given and those of a file",
				flags: segmentCreateFlags, uses: changesState, run: runSegmentCreate,
				example: `  graylane segment create beta-testers --description 'users who try things first'
  graylane segment create beta-testers u1001 u1002 u1003
  graylane segment create tenants-eu -f tenants-eu.txt --description 'EU tenants'`},
			{name: "add", args: "NAME [VALUE...]", nargs: 1, maxargs: -1, summary: "add values to a segment (values it holds already are left as they are)",
				flags: segmentFileFlag, uses: changesState, run: runSegmentAdd,
				example: `  graylane segment add beta-testers u1004 u1005
  graylane segment add beta-testers -f new-testers.txt
  cut -d, -f1 signups.csv | graylane segment add beta-testers -f -`},
			{name: "remove", args: "NAME [VALUE...]", nargs: 1, maxargs: -1, summary: "remove values from a segment (values it does not hold are ignored)",
				flags: segmentFileFlag, uses: changesState, run: runSegmentRemove,
				example: `  graylane segment remove beta-testers u1004
  graylane segment remove beta-testers -f left.txt`},
			{name: "import", args: "NAME", nargs: 1, summary: "replace a segment's values with those of a file",
				long: "The file holds one value a line; blank lines and lines starting with # are skipped. A change made\n" +
					"by someone else since the segment was read makes the import fail, and nothing of it is kept.",
				flags: segmentImportFlags, uses: changesState, run: runSegmentImport,
				example: `  graylane segment import beta-testers -f beta-testers.txt
  graylane segment import tenants-eu -f tenants-eu.txt --create --description 'EU tenants'
  sort -u new-ids.txt | graylane segment import beta-testers -f -`},
			{name: "export", args: "NAME", nargs: 1, summary: "print a segment's values, one a line, sorted (what import reads)",
				uses: readsState, run: runSegmentExport,
				example: `  graylane segment export beta-testers > beta-testers.txt
  graylane segment export beta-testers --consul staging:8500 | graylane segment import beta-testers --create -f -`},
			{name: "list", summary: "every segment: its size, last change and description",
				flags: outputFlags, uses: readsState, run: runSegmentList,
				example: `  graylane segment list
  graylane segment list -o json`},
			{name: "show", args: "NAME", nargs: 1, summary: "a segment: its description, size, first values and recent changes",
				flags: outputFlags, uses: readsState, run: runSegmentShow,
				example: `  graylane segment show beta-testers
  graylane segment show beta-testers -o json`},
			{name: "history", args: "NAME", nargs: 1, summary: "the recorded changes of a segment: who, when, how many values, which",
				flags: outputFlags, uses: readsState, run: runSegmentHistory,
				example: `  graylane segment history beta-testers
  graylane segment history beta-testers -o json`},
			{name: "delete", args: "NAME", nargs: 1, summary: "delete a segment: rules that name it then match nobody, lanes that exclude it take tagged traffic only",
				uses: changesState, run: runSegmentDelete,
				example: `  graylane segment delete beta-testers`},
		},
	}
	c.run = func(_ context.Context, _ *env, args []string) error {
		if len(args) == 0 {
			return &usageError{"expected an action: " + c.actions()}
		}
		return &usageError{fmt.Sprintf("segment action %q: use %s", args[0], c.actions())}
	}
	return c
}

// segmentName checks the NAME argument.
func segmentName(args []string) (string, error) {
	if err := gray.ValidateSegmentName(args[0]); err != nil {
		return "", &usageError{"NAME: " + err.Error()}
	}
	return args[0], nil
}

// segmentValues are the values of a command line, each with where it came from.
type segmentValues struct {
	values []string
	where  []string // "argument 2", "beta.txt line 7"
}

// readSegmentValues gathers the VALUE arguments and the values of -f: a bad value is an error that
// names its argument or line, and what is wrong with it.
func readSegmentValues(e *env, args []string) (*segmentValues, error) {
	sv := &segmentValues{}
	for i, a := range args {
		if err := registrar.ValidateSegmentValue(a); err != nil {
			return nil, &usageError{fmt.Sprintf("VALUE argument %d: %v", i+1, err)}
		}
		sv.values = append(sv.values, a)
		sv.where = append(sv.where, fmt.Sprintf("argument %d", i+1))
	}
	if e.o.file == "" {
		return sv, nil
	}
	name, in := e.o.file, io.Reader(os.Stdin)
	if name == "-" {
		name = "stdin"
	} else {
		f, err := os.Open(e.o.file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		in = f
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var bad []string
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if line == 1 {
			text = bytes.TrimPrefix(text, []byte("\xef\xbb\xbf")) // a byte order mark
		}
		v := strings.TrimSpace(string(text))
		if v == "" || v[0] == '#' {
			continue
		}
		if err := registrar.ValidateSegmentValue(v); err != nil {
			bad = append(bad, fmt.Sprintf("%s line %d: %v", name, line, err))
			continue
		}
		sv.values = append(sv.values, v)
		sv.where = append(sv.where, fmt.Sprintf("%s line %d", name, line))
		if len(sv.values) > 10*gray.MaxSegmentValues {
			return nil, fmt.Errorf("%s: more than %d values; a segment holds at most %d", name, 10*gray.MaxSegmentValues, gray.MaxSegmentValues)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s line %d: longer than 1 MiB; a value has at most %d bytes", name, line+1, gray.MaxSegmentValueLength)
		}
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	switch len(bad) {
	case 0:
	case 1:
		return nil, errors.New(bad[0])
	default:
		return nil, fmt.Errorf("%s (and %d more bad lines); nothing was changed", bad[0], len(bad)-1)
	}
	return sv, nil
}

// segmentError names where a value the registrar refused came from.
func (sv *segmentValues) segmentError(err error) error {
	var bad *registrar.SegmentValueError
	if errors.As(err, &bad) && bad.Position >= 1 && bad.Position <= len(sv.where) {
		return fmt.Errorf("%s: %s", sv.where[bad.Position-1], bad.Problem)
	}
	return err
}

// counts is a change's counts: " (+3 -1)".
func counts(res *registrar.SegmentResult) string {
	var parts []string
	if res.Added > 0 {
		parts = append(parts, fmt.Sprintf("+%d", res.Added))
	}
	if res.Removed > 0 {
		parts = append(parts, fmt.Sprintf("-%d", res.Removed))
	}
	switch {
	case len(parts) > 0:
		return " (" + strings.Join(parts, " ") + ")"
	case res.Action == registrar.SegmentCreate:
		return ""
	}
	return " (values unchanged, description changed)"
}

// printSegmentResult says in one line what a change did.
func printSegmentResult(e *env, res *registrar.SegmentResult, unchanged string) {
	if res.Unchanged {
		fmt.Fprintf(e.stdout, "segment %s: %d values, nothing to change (%s), nothing recorded\n", res.Segment, res.After, unchanged)
		return
	}
	what := ""
	if res.Action == registrar.SegmentCreate {
		what = " created"
	}
	line := fmt.Sprintf("segment %s%s: %d values%s, written in %s", res.Segment, what, res.After, counts(res), res.Written())
	if res.Retries > 0 {
		line += fmt.Sprintf(", made again on the newer values after %d concurrent change(s)", res.Retries)
	}
	if res.Abandoned > 0 {
		line += fmt.Sprintf("; deleted %d generation(s) a killed change had left", res.Abandoned)
	}
	fmt.Fprintln(e.stdout, line)
}

func runSegmentCreate(ctx context.Context, e *env, args []string) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	sv, err := readSegmentValues(e, args[1:])
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	res, err := r.CreateSegment(ctx, name, e.o.segment.description.value, sv.values)
	if err != nil {
		return sv.segmentError(err)
	}
	printSegmentResult(e, res, "")
	return nil
}

func runSegmentAdd(ctx context.Context, e *env, args []string) error {
	return segmentAddRemove(ctx, e, args, true)
}

func runSegmentRemove(ctx context.Context, e *env, args []string) error {
	return segmentAddRemove(ctx, e, args, false)
}

func segmentAddRemove(ctx context.Context, e *env, args []string, add bool) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	if len(args) == 1 && e.o.file == "" {
		return &usageError{"expected values: VALUE arguments, or -f FILE"}
	}
	sv, err := readSegmentValues(e, args[1:])
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	var res *registrar.SegmentResult
	unchanged := "it holds every value given already"
	if add {
		res, err = r.AddToSegment(ctx, name, sv.values)
	} else {
		res, err = r.RemoveFromSegment(ctx, name, sv.values)
		unchanged = "it holds none of the values given"
	}
	if err != nil {
		return segmentNotFoundHint(sv.segmentError(err), name, "graylane segment create "+name+" makes it")
	}
	printSegmentResult(e, res, unchanged)
	return nil
}

// segmentNotFoundHint adds what to do to an error that the segment does not exist.
func segmentNotFoundHint(err error, name, hint string) error {
	if errors.Is(err, registrar.ErrSegmentNotFound) {
		return fmt.Errorf("%w (%s)", err, hint)
	}
	return err
}

func runSegmentImport(ctx context.Context, e *env, args []string) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	if e.o.file == "" {
		return &usageError{"-f FILE is required (- reads stdin)"}
	}
	sv, err := readSegmentValues(e, nil)
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	opts := registrar.ImportOptions{Create: e.o.segment.create}
	if e.o.segment.description.set {
		opts.Description = &e.o.segment.description.value
	}
	res, err := r.ImportSegment(ctx, name, sv.values, opts)
	if err != nil {
		return segmentNotFoundHint(sv.segmentError(err), name, "--create creates it")
	}
	printSegmentResult(e, res, "it holds exactly these values")
	return nil
}

func runSegmentExport(ctx context.Context, e *env, args []string) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	_, values, err := r.Segment(ctx, name)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(e.stdout)
	for _, v := range values {
		w.WriteString(v)
		w.WriteByte('\n')
	}
	return w.Flush()
}

func runSegmentList(ctx context.Context, e *env, _ []string) error {
	r, err := e.registrar()
	if err != nil {
		return err
	}
	list, err := r.Segments(ctx)
	if err != nil {
		return err
	}
	if e.asJSON() {
		return e.writeJSON(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(e.stdout, "no segments (graylane segment create NAME makes one)")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCOUNT\tUPDATED\tWHO\tDESCRIPTION")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", s.Name, s.Count, s.Updated.Local().Format(time.DateTime), truncate(s.Who, 24), truncate(orDash(s.Description), 60))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// readSegmentHistory reads a segment's history: the readable entries, with the unreadable ones
// named on stderr.
func readSegmentHistory(ctx context.Context, e *env, r *registrar.Registrar, name string) ([]registrar.SegmentHistoryEntry, error) {
	hist, err := r.SegmentHistory(ctx, name)
	var bad *registrar.HistoryError
	if err != nil && !errors.As(err, &bad) {
		return nil, err
	}
	if bad != nil {
		fmt.Fprintf(e.stderr, "graylane: warning: %s\n", oneLine(bad))
	}
	if hist == nil {
		hist = []registrar.SegmentHistoryEntry{}
	}
	return hist, nil
}

func runSegmentShow(ctx context.Context, e *env, args []string) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	info, values, err := r.Segment(ctx, name)
	if err != nil {
		return err
	}
	hist, err := readSegmentHistory(ctx, e, r, name)
	if err != nil {
		return err
	}
	first := values[:min(len(values), segmentShownValues)]
	recent := hist[max(0, len(hist)-segmentShownChanges):]
	if e.asJSON() {
		return e.writeJSON(struct {
			*registrar.SegmentInfo
			FirstValues   []string                        `json:"first_values"`
			RecentChanges []registrar.SegmentHistoryEntry `json:"recent_changes"`
		}{info, append([]string{}, first...), recent})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "segment      %s\ndescription  %s\nvalues       %d\nupdated      %s by %s\n",
		info.Name, orDash(info.Description), info.Count, info.Updated.Local().Format(time.DateTime), info.Who)
	if len(values) > 0 {
		fmt.Fprintf(&b, "\nfirst values:\n")
		for _, v := range first {
			fmt.Fprintf(&b, "  %s\n", truncate(v, 120))
		}
		if more := len(values) - len(first); more > 0 {
			fmt.Fprintf(&b, "  ... %d more (graylane segment export %s prints them all)\n", more, name)
		}
	}
	if len(recent) > 0 {
		fmt.Fprintf(&b, "\nrecent changes:\n")
		writeSegmentHistory(&b, "  ", recent)
	}
	return writeCut(e.stdout, b.String())
}

// writeSegmentHistory writes history entries, one a line, each after indent.
func writeSegmentHistory(b *strings.Builder, indent string, hist []registrar.SegmentHistoryEntry) {
	for _, h := range hist {
		fmt.Fprintf(b, "%s%s  %s  %-6s  %d -> %d", indent, h.Time.Local().Format(time.DateTime), truncate(h.Who, 24), h.Action, h.Before, h.After)
		if h.Added > 0 {
			fmt.Fprintf(b, "  +%d: %s", h.Added, sample(h.AddedSample, h.Added))
		}
		if h.Removed > 0 {
			fmt.Fprintf(b, "  -%d: %s", h.Removed, sample(h.RemovedSample, h.Removed))
		}
		if h.DescriptionBefore != h.DescriptionAfter {
			fmt.Fprintf(b, "  description %q", truncate(h.DescriptionAfter, 60))
		}
		b.WriteByte('\n')
	}
}

// sample shows the first values of a sample, and how many more there were.
func sample(values []string, n int) string {
	const shown = 3
	var parts []string
	for _, v := range values[:min(len(values), shown)] {
		parts = append(parts, truncate(v, 40))
	}
	s := strings.Join(parts, ",")
	if n > len(parts) {
		s += fmt.Sprintf(",... (%d more)", n-len(parts))
	}
	return s
}

func runSegmentHistory(ctx context.Context, e *env, args []string) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	hist, err := readSegmentHistory(ctx, e, r, name)
	if err != nil {
		return err
	}
	if e.asJSON() {
		return e.writeJSON(hist)
	}
	if len(hist) == 0 {
		return fmt.Errorf("%w: segment %s has no recorded change", registrar.ErrNotFound, name)
	}
	var b strings.Builder
	writeSegmentHistory(&b, "", hist)
	return writeCut(e.stdout, b.String())
}

func runSegmentDelete(ctx context.Context, e *env, args []string) error {
	name, err := segmentName(args)
	if err != nil {
		return err
	}
	r, err := e.registrar()
	if err != nil {
		return err
	}
	res, err := r.DeleteSegment(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "segment %s deleted (%d values); match rules that name it now match no request, and lanes that exclude it take tagged requests only, until it exists again\n",
		name, res.Before)
	return nil
}
