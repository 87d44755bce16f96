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
//
// The Consul agent, token and TLS settings come from the standard CONSUL_* environment (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...) or --consul.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/graylane/graylane/registrar"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one subcommand.
type command struct {
	name    string
	args    string // the positional arguments, for the usage line
	summary string
	flags   func(fs *flag.FlagSet, o *opts)
	run     func(ctx context.Context, e *env, args []string) error
	nargs   int // required positional arguments
	maxargs int // the most positional arguments; nargs when 0
}

// opts holds every command's flags; each command registers the ones it takes.
type opts struct {
	consul, who, prefix, output string
	file                        string
	resetGray, dryRun, keep     bool
	force                       bool
	service                     string
	grace, timeout              string
	headers                     headerList
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

func commands() []*command {
	return []*command{
		{name: "apply", summary: "register or update the instances of a spec file", flags: applyFlags, run: runApply},
		{name: "status", args: "SERVICE", nargs: 1, summary: "lanes, instances, health, weights, rules, conflicts and traffic shares", flags: statusFlags, run: runStatus},
		{name: "weight", args: "SERVICE LANE PERCENT", nargs: 3, summary: "set a lane's share of unmatched traffic (0-100, two decimals)", flags: changeFlags, run: runWeight},
		{name: "match", args: "SERVICE LANE [RULES_JSON]", nargs: 2, maxargs: 3, summary: "set a lane's match rules (JSON, as in the match meta key), or remove them with --none", flags: matchFlags, run: runMatch},
		{name: "promote", args: "SERVICE LANE", nargs: 2, summary: "make a lane the base: in a blue/green service the colour goes live (weight 100); otherwise the lane's instances become stable (says which before it acts)", flags: changeFlags, run: runPromote},
		{name: "rollback", args: "SERVICE LANE", nargs: 2, summary: "send a lane back to matched test traffic only (weight 0)", flags: changeFlags, run: runRollback},
		{name: "drain", args: "INSTANCE", nargs: 1, summary: "stop new traffic to an instance, wait for clients to see it, deregister it", flags: drainFlags, run: runDrain},
		{name: "history", args: "SERVICE", nargs: 1, summary: "the recorded changes of a service: who, when, before, after", flags: outputFlags, run: runHistory},
		{name: "undo", args: "SERVICE", nargs: 1, summary: "put the instances a recorded change touched back as they were before it (the last change, or --to TIME)", flags: undoFlags, run: runUndo},
		{name: "options", args: "SERVICE", nargs: 1, summary: "show or set the decision options every data plane reads (sticky key, tag key, fallback)", flags: serviceOptionFlags, run: runOptions},
		{name: "reconcile", args: "SERVICE", nargs: 1, summary: "write the recorded gray state into every instance that drifted from it", run: runReconcile},
		{name: "rollout", args: "start|status|pause|resume|abort|promote-now SERVICE [LANE] | controller", nargs: 1, maxargs: 3, summary: "walk a lane through a plan's steps, gated on measured errors and latency; controller drives every rollout", flags: rolloutFlags, run: runRollout},
		{name: "explain", args: "SERVICE", nargs: 1, summary: "how the data planes route a request: lane, reason, instances", flags: explainFlags, run: runExplain},
		{name: "apisix", args: "sync|route [SERVICE...]", nargs: 1, maxargs: 64, summary: "keep APISIX lane upstreams in sync with Consul (sync), print or apply a service's route (route)", flags: apisixFlags, run: runAPISIX},
		{name: "portal", summary: "serve the release portal: a web page of every service's lanes, history and next step", flags: portalFlags, run: runPortal},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdout, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var cmd *command
	for _, c := range cmds {
		if c.name == args[0] {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "graylane: unknown command %q; run graylane --help\n", args[0])
		return 2
	}
	o := &opts{}
	fs := flag.NewFlagSet("graylane "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.consul, "consul", "", "Consul agent address (default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	fs.StringVar(&o.who, "who", "", "operator name for the history (default $GRAYLANE_OPERATOR, else user@host)")
	fs.StringVar(&o.prefix, "kv-prefix", "graylane", "Consul KV folder for gray state and history")
	if cmd.flags != nil {
		cmd.flags(fs, o)
	}
	fs.Usage = func() {} // help is printed below; parse errors get the one-line treatment
	positional, err := parseInterleaved(fs, args[1:])
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		err = &usageError{err.Error()} // unknown flag, missing or bad value
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "usage: graylane %s [flags] %s\n\n%s.\n\nflags:\n", cmd.name, cmd.args, upperFirst(cmd.summary))
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	if err == nil && len(positional) < cmd.nargs {
		err = &usageError{fmt.Sprintf("expected %s", cmd.args)}
	}
	if err == nil && len(positional) > max(cmd.nargs, cmd.maxargs) {
		err = &usageError{fmt.Sprintf("unexpected argument %q; expected %s", positional[max(cmd.nargs, cmd.maxargs)], cmd.args)}
	}
	if err == nil {
		err = checkNames(cmd, positional)
	}
	if err == nil && strings.Trim(o.prefix, "/") == "" {
		err = &usageError{fmt.Sprintf("--kv-prefix %q: name a KV folder, such as graylane", o.prefix)}
	}
	if err == nil && o.output != "" && o.output != "table" && o.output != "json" {
		err = &usageError{fmt.Sprintf("-o %q: use table or json", o.output)}
	}
	if err == nil {
		err = cmd.run(ctx, &env{o: o, stdout: stdout, stderr: stderr}, positional)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "graylane %s: %s\n", cmd.name, oneLine(err))
	if hint := consulHint(err, registrar.NewConfig(o.consul).Address); hint != "" {
		fmt.Fprintln(stderr, hint)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "run graylane %s --help for usage\n", cmd.name)
		return 2
	}
	return 1
}

// parseInterleaved parses flags that may come before, between or after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func printUsage(w io.Writer, cmds []*command) {
	fmt.Fprintln(w, "graylane: gray releases on Consul meta, enforced alike by APISIX and Kratos")
	fmt.Fprintln(w, "\nusage: graylane COMMAND [flags] [arguments]\n\ncommands:")
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun graylane COMMAND --help for a command's flags. Consul settings come from CONSUL_HTTP_ADDR,")
	fmt.Fprintln(w, "CONSUL_HTTP_TOKEN, CONSUL_CACERT and the other standard variables, or --consul.")
}

// checkNames refuses empty or malformed SERVICE, LANE and INSTANCE arguments before anything asks
// Consul about them.
func checkNames(cmd *command, positional []string) error {
	names := strings.Fields(cmd.args)
	for i, arg := range positional {
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

// headerList collects repeated -H 'Name: value' flags.
type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

// consulHint says what to check when an error came from not reaching Consul at addr, or from
// something at addr that is not Consul; "" for any other error.
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

func consulHint(err error, addr string) string {
	var syntax *json.SyntaxError
	var op *net.OpError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("hint: what answers at %s is not Consul's HTTP API (its answer is not JSON); point --consul or CONSUL_HTTP_ADDR at the agent (usually port 8500)", addr)
	case errors.As(err, &op) && op.Op == "dial" && dialedConsul(op, addr):
		return fmt.Sprintf("hint: no Consul agent answers at %s; start one, or point --consul or CONSUL_HTTP_ADDR at yours", addr)
	}
	return ""
}
