package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/graylane/graylane/internal/consultest"
)

// writeFile writes a file in the test's temporary folder and returns its path.
func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSegmentCommands: a segment made, changed, exported, imported, listed, shown and deleted
// through the command; every change says in one line what it did.
func TestSegmentCommands(t *testing.T) {
	a := consultest.Start(t)
	if out := mustRun(t, a, "segment", "list"); !strings.Contains(out, "no segments") {
		t.Fatalf("list with no segment: %q", out)
	}
	out := mustRun(t, a, "segment", "create", "beta-testers", "--description", "users who try things first", "u1", "u2")
	if out != "segment beta-testers created: 2 values (+2), written in one transaction\n" {
		t.Fatalf("create: %q", out)
	}
	users := writeFile(t, "users.txt", "\xef\xbb\xbf# beta testers\r\nu2\r\n\r\n  u3  \nu4\n# the end\n")
	if out := mustRun(t, a, "segment", "import", "beta-testers", "-f", users); out != "segment beta-testers: 3 values (+2 -1), written in one transaction\n" {
		t.Fatalf("import: %q", out)
	}
	if out := mustRun(t, a, "segment", "add", "beta-testers", "u5", "u2"); out != "segment beta-testers: 4 values (+1), written in one transaction\n" {
		t.Fatalf("add: %q", out)
	}
	if out := mustRun(t, a, "segment", "add", "beta-testers", "u5"); !strings.Contains(out, "nothing to change (it holds every value given already), nothing recorded") {
		t.Fatalf("add of a value it holds: %q", out)
	}
	if out := mustRun(t, a, "segment", "remove", "beta-testers", "u5", "u9"); out != "segment beta-testers: 3 values (-1), written in one transaction\n" {
		t.Fatalf("remove: %q", out)
	}
	if out := mustRun(t, a, "segment", "create", "nobody-yet"); out != "segment nobody-yet created: 0 values, written in one transaction\n" {
		t.Fatalf("create of an empty segment: %q", out)
	}
	if out := mustRun(t, a, "segment", "import", "nobody-yet", "-f", writeFile(t, "empty.txt", "# nobody\n"), "--description", "still nobody"); out != "segment nobody-yet: 0 values (values unchanged, description changed), written in one transaction\n" {
		t.Fatalf("import of a new description: %q", out)
	}
	if out := mustRun(t, a, "segment", "export", "nobody-yet"); out != "" {
		t.Fatalf("export of an empty segment: %q", out)
	}
	mustRun(t, a, "segment", "delete", "nobody-yet")
	if out := mustRun(t, a, "segment", "export", "beta-testers"); out != "u2\nu3\nu4\n" {
		t.Fatalf("export: %q", out)
	}

	// 100,000 values through a file: chunk transactions and one commit; export | import round-trips.
	var big strings.Builder
	for i := range 100_000 {
		fmt.Fprintf(&big, "u%010d\n", i)
	}
	everyone := writeFile(t, "everyone.txt", big.String())
	out = mustRun(t, a, "segment", "import", "everyone", "-f", everyone, "--create", "--description", "all of them")
	if out != "segment everyone: 100000 values (+100000), written in 5 chunk transactions and one commit\n" {
		t.Fatalf("import of 100,000 values: %q", out)
	}
	exported := mustRun(t, a, "segment", "export", "everyone")
	if exported != big.String() {
		t.Fatalf("export of 100,000 values: %d bytes, want %d", len(exported), big.Len())
	}
	stdin, err := os.Open(writeFile(t, "exported.txt", exported))
	if err != nil {
		t.Fatal(err)
	}
	defer func(old *os.File) { os.Stdin = old }(os.Stdin)
	os.Stdin = stdin
	if out := mustRun(t, a, "segment", "import", "copy", "-f", "-", "--create"); !strings.HasPrefix(out, "segment copy: 100000 values (+100000)") {
		t.Fatalf("import from stdin: %q", out)
	}
	stdin.Close()
	if mustRun(t, a, "segment", "export", "copy") != exported {
		t.Fatal("export | import does not round-trip")
	}

	out = mustRun(t, a, "segment", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "COUNT") || !strings.Contains(lines[0], "DESCRIPTION") ||
		!strings.HasPrefix(lines[1], "beta-testers") || !strings.Contains(lines[1], " 3 ") || !strings.Contains(lines[1], "ops") ||
		!strings.Contains(lines[1], "users who try things first") || !strings.HasPrefix(lines[3], "everyone") || !strings.Contains(lines[3], "100000") {
		t.Fatalf("list:\n%s", out)
	}
	var list []struct {
		Name  string
		Count int
		Who   string
	}
	if err := json.Unmarshal([]byte(mustRun(t, a, "segment", "list", "-o", "json")), &list); err != nil || len(list) != 3 || list[2].Count != 100_000 {
		t.Fatalf("list -o json: %+v, %v", list, err)
	}

	out = mustRun(t, a, "segment", "show", "everyone")
	for _, want := range []string{"segment      everyone\n", "description  all of them\n", "values       100000\n", "by ops\n",
		"first values:\n  u0000000000\n", "  u0000000019\n  ... 99980 more (graylane segment export everyone prints them all)\n",
		"recent changes:\n", "ops  import  0 -> 100000  +100000: u0000000000,u0000000001,u0000000002,... (99997 more)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("show does not say %q:\n%s", want, out)
		}
	}
	var show struct {
		Name          string
		Count         int
		FirstValues   []string `json:"first_values"`
		RecentChanges []struct {
			Action string
			After  int
		} `json:"recent_changes"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, a, "segment", "show", "everyone", "-o", "json")), &show); err != nil ||
		show.Count != 100_000 || len(show.FirstValues) != 20 || len(show.RecentChanges) != 1 || show.RecentChanges[0].After != 100_000 {
		t.Fatalf("show -o json: %+v, %v", show, err)
	}

	out = mustRun(t, a, "segment", "history", "beta-testers")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 || !strings.Contains(lines[0], "create  0 -> 2  +2: u1,u2  description") ||
		!strings.Contains(lines[1], "import  2 -> 3  +2: u3,u4  -1: u1") || !strings.Contains(lines[3], "remove  4 -> 3  -1: u5") {
		t.Fatalf("history:\n%s", out)
	}
	var hist []struct{ Action, Who string }
	if err := json.Unmarshal([]byte(mustRun(t, a, "segment", "history", "beta-testers", "-o", "json")), &hist); err != nil || len(hist) != 4 || hist[0].Who != "ops" {
		t.Fatalf("history -o json: %+v, %v", hist, err)
	}

	out = mustRun(t, a, "segment", "delete", "beta-testers")
	if !strings.HasPrefix(out, "segment beta-testers deleted (3 values); match rules that name it now match no request, and lanes that exclude it take tagged requests only") {
		t.Fatalf("delete: %q", out)
	}
	if _, errOut, code := graylane(t, a, "segment", "show", "beta-testers"); code != 1 || !strings.Contains(errOut, "segment beta-testers does not exist") {
		t.Fatalf("show of a deleted segment: exit %d, %q", code, errOut)
	}
	if out := mustRun(t, a, "segment", "history", "beta-testers"); !strings.Contains(out, "delete  3 -> 0") {
		t.Fatalf("the history of a deleted segment:\n%s", out)
	}
}

// TestSegmentCommandErrors: a bad line of a file is named by its number, a bad argument by its
// place; each failure is one line, exits 1 or 2, and changes nothing.
func TestSegmentCommandErrors(t *testing.T) {
	a := consultest.Start(t)
	mustRun(t, a, "segment", "create", "beta", "u1")
	bad := writeFile(t, "bad.txt", "u2\n# a comment\n\nu3\nu\x014\nu5\n")
	twoBad := writeFile(t, "two-bad.txt", "u2\n"+strings.Repeat("x", 300)+"\nu\x01\n")
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"segment", "import", "beta", "-f", bad}, 1, `bad.txt line 5: value "u\x014" holds a control character`},
		{[]string{"segment", "add", "beta", "-f", twoBad}, 1, "two-bad.txt line 2: value \"xxxx"},
		{[]string{"segment", "add", "beta", "-f", twoBad}, 1, "has 300 bytes; a value has at most 256 (and 1 more bad lines); nothing was changed"},
		{[]string{"segment", "add", "beta", "u6", " u7"}, 2, `VALUE argument 2: value " u7" begins or ends with white space`},
		{[]string{"segment", "add", "beta"}, 2, "expected values: VALUE arguments, or -f FILE"},
		{[]string{"segment", "import", "beta"}, 2, "-f FILE is required"},
		{[]string{"segment", "create", "Beta"}, 2, `NAME: segment name "Beta": a segment name starts with a lower-case letter or a digit`},
		{[]string{"segment", "create", "beta"}, 1, "segment beta exists already (1 values"},
		{[]string{"segment", "add", "gamma", "u1"}, 1, "segment gamma does not exist (graylane segment create gamma makes it)"},
		{[]string{"segment", "import", "gamma", "-f", writeFile(t, "ok.txt", "u1\n")}, 1, "segment gamma does not exist (--create creates it)"},
		{[]string{"segment", "import", "beta", "-f", "no-such-file.txt"}, 1, "no-such-file.txt: no such file"},
		{[]string{"segment"}, 2, "expected an action: create, add, remove, import, export, list, show, history, delete"},
		{[]string{"segment", "rename", "beta"}, 2, `segment action "rename"`},
		{[]string{"segment", "export"}, 2, "expected NAME"},
		{[]string{"segment", "create", "beta", "--description", "two\nlines"}, 1, "is not one line of text"},
	} {
		out, errOut, code := graylane(t, a, tc.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code != tc.code || !strings.Contains(lines[0], tc.says) || out != "" {
			t.Errorf("graylane %q: exit %d, stdout %q, stderr %q; want exit %d saying %q", tc.args, code, out, errOut, tc.code, tc.says)
		}
		if tc.code == 2 && (len(lines) != 2 || !strings.Contains(lines[1], "--help")) {
			t.Errorf("graylane %q: a usage error must point to --help: %q", tc.args, errOut)
		}
	}
	if out := mustRun(t, a, "segment", "export", "beta"); out != "u1\n" {
		t.Fatalf("refused commands changed the segment: %q", out)
	}
	var hist []json.RawMessage
	if err := json.Unmarshal([]byte(mustRun(t, a, "segment", "history", "beta", "-o", "json")), &hist); err != nil || len(hist) != 1 {
		t.Fatalf("refused commands wrote history: %d entries, %v", len(hist), err)
	}
}

// TestExplainNamesTheSegment: status shows a lane's exclusion, and explain names the segment that
// decided, whether a rule found the user in it or the lane's exclusion kept the user out; a segment
// that does not exist is a problem, and its rule matches nothing.
func TestExplainNamesTheSegment(t *testing.T) {
	a := consultest.Start(t)
	spec := writeFile(t, "checkout.yaml", `
- {name: checkout, id: checkout-1, address: 127.0.0.1, port: 9001}
- name: checkout
  id: checkout-canary-1
  address: 127.0.0.1
  port: 9002
  meta:
    canary: true
    weight: 100
    exclude_segment: key-accounts
    match:
      - header:
          - key: x-user-id
            in_segment: beta-testers
      - cookie: {name: tenant, in_segment: tenants}
`)
	mustRun(t, a, "apply", "-f", spec)
	mustRun(t, a, "options", "checkout", "--sticky-header", "x-user-id")
	mustRun(t, a, "segment", "create", "beta-testers", "u1", "u2")
	mustRun(t, a, "segment", "create", "key-accounts", "k1", "u2")

	status := mustRun(t, a, "status", "checkout")
	for _, want := range []string{"excludes key-accounts", `segment "tenants", which does not exist`} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
	for _, c := range []struct{ args, lane, reason string }{
		{"-H x-user-id=u1", "canary", "match (rule 1): the value is in segment beta-testers"},
		{"-H x-user-id=u2", "stable", "excluded: kept out of lane canary, whose exclude_segment key-accounts holds the user"},
		{"-H x-user-id=k1", "stable", "excluded: kept out of lane canary, whose exclude_segment key-accounts holds the user"},
		{"-H x-user-id=nobody", "canary", "weight"},
	} {
		out := mustRun(t, a, append([]string{"explain", "checkout"}, strings.Fields(c.args)...)...)
		if !strings.Contains(out, "lane       "+c.lane+"\n") || !strings.Contains(out, "reason     "+c.reason+"\n") {
			t.Errorf("explain %s: want lane %s, reason %q:\n%s", c.args, c.lane, c.reason, out)
		}
	}
}
