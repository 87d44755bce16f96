package main

// The command tree: a table of commands (commands) turned into cobra commands (newRoot). A
// command's flags are registered by its flags function; compat registers the flags it accepted
// before it had a cobra command of its own (graylane rollout took every rollout flag in every
// action), which it still accepts but does not show.

import (
	"context"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// command is one subcommand.
type command struct {
	name    string
	args    string // the positional arguments, for the usage line and checkArgs
	summary string
	long    string // more of the help, after the summary
	group   string
	example string
	flags   func(fs *pflag.FlagSet, o *opts)
	compat  func(fs *pflag.FlagSet, o *opts) // accepted as before, not shown
	uses    uses
	run     func(ctx context.Context, e *env, args []string) error
	nargs   int // required positional arguments
	maxargs int // the most positional arguments: nargs when 0, any number when -1
	subs    []*command
}

// uses says which of the flags every command takes mean something to a command. Every command
// accepts all three, so that a script that passes them to each call keeps working, but shows only
// these.
type uses uint8

const (
	usesConsul uses = 1 << iota // --consul: it talks to Consul
	usesKV                      // --kv-prefix: it reads or writes graylane's state in Consul KV
	records                     // --who: it records changes under an operator's name

	readsState   = usesConsul | usesKV  // a command that reads graylane's state
	changesState = readsState | records // a command that records its changes in the history
)

// The groups of graylane --help.
const (
	groupChange  = "change"
	groupLook    = "look"
	groupAuto    = "automate"
	groupGateway = "gateway"
)

// commands returns graylane's commands, in the order graylane --help lists them.
func commands() []*command {
	return []*command{
		{name: "apply", summary: "register or update the instances of a spec file", group: groupChange, flags: applyFlags, uses: changesState, run: runApply,
			example: `  graylane apply -f bservice.yaml
  graylane apply -f examples/apisix/bservice.yaml -o json
  graylane apply -f bservice.yaml --reset-gray`},
		{name: "weight", args: "SERVICE LANE PERCENT", nargs: 3, summary: "set a lane's share of unmatched traffic (0-100, two decimals)", group: groupChange, flags: changeFlags, uses: changesState, run: runWeight,
			example: `  graylane weight bservice canary 5
  graylane weight bservice canary 25 --dry-run
  graylane weight bservice canary 50 --force   # pauses the rollout that drives the lane first`},
		{name: "match", args: "SERVICE LANE [RULES_JSON]", nargs: 2, maxargs: 3, summary: "set a lane's match rules (JSON, as in the match meta key), or remove them with --none", group: groupChange, flags: matchFlags, uses: changesState, run: runMatch,
			example: `  graylane match bservice canary '[{"header":[{"key":"userid","value_match":"123"}]}]'
  graylane match bservice canary '{"uri":[{"prefix":["/api/user"]}]}' --dry-run
  graylane match bservice canary --none`},
		{name: "promote", args: "SERVICE LANE", nargs: 2, summary: "make a lane the base: a colour goes live, or the lane becomes stable (it says which first)", group: groupChange, flags: changeFlags, uses: changesState, run: runPromote,
			example: `  graylane promote bservice canary
  graylane promote pay green --dry-run`},
		{name: "rollback", args: "SERVICE LANE", nargs: 2, summary: "send a lane back to matched test traffic only (weight 0)", group: groupChange, flags: changeFlags, uses: changesState, run: runRollback,
			example: `  graylane rollback bservice canary
  graylane rollback pay green`},
		{name: "drain", args: "INSTANCE", nargs: 1, summary: "stop new traffic to an instance, wait for clients to see it, deregister it", group: groupChange, flags: drainFlags, uses: changesState, run: runDrain,
			example: `  graylane drain bservice-1
  graylane drain bservice-canary-1 --grace 10s --keep
  graylane drain bservice-canary-1 --until-idle 30s --prometheus http://127.0.0.1:9090`},
		{name: "undo", args: "SERVICE", nargs: 1, summary: "put the instances a recorded change touched back as they were before it (the last change, or --to TIME)", group: groupChange, flags: undoFlags, uses: changesState, run: runUndo,
			example: `  graylane undo bservice
  graylane undo bservice --to '2025-06-01 10:04:05' --dry-run`},
		{name: "options", args: "SERVICE", nargs: 1, summary: "show or set the decision options every data plane reads (sticky key, tag key, fallback)", group: groupChange, flags: serviceOptionFlags, compat: forceFlag, uses: changesState, run: runOptions,
			example: `  graylane options bservice
  graylane options bservice --sticky-header userid
  graylane options bservice --fallback none --dry-run
  graylane options bservice --clear`},
		segmentCommand(),
		{name: "reconcile", args: "SERVICE", nargs: 1, summary: "write the recorded gray state into every instance that drifted from it", group: groupChange, uses: readsState, run: runReconcile,
			example: `  graylane reconcile bservice`},
		{name: "status", args: "SERVICE", nargs: 1, summary: "lanes, instances, health, weights, rules, conflicts and traffic shares", group: groupLook, flags: statusFlags, uses: readsState, run: runStatus,
			example: `  graylane status bservice
  graylane status bservice -o json
  graylane status bservice --sticky-header x-user-id   # shares as if the service had this sticky key`},
		{name: "history", args: "SERVICE", nargs: 1, summary: "the recorded changes of a service: who, when, before, after", group: groupLook, flags: outputFlags, uses: readsState, run: runHistory,
			example: `  graylane history bservice
  graylane history bservice -o json`},
		{name: "explain", args: "SERVICE", nargs: 1, summary: "how the data planes route a request: lane, reason, instances", group: groupLook, flags: explainFlags, uses: readsState, run: runExplain,
			example: `  graylane explain bservice -H 'userid: 123' --path /api/user --key user-42
  graylane explain bservice -H userid=123 -H 'x-env: test' -o json
  graylane explain bservice --cookie 'email=li@some-company-name.com' --path /api/user/1
  graylane explain bservice --lane canary`},
		rolloutCommand(),
		apisixCommand(),
		{name: "portal", summary: "serve the release portal: a web page of every service's lanes, history and next step", group: groupGateway, flags: portalFlags, uses: readsState, run: runPortal,
			example: `  graylane portal --hash-password alice >> portal.passwords   # prompts at a terminal, without echo; or reads stdin
  graylane portal --passwords portal.passwords                 # http://127.0.0.1:8089
  graylane portal --read-only --no-sign-in --listen :8089      # a dashboard on a wall
  graylane portal --passwords portal.passwords --listen :8443 --tls-cert portal.pem --tls-key portal.key`},
		{name: "version", summary: "the module version and VCS revision graylane was built from", run: runVersion,
			example: `  graylane version`},
	}
}

// newRoot returns the command tree of one run, its output going to stdout and stderr.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "graylane",
		Short: "gray releases on Consul meta, enforced alike by APISIX and Kratos",
		Long: `graylane: gray releases on Consul meta, enforced alike by APISIX and Kratos.

Consul settings come from CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT and the other
standard variables, or --consul.`,
		Example: `  graylane apply -f bservice.yaml          # register instances from a spec
  graylane rollback bservice canary        # the canary takes matched test traffic only
  graylane weight bservice canary 5        # then 5 % of the other users, sticky per user
  graylane promote bservice canary         # canary instances become stable
  graylane status bservice
  graylane explain bservice -H 'userid: 123' --path /api/user --key user-42`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(flagError)
	root.AddGroup(
		&cobra.Group{ID: groupChange, Title: "Change a release:"},
		&cobra.Group{ID: groupLook, Title: "Look:"},
		&cobra.Group{ID: groupAuto, Title: "Automate:"},
		&cobra.Group{ID: groupGateway, Title: "Gateway and portal:"},
	)
	for _, c := range commands() {
		root.AddCommand(c.cobra(stdout, stderr))
	}
	// What ExecuteC adds, added now for the help of graylane alone and for the examples below.
	root.InitDefaultHelpFlag()
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help":
			c.Example = "  graylane help\n  graylane help rollout start"
		case "completion":
			c.Example = "  source <(graylane completion bash)\n  graylane completion zsh > \"${fpath[1]}/_graylane\""
			c.Args = usageArgs(c.Args)
			c.RunE = func(*cobra.Command, []string) error {
				return &usageError{"expected a shell: bash, zsh, fish or powershell"}
			}
			for _, shell := range c.Commands() {
				shell.Example = "  graylane completion " + shell.Name()
				shell.Args = usageArgs(shell.Args)
			}
		}
	}
	return root
}

// usageArgs returns check, an argument check of cobra's own, with its errors made usage errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageError{err.Error()}
		}
		return nil
	}
}

// cobra returns c as a cobra command, with options of its own.
func (c *command) cobra(stdout, stderr io.Writer) *cobra.Command {
	o := &opts{}
	use := c.name
	if c.args != "" {
		use += " " + c.args
	}
	cc := &cobra.Command{
		Use:               use,
		Short:             c.summary,
		Long:              strings.TrimSpace(upperFirst(c.summary) + ".\n\n" + c.long),
		Example:           c.example,
		GroupID:           c.group,
		Args:              c.checkArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return c.run(cmd.Context(), &env{o: o, stdout: stdout, stderr: stderr}, args)
		},
	}
	fs := cc.Flags()
	fs.SortFlags = false
	if c.flags != nil {
		c.flags(fs, o)
	}
	// The flags every command takes, after its own.
	global := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
	global.StringVar(&o.consul, "consul", "", "Consul agent `address` (default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	global.StringVar(&o.prefix, "kv-prefix", "graylane", "Consul KV `folder` for gray state and history")
	global.StringVar(&o.who, "who", "", "`operator` name for the history (default $GRAYLANE_OPERATOR, else user@host)")
	shown := map[string]bool{"consul": c.uses&usesConsul != 0, "kv-prefix": c.uses&usesKV != 0, "who": c.uses&records != 0}
	global.VisitAll(func(f *pflag.Flag) {
		f.Hidden = !shown[f.Name]
		fs.AddFlag(f)
	})
	if c.compat != nil {
		old := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
		c.compat(old, o)
		old.VisitAll(func(f *pflag.Flag) {
			if fs.Lookup(f.Name) == nil {
				f.Hidden = true
				fs.AddFlag(f)
			}
		})
	}
	if f := fs.Lookup("file"); f != nil && f.Annotations[cobra.BashCompFilenameExt] == nil {
		_ = cc.MarkFlagFilename("file", "yaml", "yml") // a spec or a plan, unless the command said otherwise
	}
	for _, sub := range c.subs {
		cc.AddCommand(sub.cobra(stdout, stderr))
	}
	return cc
}

// actions names a command's subcommands, for the messages of a command that needs one.
func (c *command) actions() string {
	var names []string
	for _, s := range c.subs {
		names = append(names, s.name)
	}
	return strings.Join(names, ", ")
}
