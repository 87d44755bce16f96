package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/graylane/graylane/internal/consultest"
)

// runArgs runs the command in-process with exactly args and returns stdout, stderr and the exit code.
func runArgs(args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// TestOldFlagSpellings: the spellings of the standard flag package reach pflag as the flags they
// named; values and what follows "--" are left alone.
func TestOldFlagSpellings(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"weight bservice canary 5 -who ops", "weight bservice canary 5 --who ops"},
		{"weight -who=ops bservice canary 5 -dry-run", "weight --who=ops bservice canary 5 --dry-run"},
		{"status bservice -kv-prefix x -consul 127.0.0.1:8500", "status bservice --kv-prefix x --consul 127.0.0.1:8500"},
		{"status bservice -o json", "status bservice -o json"},
		{"status bservice -ojson", "status bservice -ojson"},
		{"status bservice --o json", "status bservice -o json"},
		{"status bservice -output=json", "status bservice --output=json"},
		{"apply --f spec.yaml", "apply -f spec.yaml"},
		{"apply -f -who", "apply -f -who"},
		{"explain bservice -H -who --path -kv-prefix -lane canary", "explain bservice -H -who --path -kv-prefix --lane canary"},
		{"explain bservice -H userid=1 -H x=2", "explain bservice -H userid=1 -H x=2"},
		{"weight bservice canary -- -who", "weight bservice canary -- -who"},
		{"weight bservice canary -5", "weight bservice canary -5"},
		{"weight -help", "weight --help"},
		{"rollout -who ops start bservice -steps 5:1m", "rollout --who ops start bservice --steps 5:1m"},
		{"rollout lint bservice -notify-test -f plan.yaml", "rollout lint bservice --notify-test -f plan.yaml"},
		{"apisix route -service bservice -uri /api/*", "apisix route --service bservice --uri /api/*"},
		{"portal -read-only -no-sign-in -listen :8089", "portal --read-only --no-sign-in --listen :8089"},
	} {
		args := strings.Fields(tc.in)
		before := slices.Clone(args)
		got, err := resolve(newRoot(io.Discard, io.Discard), args)
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %q, %v; want %s", tc.in, got, err, tc.want)
		}
		if !slices.Equal(args, before) {
			t.Errorf("%s: the arguments were modified: %q", tc.in, args)
		}
	}
}

// TestOldFlagSpellingsRun: a release made with single-dash long flags, interleaved with the
// arguments, records the operator given with -who.
func TestOldFlagSpellingsRun(t *testing.T) {
	a := consultest.Start(t)
	if _, errOut, code := runArgs("apply", "-consul", a.HTTPAddr, "-f", "../../registrar/testdata/bservice.yaml", "-who", "alice"); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, errOut)
	}
	if out, errOut, code := runArgs("weight", "bservice", "-consul="+a.HTTPAddr, "canary", "5", "-dry-run"); code != 0 || !strings.Contains(out, "would change") {
		t.Fatalf("weight -dry-run: exit %d: %s%s", code, out, errOut)
	}
	if _, errOut, code := runArgs("weight", "bservice", "canary", "5", "-who", "bob", "-kv-prefix", "graylane", "-consul", a.HTTPAddr); code != 0 {
		t.Fatalf("weight: exit %d: %s", code, errOut)
	}
	out, errOut, code := runArgs("history", "-consul", a.HTTPAddr, "bservice", "-o=json")
	var hist []struct{ Who, Action string }
	if code != 0 || json.Unmarshal([]byte(out), &hist) != nil {
		t.Fatalf("history: exit %d: %s%s", code, out, errOut)
	}
	if len(hist) != 2 || hist[0].Who != "alice" || hist[1].Who != "bob" || hist[1].Action != "weight canary 5" {
		t.Fatalf("history: %+v", hist)
	}
	out, errOut, code = runArgs("explain", "bservice", "-consul", a.HTTPAddr, "-H", "userid: 123", "-cookie", "email=li@some-company-name.com",
		"-path", "/api/user/1", "--output", "json")
	if code != 0 || !strings.Contains(out, `"lane": "canary"`) {
		t.Fatalf("explain: exit %d: %s%s", code, out, errOut)
	}
}

// TestUsageErrorsExitTwo: every mistake in how graylane is called exits 2 with one line naming it
// and one pointing to --help, and prints nothing on stdout.
func TestUsageErrorsExitTwo(t *testing.T) {
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"status", "bservice", "--nope"}, "unknown flag: --nope"},
		{[]string{"status", "bservice", "-x"}, `unknown shorthand flag: 'x' in -x`},
		{[]string{"weight", "bservice", "canary", "5", "--who"}, "flag needs an argument: --who"},
		{[]string{"explain", "bservice", "-H"}, "flag needs an argument: -H"},
		{[]string{"rollout", "start", "bservice", "--max-error-ratio", "abc"}, `invalid argument "abc"`},
		{[]string{"apisix", "sync", "--resync", "often"}, `invalid argument "often"`},
		{[]string{"weight", "bservice", "canary", "--dry-run=maybe"}, `invalid argument "maybe"`},
		{[]string{"rollout"}, "expected an action: start, lint, status"},
		{[]string{"rollout", "strat", "bservice"}, `rollout action "strat"`},
		{[]string{"rollout", "status"}, "expected SERVICE [LANE]"},
		{[]string{"rollout", "pause", "bservice", "canary", "now"}, `unexpected argument "now"`},
		{[]string{"rollout", "controller", "bservice"}, "takes no service"},
		{[]string{"apisix"}, "expected an action: sync, route"},
		{[]string{"apisix", "frob"}, `unknown apisix command "frob"`},
		{[]string{"apisix", "route", "a", "b"}, `unexpected argument "b"`},
		{[]string{"version", "now"}, `unexpected argument "now"; graylane version takes no arguments`},
		{[]string{"portal", "extra"}, `unexpected argument "extra"`},
		{[]string{"completion"}, "expected a shell"},
		{[]string{"completion", "tcsh"}, `unknown command "tcsh"`},
		{[]string{"completion", "bash", "extra"}, `unknown command "extra"`},
	} {
		out, errOut, code := runArgs(tc.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code != 2 || !strings.Contains(lines[0], tc.says) || len(lines) != 2 || !strings.Contains(lines[1], "--help") || out != "" {
			t.Errorf("graylane %q: exit %d, stdout %q, stderr %q; want exit 2 saying %q", tc.args, code, out, errOut, tc.says)
		}
	}
	if _, errOut, code := runArgs("wieght", "bservice"); code != 2 ||
		errOut != "graylane: unknown command \"wieght\" (did you mean weight?); run graylane --help\n" {
		t.Errorf("a misspelt command: exit %d, %q", code, errOut)
	}
	out, _, code := runArgs()
	if code != 2 || !strings.Contains(out, "Change a release:") {
		t.Errorf("graylane alone: exit %d, %q", code, out)
	}
}

// commandTree returns every visible command under root, root included.
func commandTree(root *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if !c.Hidden {
			out = append(out, commandTree(c)...)
		}
	}
	return out
}

// shellWords splits an example line as sh would, up to a comment or a redirection.
func shellWords(line string) []string {
	var words []string
	var w strings.Builder
	inWord, quote := false, byte(0)
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quote != 0 && ch == quote:
			quote = 0
		case quote != 0:
			w.WriteByte(ch)
		case ch == '\'' || ch == '"':
			quote, inWord = ch, true
		case ch == ' ' || ch == '\t':
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
		case !inWord && (ch == '#' || ch == '>' || ch == '|'):
			return words
		default:
			w.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// TestHelpOfEveryCommand: every command's help has examples, and every example is a command line
// of that command that parses: its flags exist, its arguments are as many as it takes, and the
// repository files it names exist.
func TestHelpOfEveryCommand(t *testing.T) {
	for _, c := range commandTree(newRoot(io.Discard, io.Discard)) {
		path := c.CommandPath()
		out, errOut, code := runArgs(append(strings.Fields(path)[1:], "--help")...)
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Examples:\n  ") {
			t.Errorf("%s --help: exit %d, no usage or examples:\n%s%s", path, code, out, errOut)
		}
		n := 0
		for line := range strings.SplitSeq(c.Example, "\n") {
			words := shellWords(strings.TrimSpace(line))
			if len(words) == 0 || words[0] != "graylane" {
				continue
			}
			n++
			root := newRoot(io.Discard, io.Discard)
			args, err := resolve(root, words[1:])
			if err != nil {
				t.Errorf("%s: example %q: %v", path, line, err)
				continue
			}
			cmd, rest, _ := root.Find(args)
			if cmd.CommandPath() != path && !strings.HasPrefix(cmd.CommandPath(), path+" ") {
				t.Errorf("%s: example %q runs %s", path, line, cmd.CommandPath())
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: example %q: %v", path, line, err)
				continue
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("%s: example %q: %v", path, line, err)
			}
			if f := cmd.Flags().Lookup("file"); f != nil && strings.HasPrefix(f.Value.String(), "examples/") {
				if _, err := os.Stat(filepath.Join("../..", f.Value.String())); err != nil {
					t.Errorf("%s: example %q: %v", path, line, err)
				}
			}
		}
		if n == 0 && c.Name() != "completion" {
			t.Errorf("%s: no example is a graylane command line:\n%s", path, c.Example)
		}
	}
}

// TestHelpShowsFlagsWhereTheyMeanSomething: --who only where a change is recorded under it, the
// Consul flags only where Consul is asked; each is still accepted everywhere.
func TestHelpShowsFlagsWhereTheyMeanSomething(t *testing.T) {
	for _, tc := range []struct {
		command string
		shown   []string
		hidden  []string
	}{
		{"weight", []string{"--who", "--consul", "--kv-prefix", "--dry-run", "--force"}, []string{"--output"}},
		{"apply", []string{"--who", "-f, --file", "-o, --output", "--reset-gray"}, nil},
		{"options", []string{"--who", "--clear", "--dry-run"}, []string{"--force"}},
		{"status", []string{"--consul", "--kv-prefix", "-o, --output"}, []string{"--who", "--dry-run"}},
		{"history", []string{"--consul", "-o, --output"}, []string{"--who"}},
		{"explain", []string{"-H, --header", "--cookie", "--key"}, []string{"--who"}},
		{"reconcile", []string{"--consul"}, []string{"--who"}},
		{"rollout start", []string{"--who", "--wait", "--steps", "-f, --file"}, []string{"--listen", "--notify-test", "--output"}},
		{"rollout lint", []string{"--notify-test", "--steps"}, []string{"--who", "--consul", "--kv-prefix", "--wait"}},
		{"rollout status", []string{"--consul", "-o, --output"}, []string{"--who", "--steps", "--listen"}},
		{"rollout pause", []string{"--who"}, []string{"--steps", "--output"}},
		{"rollout controller", []string{"--listen", "--who", "--consul"}, []string{"--steps"}},
		{"apisix sync", []string{"--consul", "--kv-prefix", "--standalone", "--resync"}, []string{"--who", "--uri", "--apply"}},
		{"apisix route", []string{"--uri", "--apply", "--wait"}, []string{"--who", "--standalone", "--resync"}},
		{"portal", []string{"--consul", "--passwords"}, []string{"--who"}},
		{"version", nil, []string{"--consul", "--who", "--kv-prefix"}},
	} {
		out, _, _ := runArgs(append(strings.Fields(tc.command), "--help")...)
		for _, f := range tc.shown {
			if !strings.Contains(out, "  "+f+" ") {
				t.Errorf("graylane %s --help does not show %s:\n%s", tc.command, f, out)
			}
		}
		for _, f := range tc.hidden {
			if strings.Contains(out, f+" ") {
				t.Errorf("graylane %s --help shows %s:\n%s", tc.command, f, out)
			}
		}
	}
	out, _, _ := runArgs("--help")
	groups := []string{"Change a release:", "Look:", "Automate:", "Gateway and portal:", "apply", "status", "rollout", "portal"}
	last := -1
	for _, g := range groups[:4] {
		i := strings.Index(out, "\n"+g+"\n")
		if i < last {
			t.Fatalf("graylane --help: group %q missing or out of order:\n%s", g, out)
		}
		last = i
	}
	for i, name := range groups[4:] {
		if !strings.Contains(out[strings.Index(out, groups[i]):], "\n  "+name+" ") {
			t.Errorf("graylane --help: %s is not under %s:\n%s", name, groups[i], out)
		}
	}
}

// TestShellCompletionInProcess: cobra's completion requests reach the command tree.
func TestShellCompletionInProcess(t *testing.T) {
	out, errOut, code := runArgs(cobra.ShellCompRequestCmd, "rollout", "")
	if code != 0 || !strings.Contains(out, "start\t") || !strings.Contains(out, "controller\t") {
		t.Fatalf("completion of rollout: exit %d: %s%s", code, out, errOut)
	}
	out, _, _ = runArgs(cobra.ShellCompRequestCmd, "status", "bservice", "--")
	if !strings.Contains(out, "--output") || strings.Contains(out, "--who") {
		t.Fatalf("completion of status flags: %s", out)
	}
}

// TestBuiltBinary builds graylane as go install would, and checks that version names the module and
// what it was built from, and that bash loads its completion script.
func TestBuiltBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "graylane")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("graylane version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "module    github.com/graylane/graylane\n") ||
		!regexp.MustCompile(`(?m)^revision  [0-9a-f]{40}$|^graylane  \(devel\)$`).Match(out) {
		t.Fatalf("graylane version names neither the module and a revision nor (devel):\n%s", out)
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is needed to load the completion script: %v", err)
	}
	out, err = exec.Command(bash, "-c", "source <('"+bin+"' completion bash) && complete -p graylane").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "__start_graylane graylane") {
		t.Fatalf("bash does not load the completion script: %v\n%s", err, out)
	}
}
