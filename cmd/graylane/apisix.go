package main

// graylane apisix: the gateway side. `sync` keeps one APISIX upstream per lane in step with Consul
// (long-lived); `route` prints or applies the route that runs graylane's plugin and routes each lane
// header value to its upstream.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/graylane/graylane/apisix"
	"github.com/graylane/graylane/apisix/extplugin"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// apisixOpts holds the flags of graylane apisix; apisixFlags resets it for each run.
var apisixOpts apisixFlagValues

type apisixFlagValues struct {
	admin, adminKey, standalone string
	services, routes, trusted   stringList
	uri, routeID, hosts, echo   string
	apply                       bool
	resync, wait                time.Duration
}

// stringList collects a repeatable flag; each value may hold several, comma-separated.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

func apisixFlags(fs *flag.FlagSet, o *opts) {
	apisixOpts = apisixFlagValues{}
	a := &apisixOpts
	fs.StringVar(&a.admin, "admin", os.Getenv("APISIX_ADMIN_ADDR"), "APISIX Admin API address, http://host:9180 (default $APISIX_ADMIN_ADDR)")
	fs.StringVar(&a.adminKey, "admin-key", os.Getenv("APISIX_ADMIN_KEY"), "Admin API key, sent as X-API-KEY (default $APISIX_ADMIN_KEY)")
	fs.Var(&a.services, "service", "Consul service (repeatable, or comma-separated)")
	fs.StringVar(&a.standalone, "standalone", "", "sync: write the upstreams (and --route routes) into this apisix.yaml instead of the Admin API")
	fs.Var(&a.routes, "route", "sync --standalone: a route to write, SERVICE=URI (repeatable)")
	fs.DurationVar(&a.resync, "resync", time.Minute, "sync: compare the gateway with Consul this often even without changes")
	fs.StringVar(&a.uri, "uri", "", "route: the route's uri, such as /api/*")
	fs.StringVar(&a.routeID, "id", "", "route: the route's id (default graylane-SERVICE)")
	fs.StringVar(&a.hosts, "hosts", "", "route: comma-separated hosts the route matches (default any)")
	fs.Var(&a.trusted, "trusted", "route: client CIDR whose own lane header is honoured (repeatable)")
	fs.StringVar(&a.echo, "echo-header", "", "route: response header that tells the client its lane")
	fs.StringVar(&o.tagKey, "tag-key", "", "route: lane header (default: the service's option in Consul, else "+gray.DefaultTagKey+")")
	fs.StringVar(&o.stickyHeader, "sticky-header", "", "route: sticky key header (default: the service's option in Consul)")
	fs.StringVar(&o.stickyCookie, "sticky-cookie", "", "route: sticky key cookie (default: the service's option in Consul)")
	fs.BoolVar(&a.apply, "apply", false, "route: write the service's upstreams and the route through the Admin API instead of printing it")
	fs.DurationVar(&a.wait, "wait", 30*time.Second, "how long to wait for Consul's first answer")
}

func runAPISIX(ctx context.Context, e *env, args []string) error {
	switch args[0] {
	case "sync":
		return runAPISIXSync(ctx, e, args[1:])
	case "route":
		return runAPISIXRoute(ctx, e, args[1:])
	}
	return &usageError{fmt.Sprintf("unknown apisix command %q: use sync or route", args[0])}
}

func (e *env) watcher() (*registrar.Watcher, error) {
	return registrar.NewWatcher(registrar.NewConfig(e.o.consul))
}

func runAPISIXSync(ctx context.Context, e *env, args []string) error {
	a := &apisixOpts
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
		admin, err := apisix.NewAdmin(a.admin, a.adminKey)
		if err != nil {
			return &usageError{err.Error()}
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
	a := &apisixOpts
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
		admin, err := apisix.NewAdmin(a.admin, a.adminKey)
		if err != nil {
			return &usageError{err.Error()}
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
