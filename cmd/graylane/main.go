// Command graylane runs gray releases on Consul: it registers instances with gray meta, changes
// weights and match rules, promotes, rolls back and drains, shows the traffic shares that result,
// and explains how the data planes route a given request.
//
//	graylane apply -f spec.yaml
//	graylane status bservice
//	graylane weight bservice canary 5
//	graylane promote bservice canary
//	graylane rollback bservice green
//	graylane drain bservice-canary-1
//	graylane history bservice
//	graylane options bservice --sticky-header userid
//	graylane reconcile bservice
//	graylane explain bservice -H 'userid: 123' --path /api/user
//	graylane segment import beta-testers -f beta-testers.txt
//	graylane rollout start bservice canary -f plan.yaml
//	graylane apisix sync bservice
//	graylane portal --passwords portal.passwords
//
// The commands are cobra commands, grouped in graylane --help; graylane COMMAND --help shows a
// command's arguments, the flags that mean something to it, and examples. Flags may come before,
// between or after the arguments, and the old single-dash spellings of long flags (-who ops,
// -kv-prefix=x) still work. graylane version prints the build's module version and VCS revision;
// graylane completion bash|zsh|fish|powershell prints a shell completion script.
//
// Exit status: 0 when the command did what it was asked, 1 when it failed, 2 for a usage error (an
// unknown command or flag, a wrong number of arguments, a bad flag or argument value).
//
// The Consul agent, token and TLS settings come from the standard CONSUL_* environment (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...) or --consul.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/graylane/graylane/internal/consulclient"
	"github.com/graylane/graylane/registrar"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func init() {
	// graylane --help lists the commands in the order of a release, not alphabetically.
	cobra.EnableCommandSorting = false
}

// opts holds the flags of one command of one run; the command registers the ones it takes.
type opts struct {
	consul, who, prefix, output string
	file                        string
	resetGray, dryRun, keep     bool
	force                       bool
	service                     string
	grace, timeout              string
	headers                     []string
	cookie, path, query, method string
	ip, lane, key               string
	stickyHeader, stickyCookie  string
	tagKey                      string
	fallback                    string
	undoTo                      string
	none                        bool
	untilIdle, idleTimeout      string
	idleQuery                   string
	rollout                     rolloutOpts
	apisix                      apisixOpts
	portal                      portalOpts
	segment                     segmentOpts
}

// env is what a running command has: its options and its output.
type env struct {
	o      *opts
	stdout io.Writer
	stderr io.Writer
}

// usageError is a mistake in how the command was called: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// run runs graylane with args (without the program name) and returns the exit status: 0, 1 for a
// command that failed, 2 for a usage error. It builds its own command tree, so concurrent runs share
// nothing.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	if len(args) == 0 {
		_ = root.Help()
		return 2
	}
	if args[0] != cobra.ShellCompRequestCmd && args[0] != cobra.ShellCompNoDescRequestCmd {
		var err error
		if args, err = resolve(root, args); err != nil {
			fmt.Fprintf(stderr, "graylane: %s; run graylane --help\n", err)
			return 2
		}
	}
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	name := strings.TrimPrefix(cmd.CommandPath(), root.Name()+" ")
	fmt.Fprintf(stderr, "graylane %s: %s\n", name, oneLine(err))
	consul := ""
	if f := cmd.Flags().Lookup("consul"); f != nil {
		consul = f.Value.String()
	}
	if hint := consulHint(err, registrar.NewConfig(consul).Address); hint != "" {
		fmt.Fprintln(stderr, hint)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "run %s --help for usage\n", cmd.CommandPath())
		return 2
	}
	return 1
}

// resolve finds the command args name and returns args with the old spellings of its flags
// rewritten (see longFlagSpellings); an unknown command is an error. The command is looked up again
// after a rewrite: cobra skips a flag's value while it looks for subcommand names, and it knows a
// flag only in the spelling it was given.
func resolve(root *cobra.Command, args []string) ([]string, error) {
	var last *cobra.Command
	for range 3 {
		cmd, _, err := root.Find(args)
		if err != nil {
			return nil, unknownCommand(root, args)
		}
		if cmd == last {
			break
		}
		last = cmd
		cmd.InitDefaultHelpFlag()
		args = longFlagSpellings(cmd.Flags(), args)
	}
	return args, nil
}

// unknownCommand names the first word of args that is no flag, the command cobra did not find, with
// the commands it may be a misspelling of.
func unknownCommand(root *cobra.Command, args []string) error {
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			continue
		}
		if s := root.SuggestionsFor(a); len(s) > 0 {
			return fmt.Errorf("unknown command %q (did you mean %s?)", a, strings.Join(s, " or "))
		}
		return fmt.Errorf("unknown command %q", a)
	}
	return errors.New("no command given")
}

// flagError words a flag parse error for the one-line report: a missing value names the flag as it
// was typed (-f, --file), as the standard flag package did.
func flagError(_ *cobra.Command, err error) error {
	var need *pflag.ValueRequiredError
	if errors.As(err, &need) {
		dashes := "--"
		if need.GetSpecifiedShortnames() != "" {
			dashes = "-"
		}
		return &usageError{"flag needs an argument: " + dashes + need.GetSpecifiedName()}
	}
	return &usageError{err.Error()}
}

// checkArgs refuses too few or too many positional arguments, and empty or malformed SERVICE, LANE
// and INSTANCE arguments, before anything asks Consul about them.
func (c *command) checkArgs(_ *cobra.Command, args []string) error {
	expected := "expected " + c.args
	if c.args == "" {
		expected = "graylane " + c.name + " takes no arguments"
	}
	if len(args) < c.nargs {
		return &usageError{expected}
	}
	if most := max(c.nargs, c.maxargs); c.maxargs >= 0 && len(args) > most {
		return &usageError{fmt.Sprintf("unexpected argument %q; %s", args[most], expected)}
	}
	names := strings.Fields(c.args)
	for i, arg := range args {
		if i >= len(names) {
			break
		}
		what := strings.Trim(names[i], "[]")
		if what != "SERVICE" && what != "LANE" && what != "INSTANCE" {
			continue
		}
		if arg == "" || strings.ContainsAny(arg, "/?#% \t\n") {
			return &usageError{fmt.Sprintf("%s %q: give a %s name (no spaces or /?#%%)", what, arg, strings.ToLower(what))}
		}
		if len(arg) > registrar.MaxNameLength {
			return &usageError{fmt.Sprintf("%s %q...: %d characters, at most %d", what, arg[:20], len(arg), registrar.MaxNameLength)}
		}
	}
	return nil
}

// check refuses flag values that are wrong for every command that takes the flag.
func (o *opts) check() error {
	if strings.Trim(o.prefix, "/") == "" {
		return &usageError{fmt.Sprintf("--kv-prefix %q: name a KV folder, such as graylane", o.prefix)}
	}
	if o.output != "" && o.output != "table" && o.output != "json" {
		return &usageError{fmt.Sprintf("-o %q: use table or json", o.output)}
	}
	return nil
}

// oneLine joins a multi-line error (several problems in a spec file) into one line.
func oneLine(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	var b strings.Builder
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if i > 0 && b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(l)
	}
	return b.String()
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// dialedConsul reports whether a failed dial was to the Consul agent at addr, and not to another
// server a command talks to (a Prometheus, a webhook). Without a port to compare, it assumes so.
func dialedConsul(op *net.OpError, addr string) bool {
	if op.Addr == nil {
		return true
	}
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
	}
	_, want, err1 := net.SplitHostPort(addr)
	_, got, err2 := net.SplitHostPort(op.Addr.String())
	return err1 != nil || err2 != nil || want == got
}

// consulHint says what to check when an error came from not reaching Consul at addr, or from
// something at addr that is not Consul; "" for any other error.
func consulHint(err error, addr string) string {
	var syntax *json.SyntaxError
	var op *net.OpError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("hint: what answers at %s is not Consul's HTTP API (its answer is not JSON); point --consul or CONSUL_HTTP_ADDR at the agent (usually port 8500)", addr)
	case consulclient.IsConnLimit(err):
		return fmt.Sprintf("hint: the Consul agent at %s refuses more connections from this address (its limits.http_max_conns_per_client, "+
			"default 200): processes on this host that follow many services hold them; raise the limit in the agent's configuration", addr)
	case errors.As(err, &op) && op.Op == "dial" && dialedConsul(op, addr):
		return fmt.Sprintf("hint: no Consul agent answers at %s; start one, or point --consul or CONSUL_HTTP_ADDR at yours", addr)
	}
	return ""
}
