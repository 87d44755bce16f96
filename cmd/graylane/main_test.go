package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/promtest"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/rollout"
)

// graylane runs the command in-process against the agent and returns stdout, stderr and the exit code.
func graylane(t *testing.T, a *consultest.Agent, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	full := append([]string{args[0], "--consul", a.HTTPAddr, "--who", "ops"}, args[1:]...)
	code := run(context.Background(), full, &out, &errOut)
	return out.String(), errOut.String(), code
}

func mustRun(t *testing.T, a *consultest.Agent, args ...string) string {
	t.Helper()
	out, errOut, code := graylane(t, a, args...)
	if code != 0 {
		t.Fatalf("graylane %v: exit %d: %s%s", args, code, errOut, out)
	}
	return out
}

func TestReleaseThroughTheCommand(t *testing.T) {
	a := consultest.Start(t)
	out := mustRun(t, a, "apply", "-f", "../../registrar/testdata/bservice.yaml")
	if !strings.Contains(out, "bservice-canary-1  canary") {
		t.Fatalf("apply:\n%s", out)
	}
	mustRun(t, a, "rollback", "bservice", "canary")
	mustRun(t, a, "weight", "bservice", "canary", "5%")

	var status struct {
		Lanes []struct {
			Name, Weight, Share string
			Base                bool
		}
		Instances []struct{ ID, Health, Lane string }
	}
	if err := json.Unmarshal([]byte(mustRun(t, a, "status", "bservice", "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	shares := map[string]string{}
	for _, l := range status.Lanes {
		shares[l.Name] = l.Share
	}
	if shares["canary"] != "5" || shares["stable"] != "95" || len(status.Instances) != 3 {
		t.Fatalf("status: %+v", status)
	}

	var explain struct {
		Lane, Reason string
		Rule         int
		Instances    []struct{ ID string }
	}
	out = mustRun(t, a, "explain", "bservice", "-H", "UserID: 123", "--cookie", "email=li@some-company-name.com", "--path", "/api/user/1", "-o", "json")
	if err := json.Unmarshal([]byte(out), &explain); err != nil {
		t.Fatal(err)
	}
	if explain.Lane != "canary" || explain.Reason != "match" || explain.Rule != 1 || explain.Instances[0].ID != "bservice-canary-1" {
		t.Fatalf("explain matched: %s", out)
	}
	out = mustRun(t, a, "explain", "bservice", "--key", "user-2") // bucket 4705: outside 5 %
	if !strings.Contains(out, "lane       stable") || !strings.Contains(out, "bucket     4705") {
		t.Fatalf("explain by key:\n%s", out)
	}
	out = mustRun(t, a, "explain", "bservice", "--lane", "canary")
	if !strings.Contains(out, "reason     tag") {
		t.Fatalf("explain with a lane tag:\n%s", out)
	}
	out = mustRun(t, a, "explain", "bservice", "-H", "x-env=green") // no sticky key: a random bucket, and it says so
	if !strings.Contains(out, "bucket     random: the request has no sticky key") {
		t.Fatalf("explain without a sticky key:\n%s", out)
	}
	if out = mustRun(t, a, "explain", "bservice", "-H", "userid=123", "--cookie", "email=li@some-company-name.com", "--path", "/api/user/1"); !strings.Contains(out, "reason     match") || strings.Contains(out, "random") {
		t.Fatalf("explain with -H name=value:\n%s", out)
	}

	out = mustRun(t, a, "promote", "bservice", "canary", "--dry-run")
	if !strings.Contains(out, "would change bservice-canary-1") {
		t.Fatalf("dry run:\n%s", out)
	}
	mustRun(t, a, "promote", "bservice", "canary")
	out = mustRun(t, a, "drain", "bservice-1", "--grace", "10ms")
	if !strings.Contains(out, "deregistered bservice-1 from bservice") {
		t.Fatalf("drain:\n%s", out)
	}

	var history []struct{ Who, Action string }
	if err := json.Unmarshal([]byte(mustRun(t, a, "history", "bservice", "-o", "json")), &history); err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, h := range history {
		if h.Who != "ops" {
			t.Fatalf("history entry by %q", h.Who)
		}
		actions = append(actions, h.Action)
	}
	want := "apply,rollback canary,weight canary 5,promote canary,drain bservice-1,deregister bservice-1"
	if strings.Join(actions, ",") != want {
		t.Fatalf("history %v, want %s", actions, want)
	}
	if out := mustRun(t, a, "history", "bservice"); !strings.Contains(out, "promote canary") {
		t.Fatalf("history table:\n%s", out)
	}
}

// TestErrorsAreOneLine: failures print one line naming the problem and exit non-zero; a bad spec
// registers nothing.
func TestErrorsAreOneLine(t *testing.T) {
	a := consultest.Start(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("- {name: ok, id: ok-1}\n- {name: b, id: b-1, meta: {weight: 10%}}\n- {name: c, id: c-1, chek: {}}\n"), 0o644)
	cases := []struct {
		args []string
		code int
		says string
	}{
		{[]string{"apply", "-f", bad}, 1, `bad.yaml:2: instance b-1: meta: gray: meta key "weight"`},
		{[]string{"status", "nothing"}, 1, "service nothing has no instances"},
		{[]string{"weight", "bservice", "canary"}, 2, "expected SERVICE LANE PERCENT"},
		{[]string{"weight", "bservice", "canary", "abc"}, 2, `PERCENT: "abc" is not a percentage`},
		{[]string{"status", "x", "-o", "yaml"}, 2, `-o "yaml": use table or json`},
		{[]string{"explain", "x", "-H", "nocolon"}, 2, "write 'Name: value' or name=value"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
	}
	for _, c := range cases {
		_, errOut, code := graylane(t, a, c.args...)
		first := strings.SplitN(errOut, "\n", 2)[0]
		if code != c.code || !strings.Contains(first, c.says) {
			t.Errorf("graylane %v: exit %d, stderr %q; want exit %d saying %q", c.args, code, errOut, c.code, c.says)
		}
	}
	out, _, _ := graylane(t, a, "status", "ok")
	if strings.Contains(out, "ok-1") {
		t.Fatal("a spec file with errors registered some of its instances")
	}
	_, errOut, code := graylane(t, a, "apply", "-f", bad)
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "c-1: chek: unknown field") {
		t.Fatalf("several spec errors must share one line: %q", errOut)
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands() {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{c.name, "--help"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "Usage:\n  graylane "+c.name) {
			t.Errorf("%s --help: exit %d\n%s%s", c.name, code, out.String(), errOut.String())
		}
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "explain") {
		t.Errorf("--help: exit %d\n%s", code, out.String())
	}
}

// TestHostileInput: what a careless operator types gets a one-line error that names the problem,
// the right exit status, and changes nothing.
func TestHostileInput(t *testing.T) {
	a := consultest.Start(t)
	mustRun(t, a, "apply", "-f", "../../registrar/testdata/bservice.yaml")
	historyLen := func() int {
		var hist []json.RawMessage
		if err := json.Unmarshal([]byte(mustRun(t, a, "history", "bservice", "-o", "json")), &hist); err != nil {
			t.Fatal(err)
		}
		return len(hist)
	}
	before := historyLen()
	cases := []struct {
		args []string
		code int
		says string
	}{
		{[]string{"weight", "bservice", "canary", "5", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"promote", "bservice", "canary", "now"}, 2, `unexpected argument "now"`},
		{[]string{"drain", "bservice-1", "--grace", "-1s"}, 2, "must not be negative"},
		{[]string{"explain", "bservice", "-H", ": 123"}, 2, "write 'Name: value'"},
		{[]string{"status", ""}, 2, `SERVICE "": give a service name`},
		{[]string{"weight", "bservice", "can ary", "5"}, 2, `LANE "can ary"`},
		{[]string{"status", "bservice", "--kv-prefix", "/"}, 2, `--kv-prefix "/": name a KV folder`},
		{[]string{"apply", "-f"}, 2, "flag needs an argument: -f"},
		{[]string{"match", "bservice", "canary", "[]"}, 2, "use --none"},
		{[]string{"drain", "no-such-instance"}, 1, "no service has an instance no-such-instance"},
		{[]string{"options", "bservice", "--sticky-header", "user id"}, 2, "sticky_header"},
		{[]string{"options", "bservice", "--fallback", "anywhere"}, 2, "fallback"},
		{[]string{"options", "bservice", "--sticky-header", "x-md-global-gray-lane"}, 2, "is the lane tag's header"},
		{[]string{"status", strings.Repeat("a", 300)}, 2, "300 characters, at most 256"},
		{[]string{"reconcile", "no-such-service"}, 1, "service no-such-service has no instances"},
	}
	for _, c := range cases {
		out, errOut, code := graylane(t, a, c.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code != c.code || !strings.Contains(lines[0], c.says) {
			t.Errorf("graylane %q: exit %d, stderr %q; want exit %d saying %q", c.args, code, errOut, c.code, c.says)
		}
		if out != "" {
			t.Errorf("graylane %q failed but printed on stdout: %q", c.args, out)
		}
		if c.code == 2 && (len(lines) != 2 || !strings.Contains(lines[1], "--help")) {
			t.Errorf("graylane %q: a usage error must point to --help: %q", c.args, errOut)
		}
	}
	if n := historyLen(); n != before {
		t.Fatalf("refused commands wrote history: %d entries, then %d", before, n)
	}

	// A change to the state the service is in already records nothing.
	mustRun(t, a, "weight", "bservice", "canary", "7")
	n := historyLen()
	if out := mustRun(t, a, "weight", "bservice", "canary", "7"); !strings.Contains(out, "nothing to change") {
		t.Fatalf("no-op weight: %q", out)
	}
	if historyLen() != n {
		t.Fatal("a no-op change wrote history")
	}

	// status -o json never prints null meta; the table cuts long multi-byte rules on characters.
	out := mustRun(t, a, "match", "bservice", "canary", `{"header":{"key":"userid","value_match":"用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户用户"}}`)
	if !strings.Contains(out, `match before: [{"header":[{"key":"userid","value_match":"123"}]`) || !strings.Contains(out, `match after:  [{"header":[{"key":"userid","value_match":"用户`) {
		t.Fatalf("match does not show the rules before and after:\n%s", out)
	}
	for _, line := range strings.Split(mustRun(t, a, "history", "bservice"), "\n") {
		if n := utf8.RuneCountInString(line); n > 200 {
			t.Fatalf("a history row of %d columns:\n%s", n, line)
		}
	}
	if out := mustRun(t, a, "status", "bservice", "-o", "json"); strings.Contains(out, `"meta": null`) {
		t.Fatalf("status -o json: %s", out)
	}
	if out := mustRun(t, a, "status", "bservice"); !utf8.ValidString(out) || !strings.Contains(out, "...") {
		t.Fatalf("status is not valid UTF-8 or not cut:\n%s", out)
	}
}

// TestOptionsAndReconcileCommands: options are set once for the service, shown by status and used by
// explain; reconcile reports what it did.
func TestOptionsAndReconcileCommands(t *testing.T) {
	a := consultest.Start(t)
	mustRun(t, a, "apply", "-f", "../../registrar/testdata/bservice.yaml")
	if out := mustRun(t, a, "options", "bservice"); !strings.Contains(out, "no sticky key") {
		t.Fatalf("options before any were set: %q", out)
	}
	mustRun(t, a, "options", "bservice", "--sticky-header", "userid")
	if out := mustRun(t, a, "status", "bservice"); !strings.Contains(out, "options sticky header userid") || !strings.Contains(out, "fallback weighted") {
		t.Fatalf("status does not show the options:\n%s", out)
	}
	if out := mustRun(t, a, "history", "bservice"); !strings.Contains(out, "options sticky_header=userid") || !strings.Contains(out, "applied") {
		t.Fatalf("history:\n%s", out)
	}
	if out := mustRun(t, a, "reconcile", "bservice"); !strings.Contains(out, "nothing to reconcile") {
		t.Fatalf("reconcile of a service whose instances graylane never changed: %q", out)
	}
	mustRun(t, a, "weight", "bservice", "canary", "20")
	if out := mustRun(t, a, "reconcile", "bservice"); !strings.Contains(out, "0 rewritten, 1 in sync, 0 failed") {
		t.Fatalf("reconcile of a service in sync: %q", out)
	}
}

// TestConsulAddressMistakes: a command pointed at no Consul, at a web server that is not Consul, or
// at an address that accepts and never answers says so, naming the address, instead of a raw
// dial or JSON error or a hang.
func TestConsulAddressMistakes(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html>not consul</html>")
	}))
	defer web.Close()
	webAddr := strings.TrimPrefix(web.URL, "http://")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		addr, says string
	}{
		{webAddr, "what answers at " + webAddr + " is not Consul's HTTP API"},
		{closedAddr, "no Consul agent answers at " + closedAddr},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), []string{"status", "bservice", "--consul", tc.addr}, &out, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), tc.says) {
			t.Errorf("status with --consul %s: exit %d, %q; want it to say %q", tc.addr, code, errOut.String(), tc.says)
		}
	}
}

// TestManualChangeDuringARollout: a weight set by hand on the lane a rollout drives would be undone
// by the rollout's next step: it is refused, and with --force the rollout is paused first.
func TestManualChangeDuringARollout(t *testing.T) {
	a := consultest.Start(t)
	mustRun(t, a, "apply", "-f", "../../registrar/testdata/bservice.yaml")
	prom := promtest.Start(t)
	r, err := registrar.New(registrar.NewConfig(a.HTTPAddr), registrar.WithOperator("release-bot"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := rollout.ParsePlan([]byte(`
service: bservice
lane: canary
prometheus: ` + prom.URL + `
steps: [{weight: 5, hold: 1h}, {weight: 25, hold: 1h}]
gates: {min_requests: 100, error_ratio: {max: 0.01}}
`))
	if err != nil {
		t.Fatal(err)
	}
	x := rollout.New(r)
	if _, err := x.Start(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := graylane(t, a, "weight", "bservice", "canary", "60")
	if code != 1 || !strings.Contains(errOut, "driven by a rollout") || !strings.Contains(errOut, "--force") {
		t.Fatalf("weight during a rollout: exit %d, %q", code, errOut)
	}
	if _, errOut, code := graylane(t, a, "weight", "bservice", "stable", "100"); strings.Contains(errOut, "driven by a rollout") {
		t.Fatalf("a lane the rollout does not drive was refused: exit %d, %q", code, errOut)
	}
	// start again with another plan says what differs instead of resuming the recorded one.
	planFile := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(planFile, []byte("prometheus: "+prom.URL+"\nsteps: [{weight: 5, hold: 1h}, {weight: 25, hold: 1h}]\ngates: {min_requests: 100, error_ratio: {max: 0.01}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := graylane(t, a, "rollout", "start", "bservice", "canary", "-f", planFile, "--steps", "5:1h,50:1h", "--detach"); code != 1 ||
		!strings.Contains(errOut, "under way with another plan (steps") {
		t.Fatalf("start with other steps during a rollout: exit %d, %q", code, errOut)
	}
	if out := mustRun(t, a, "rollout", "start", "bservice", "canary", "-f", planFile, "--detach"); !strings.Contains(out, "resuming the rollout") {
		t.Fatalf("start with the recorded plan: %q", out)
	}
	out := mustRun(t, a, "weight", "bservice", "canary", "60", "--force")
	if !strings.Contains(out, "paused the rollout of bservice") {
		t.Fatalf("--force: %q", out)
	}
	if st, err := x.Get(context.Background(), "bservice"); err != nil || st.Status != rollout.StatusPaused {
		t.Fatalf("the rollout after --force: %+v, %v", st, err)
	}
}

// TestUndoOfAPromote: after promote, the canary instance is stable; undo puts its canary meta back
// exactly, as a new recorded change; undo with a time undoes that change.
func TestUndoOfAPromote(t *testing.T) {
	a := consultest.Start(t)
	mustRun(t, a, "apply", "-f", "../../registrar/testdata/bservice.yaml")
	mustRun(t, a, "weight", "bservice", "canary", "25")
	r, err := registrar.New(registrar.NewConfig(a.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	metaOf := func(id string) map[string]string {
		inst, _, err := r.Instances(context.Background(), "bservice")
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range inst {
			if i.ID == id {
				m, _ := i.Gray.Encode()
				return m
			}
		}
		t.Fatalf("no instance %s", id)
		return nil
	}
	before := metaOf("bservice-canary-1")
	mustRun(t, a, "promote", "bservice", "canary")
	if m := metaOf("bservice-canary-1"); len(m) != 0 {
		t.Fatalf("after promote: %v", m)
	}
	out := mustRun(t, a, "undo", "bservice")
	if !strings.Contains(out, "undo promote canary at ") {
		t.Fatalf("undo: %q", out)
	}
	if after := metaOf("bservice-canary-1"); !maps.Equal(after, before) {
		t.Fatalf("undo of the promote: %v, want %v", after, before)
	}
	if out := mustRun(t, a, "history", "bservice"); !strings.Contains(out, "undo promote canary") {
		t.Fatalf("the undo is not in the history:\n%s", out)
	}
	if _, errOut, code := graylane(t, a, "undo", "bservice", "--to", "1999-01-01 00:00:00"); code != 1 || !strings.Contains(errOut, "no change at") {
		t.Fatalf("undo of a time with no change: exit %d, %q", code, errOut)
	}
}

// TestRolloutLint: lint checks a plan without starting anything: a query Prometheus refuses is
// named, and --notify-test posts a test event to each notification and fails when one is refused,
// without naming the robot's token.
func TestRolloutLint(t *testing.T) {
	a := consultest.Start(t)
	prom := promtest.Start(t)
	var got []string
	var mu sync.Mutex
	robot := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, string(body))
		mu.Unlock()
		if r.URL.Query().Get("access_token") == "good" {
			io.WriteString(w, `{"errcode":0,"errmsg":"ok"}`)
			return
		}
		io.WriteString(w, `{"errcode":300001,"errmsg":"token is not exist"}`)
	}))
	defer robot.Close()
	dir := t.TempDir()
	write := func(name, text string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	base := "prometheus: " + prom.URL + "\nsteps:\n  - {weight: 5, hold: 1m}\n  - pause: {}\n  - {weight: 50, hold: 1m}\ngates: {error_ratio: {max: 0.01}}\n"
	good := write("good.yaml", base+"notify:\n  - {url: \""+robot.URL+"/robot/send?access_token=good\", format: dingtalk}\n")
	out := mustRun(t, a, "rollout", "lint", "bservice", "canary", "-f", good, "--notify-test")
	if !strings.Contains(out, "3 steps (5%/1m0s pause 50%/1m0s)") || !strings.Contains(out, "test event delivered") || strings.Contains(out, "access_token") {
		t.Fatalf("lint of a good plan: %q", out)
	}
	if len(got) != 1 || !strings.Contains(got[0], "a test from graylane rollout lint") {
		t.Fatalf("the robot received %q", got)
	}
	refused := write("refused.yaml", base+"notify:\n  - {url: \""+robot.URL+"/robot/send?access_token=bad-token\", format: dingtalk}\n")
	out, _, code := graylane(t, a, "rollout", "lint", "bservice", "canary", "-f", refused, "--notify-test")
	if code != 1 || !strings.Contains(out, "errcode 300001") || strings.Contains(out, "bad-token") {
		t.Fatalf("lint with a refused notification: exit %d, %q", code, out)
	}
	badQuery := write("bad.yaml", base+"queries: {errors: 'sum(rate(graylane_server_errors_total{lane=\"{{.Lane}}\"}[{{.Window}}]) by'}\n")
	if _, errOut, code := graylane(t, a, "rollout", "lint", "bservice", "canary", "-f", badQuery); code != 1 || !strings.Contains(errOut, "queries.errors") {
		t.Fatalf("lint with a query Prometheus refuses: exit %d, %q", code, errOut)
	}
	if _, errOut, code := graylane(t, a, "rollout", "controller", "bservice"); code != 2 || !strings.Contains(errOut, "takes no service") {
		t.Fatalf("rollout controller SERVICE: exit %d, %q", code, errOut)
	}
}

// TestPromoteSaysWhatItWillDo: promote names its effect for this service before it acts: with
// stable instances a colour becomes stable; in a pure blue/green service it goes live.
func TestPromoteSaysWhatItWillDo(t *testing.T) {
	a := consultest.Start(t)
	dir := t.TempDir()
	spec := filepath.Join(dir, "pay.yaml")
	if err := os.WriteFile(spec, []byte(`
- {name: pay, id: pay-blue-1, address: 127.0.0.1, port: 9101, meta: {bluegreen: blue}}
- {name: pay, id: pay-green-1, address: 127.0.0.1, port: 9102, meta: {bluegreen: green}}
- {name: shop, id: shop-1, address: 127.0.0.1, port: 9201}
- {name: shop, id: shop-green-1, address: 127.0.0.1, port: 9202, meta: {bluegreen: green}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, a, "apply", "-f", spec)
	out := mustRun(t, a, "promote", "pay", "green", "--dry-run")
	if !strings.HasPrefix(out, "promote green on pay: pay has only blue and green instances: green goes live (weight 100)") {
		t.Fatalf("promote of a colour in a blue/green service: %q", out)
	}
	out = mustRun(t, a, "promote", "shop", "green")
	first, _, _ := strings.Cut(out, "\n")
	if !strings.Contains(first, "shop's instances of lane green become stable") || !strings.Contains(out, "changed shop-green-1") ||
		strings.Index(out, "become stable") > strings.Index(out, "changed") {
		t.Fatalf("promote of a colour beside stable instances does not say first that it becomes stable: %q", out)
	}
}

// TestHintForAnAgentAtItsConnectionLimit: a command refused with 429 by an agent at its connection
// limit says which setting to raise, against a real agent whose limit the test process exceeds.
func TestHintForAnAgentAtItsConnectionLimit(t *testing.T) {
	a := consultest.StartWith(t, "-hcl", "limits { http_max_conns_per_client = 2 }")
	// The agent counts a connection when it takes it up and frees its slot when it sees it closed,
	// both a moment after the client: on a loaded machine the slots may not be held yet when the
	// command comes, or an earlier connection not yet freed. So: hold two connections that each had
	// a request answered (taken up and counted), then run the command; a try where the agent was
	// not full yet is made again.
	var last string
	for attempt := 1; attempt <= 20; attempt++ {
		var held []net.Conn
		full := true
		for range 2 {
			c, err := net.Dial("tcp", a.HTTPAddr)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
			fmt.Fprintf(c, "GET /v1/status/leader HTTP/1.1\r\nHost: %s\r\n\r\n", a.HTTPAddr)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				full = false // a slot still taken by an earlier connection
				break
			}
			resp.Body.Close()
		}
		if full {
			_, errOut, code := graylane(t, a, "status", "bservice")
			if code == 1 && strings.Contains(errOut, "limits.http_max_conns_per_client") {
				for _, c := range held {
					c.Close()
				}
				return
			}
			last = fmt.Sprintf("exit %d, %q", code, errOut)
		}
		for _, c := range held {
			c.Close()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("status against a full agent never named the limit in 20 tries; last: %s", last)
}
