package main

// graylane apisix: the gateway side. `sync` keeps one APISIX upstream per lane in step with Consul
// (long-lived); `route` prints or applies the route that runs graylane's plugin and routes each lane
// header value to its upstream.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// apisixOpts holds the flags of graylane apisix sync and route.
type apisixOpts struct {
	admin, adminKey, standalone string
	services, routes, trusted   stringList
	uri, routeID, hosts, echo   string
	apply                       bool
	resync, wait                time.Duration
}

// stringList collects a repeatable flag; each value may hold several, comma-separated.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Type() string   { return "strings" }
func (l *stringList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// gatewayFlags are the flags of both sync and route: the Admin API, the services, and the plugin
// configuration of the routes they write.
func gatewayFlags(fs *pflag.FlagSet, o *opts) {
	a := &o.apisix
	fs.StringVar(&a.admin, "admin", "", "APISIX Admin API `address`, http://host:9180 (default $APISIX_ADMIN_ADDR)")
	fs.StringVar(&a.adminKey, "admin-key", "", "Admin API `key`, sent as X-API-KEY (default $APISIX_ADMIN_KEY)")
	fs.Var(&a.services, "service", "Consul `service` (repeatable, or comma-separated)")
	fs.Var(&a.trusted, "trusted", "client `CIDR` whose own lane header is honoured (repeatable)")
	fs.StringVar(&a.echo, "echo-header", "", "response `header` that tells the client its lane")
	fs.StringVar(&o.tagKey, "tag-key", "", "lane `header` (default: the service's option in Consul, else "+gray.DefaultTagKey+")")
	fs.StringVar(&o.stickyHeader, "sticky-header", "", "sticky key `header` (default: the service's option in Consul)")
	fs.StringVar(&o.stickyCookie, "sticky-cookie", "", "sticky key `cookie` (default: the service's option in Consul)")
}

func syncFlags(fs *pflag.FlagSet, o *opts) {
	gatewayFlags(fs, o)
	syncOnlyFlags(fs, o)
}

func syncOnlyFlags(fs *pflag.FlagSet, o *opts) {
	a := &o.apisix
	fs.StringVar(&a.standalone, "standalone", "", "write the upstreams (and --route routes) into this apisix.yaml `file` instead of the Admin API")
	fs.Var(&a.routes, "route", "with --standalone: a route to write, `SERVICE=URI` (repeatable)")
	fs.DurationVar(&a.resync, "resync", time.Minute, "compare the gateway with Consul this often even without changes")
}

func routeFlags(fs *pflag.FlagSet, o *opts) {
	gatewayFlags(fs, o)
	routeOnlyFlags(fs, o)
}

func routeOnlyFlags(fs *pflag.FlagSet, o *opts) {
	a := &o.apisix
	fs.StringVar(&a.uri, "uri", "", "the route's `uri`, such as /api/*")
	fs.StringVar(&a.routeID, "id", "", "the route's `id` (default graylane-SERVICE)")
	fs.StringVar(&a.hosts, "hosts", "", "comma-separated `hosts` the route matches (default any)")
	fs.BoolVar(&a.apply, "apply", false, "write the service's upstreams and the route through the Admin API instead of printing it")
	fs.DurationVar(&a.wait, "wait", 30*time.Second, "how long to wait for Consul's first answer")
}

// apisixFlags are the flags both actions took when graylane apisix was one command.
func apisixFlags(fs *pflag.FlagSet, o *opts) {
	gatewayFlags(fs, o)
	syncOnlyFlags(fs, o)
	routeOnlyFlags(fs, o)
}

// apisixCommand is graylane apisix and its actions.
func apisixCommand() *command {
	c := &command{name: "apisix", summary: "keep APISIX lane upstreams in sync with Consul (sync), print or apply a service's route (route)",
		group: groupGateway, maxargs: -1, compat: apisixFlags,
		example: `  graylane apisix sync bservice
  graylane apisix route --service bservice --uri '/api/*' --sticky-header x-user-id --apply`,
		subs: []*command{
			{name: "sync", args: "[SERVICE...]", maxargs: -1, summary: "keep one APISIX upstream per lane, and the traffic-split rules of graylane's routes, equal to Consul",
				long: "It writes through the Admin API (--admin, --admin-key), or with --standalone into a standalone-mode\n" +
					"file. --trusted, --echo-header, --tag-key and the sticky flags configure the routes --route writes.",
				flags: syncFlags, compat: apisixFlags, uses: readsState, run: runAPISIXSync,
				example: `  graylane apisix sync bservice
  graylane apisix sync --service bservice,pay --admin http://127.0.0.1:9180
  graylane apisix sync bservice --standalone apisix.yaml --route 'bservice=/api/*'`},
			{name: "route", args: "[SERVICE]", maxargs: 1, summary: "print the route that runs graylane's plugin for a service and routes each lane to its upstream, or write it (--apply)",
				long:  "--admin and --admin-key are for --apply.",
				flags: routeFlags, compat: apisixFlags, uses: readsState, run: runAPISIXRoute,
				example: `  graylane apisix route --service bservice --uri '/api/*'
  graylane apisix route --service bservice --uri '/api/*' --sticky-header x-user-id --echo-header x-gray-lane
  graylane apisix route --service bservice --uri '/api/*' --trusted 10.0.0.0/8 --apply`},
		},
	}
	c.run = func(_ context.Context, _ *env, args []string) error {
		if len(args) == 0 {
			return &usageError{"expected an action: " + c.actions()}
		}
		return &usageError{fmt.Sprintf("unknown apisix command %q: use %s", args[0], c.actions())}
	}
	return c
}

// adminAPI returns the Admin API client of --admin and --admin-key, or of their variables.
func (e *env) adminAPI() (*apisix.Admin, error) {
	a := &e.o.apisix
	admin, err := apisix.NewAdmin(cmp.Or(a.admin, os.Getenv("APISIX_ADMIN_ADDR")), cmp.Or(a.adminKey, os.Getenv("APISIX_ADMIN_KEY")))
	if err != nil {
		return nil, &usageError{err.Error()}
	}
	return admin, nil
}

func (e *env) watcher() (*watch.Watcher, error) {
	return watch.New(watch.NewConfig(e.o.consul), watch.WithKVPrefix(e.o.prefix))
}

func runAPISIXSync(ctx context.Context, e *env, args []string) error {
	a := &e.o.apisix
	services := slices.Concat([]string(a.services), args)
	var specs []apisix.RouteSpec
	for _, r := range a.routes {
		svc, uri, ok := strings.Cut(r, "=")
		if !ok {
			return &usageError{fmt.Sprintf("--route %q: use SERVICE=URI", r)}
		}
		spec := apisix.RouteSpec{URI: uri, Conf: extplugin.Conf{Service: svc, TrustedCIDRs: a.trusted, EchoHeader: a.echo,
			Options: e.grayOptions()}}
		if err := spec.Validate(); err != nil {
			return &usageError{err.Error()}
		}
		specs = append(specs, spec)
		if !slices.Contains(services, svc) {
			services = append(services, svc)
		}
	}
	if len(services) == 0 {
		return &usageError{"name the services to sync: graylane apisix sync SERVICE... (or --service)"}
	}
	logger := log.New(os.Stderr, "", log.LstdFlags)
	var target apisix.Target
	switch {
	case a.standalone != "":
		target = &apisix.FileTarget{Path: a.standalone, Routes: specs}
	case len(specs) > 0:
		return &usageError{"--route is for --standalone; in traditional mode use graylane apisix route --apply"}
	default:
		admin, err := e.adminAPI()
		if err != nil {
			return err
		}
		target = &apisix.AdminTarget{Admin: admin, Logf: logger.Printf}
	}
	w, err := e.watcher()
	if err != nil {
		return err
	}
	defer w.Close()
	logger.Printf("apisix sync: watching %s", strings.Join(services, ", "))
	s := apisix.NewSync(target, w, services, apisix.WithResync(a.resync), apisix.WithSyncLogger(logger.Printf))
	return s.Run(ctx)
}

func runAPISIXRoute(ctx context.Context, e *env, args []string) error {
	a := &e.o.apisix
	services := slices.Concat([]string(a.services), args)
	if len(services) != 1 {
		return &usageError{"name one service: graylane apisix route --service SERVICE --uri /api/*"}
	}
	spec := apisix.RouteSpec{ID: a.routeID, URI: a.uri, Conf: extplugin.Conf{Service: services[0], TrustedCIDRs: a.trusted,
		EchoHeader: a.echo, Options: e.grayOptions()}}
	if a.hosts != "" {
		spec.Hosts = strings.Split(a.hosts, ",")
	}
	if err := spec.Validate(); err != nil {
		return &usageError{err.Error()}
	}
	w, err := e.watcher()
	if err != nil {
		return err
	}
	defer w.Close()
	wctx, cancel := context.WithTimeout(ctx, a.wait)
	defer cancel()
	var route map[string]any
	if a.apply {
		admin, err := e.adminAPI()
		if err != nil {
			return err
		}
		logger := log.New(os.Stderr, "", log.LstdFlags)
		route, err = apisix.ApplyRoute(wctx, admin, w, spec, apisix.WithSyncLogger(logger.Printf))
		if err != nil {
			return err
		}
	} else {
		s := apisix.NewSync(nil, w, []string{spec.Conf.Service})
		select {
		case <-w.Service(spec.Conf.Service).Ready():
		case <-wctx.Done():
			return errors.New("no answer from Consul for " + spec.Conf.Service + " within --wait")
		}
		st, err := s.State()
		if err != nil {
			return err
		}
		route = apisix.BuildRoute(spec, st)
	}
	return e.writeJSON(route)
}
