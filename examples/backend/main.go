// Command backend is graylane's example service: a Kratos app with a gRPC and an HTTP server that
// registers itself in Consul with gray meta through the registrar, answers every request with who
// it is (service, instance, version, the lane it serves in and the lane header it received) and,
// when it has a next hop, calls that service through the graylane selector inside the handler, so
// that the lane chosen at the first hop is kept at the next.
//
//	GRAY_SERVICE=bservice GRAY_ID=bservice-canary-1 GRAY_META='{"canary":"true","weight":"10"}' \
//	NEXT=cservice backend
//
// Environment:
//
//	GRAY_SERVICE   the Consul service (required)
//	GRAY_ID        the instance ID (required)
//	GRAY_META      its meta, a JSON object of strings (graylane's keys and others, e.g. version)
//	LISTEN         the HTTP address (default :8080): GET, POST, PUT or DELETE any path; /health, /metrics
//	GRPC_LISTEN    the gRPC address (default :9000): graylane.example.Echo/Who
//	ADVERTISE      the address Consul and clients reach it at (default: the address it reaches Consul from)
//	NEXT           a service to call for every request (gRPC, with the selector option)
//	STICKY_HEADER  the sticky header of the call to NEXT (default x-user-id)
//	DRAIN_GRACE    on SIGTERM: weight 0 and drained, this long for clients to see it, then gone (default 5s)
//
// and the standard CONSUL_* variables. The registration keeps the gray meta graylane records over
// GRAY_META (a restarted instance comes back in the state it was left in). SIGINT deregisters at once.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	klog "github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/middleware"
	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	khttp "github.com/go-kratos/kratos/v2/transport/http"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/examples/echo"
	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/metrics"
	"github.com/graylane/graylane/registrar"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

// Config is the service's configuration (from the environment in main).
type Config struct {
	Service, ID   string
	Meta          map[string]string
	Listen        string
	GRPCListen    string
	Advertise     string
	Next          string
	StickyHeader  string
	DrainGrace    time.Duration
	Consul        *api.Config
	SignalsHandle bool // drain on SIGTERM (main); tests leave it off
}

func main() {
	klog.SetLogger(klog.NewStdLogger(io.Discard))
	cfg, err := configFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	cfg.SignalsHandle = true
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := Run(ctx, cfg, nil); err != nil {
		log.Fatal(err)
	}
}

func configFromEnv() (Config, error) {
	c := Config{
		Service: os.Getenv("GRAY_SERVICE"), ID: os.Getenv("GRAY_ID"), Meta: map[string]string{},
		Listen: envOr("LISTEN", ":8080"), GRPCListen: envOr("GRPC_LISTEN", ":9000"),
		Advertise: os.Getenv("ADVERTISE"), Next: os.Getenv("NEXT"),
		StickyHeader: envOr("STICKY_HEADER", "x-user-id"), DrainGrace: 5 * time.Second,
		Consul: registrar.NewConfig(""),
	}
	if c.Service == "" || c.ID == "" {
		return c, errors.New("backend: set GRAY_SERVICE and GRAY_ID")
	}
	if m := os.Getenv("GRAY_META"); m != "" {
		if err := json.Unmarshal([]byte(m), &c.Meta); err != nil {
			return c, fmt.Errorf("backend: GRAY_META: %w", err)
		}
	}
	if g := os.Getenv("DRAIN_GRACE"); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil {
			return c, fmt.Errorf("backend: DRAIN_GRACE: %w", err)
		}
		c.DrainGrace = d
	}
	return c, nil
}

// app is one running instance.
type app struct {
	cfg     Config
	version string
	reg     atomic.Pointer[registrar.Registration] // set once registered
	next    *grpc.ClientConn
	serves  func() string
}

// lane is the lane the instance serves in; before registration, the spec's.
func (a *app) lane(spec *gray.Meta) func() string {
	return func() string {
		if reg := a.reg.Load(); reg != nil {
			return reg.Lane()
		}
		return spec.LaneName()
	}
}

// Answer implements echo.Answerer.
func (a *app) Answer(ctx context.Context, path string) (*echo.Reply, error) {
	r := &echo.Reply{Service: a.cfg.Service, Instance: a.cfg.ID, Version: a.version, Serves: a.serves(), Path: path}
	if tr, ok := transport.FromServerContext(ctx); ok {
		r.Lane = tr.RequestHeader().Get(gray.DefaultTagKey)
	}
	if a.next != nil {
		next, err := echo.Who(ctx, a.next) // the handler's context: the selector sees this request
		if err != nil {
			return nil, fmt.Errorf("%s: calling %s: %w", a.cfg.ID, a.cfg.Next, err)
		}
		r.Next = next
	}
	return r, nil
}

// Run serves until ctx ends, or until a SIGTERM drain has finished when cfg.SignalsHandle is set.
// ready, when not nil, receives the HTTP and gRPC ports once the instance is registered.
func Run(ctx context.Context, cfg Config, ready chan<- [2]int) error {
	spec, err := gray.ParseInstanceMeta(cfg.ID, cfg.Meta)
	if err != nil {
		return err
	}
	other := map[string]string{}
	for k, v := range cfg.Meta {
		if !gray.IsMetaKey(k) {
			other[k] = v
		}
	}
	a := &app{cfg: cfg, version: cfg.Meta["version"]}
	a.serves = a.lane(&spec)
	client, err := api.NewClient(cfg.Consul)
	if err != nil {
		return err
	}
	if cfg.Advertise == "" {
		cfg.Advertise = localAddr(cfg.Consul.Address)
	}

	promReg := prometheus.NewRegistry()
	requests, err := metrics.NewServerRequests(promReg)
	if err != nil {
		return err
	}
	mw := []middleware.Middleware{mmd.Server(), metrics.Server(requests, cfg.Service, a.serves)}

	hl, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	gl, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		hl.Close()
		return err
	}
	hs := khttp.NewServer(khttp.Listener(hl), khttp.Middleware(mw...), khttp.StrictSlash(false)) // every path answers, "/" and "/x/" too
	hs.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	hs.Handle("/metrics", promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}))
	who := func(c khttp.Context) error {
		h := c.Middleware(func(ctx context.Context, _ any) (any, error) { return a.Answer(ctx, c.Request().URL.Path) })
		out, err := h(c, nil)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, out)
	}
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		hs.Route("/").Handle(m, "/{path:.*}", who)
	}
	gs := kgrpc.NewServer(kgrpc.Listener(gl), kgrpc.Middleware(mw...))
	gs.RegisterService(&echo.Desc, a)

	if cfg.Next != "" {
		// graylane's watcher shows the next hop's meta as soon as Consul commits a change; the
		// registry says which instances there are. Closed after the client (defers run last first).
		w, err := watch.New(cfg.Consul)
		if err != nil {
			hl.Close()
			gl.Close()
			return err
		}
		defer w.Close()
		a.next, err = kgrpc.DialInsecure(ctx,
			kgrpc.WithEndpoint("discovery:///"+cfg.Next),
			kgrpc.WithDiscovery(kconsul.New(client)),
			kgrpc.WithMiddleware(mmd.Client()), // carries x-md-global- keys, the lane tag among them
			kgrpc.WithPrintDiscoveryDebugLog(false),
			selector.GRPC(selector.WithStickyHeader(cfg.StickyHeader), selector.WithWatcher(w)),
		)
		if err != nil {
			hl.Close()
			gl.Close()
			return err
		}
		defer a.next.Close()
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- hs.Start(context.Background()) }()
	go func() { serveErr <- gs.Start(context.Background()) }()
	defer func() {
		stop, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Stop(stop)
		gs.Stop(stop)
	}()

	hp, gp := hl.Addr().(*net.TCPAddr).Port, gl.Addr().(*net.TCPAddr).Port
	host := func(p int) string { return net.JoinHostPort(cfg.Advertise, strconv.Itoa(p)) }
	r, err := registrar.New(cfg.Consul, registrar.WithOperator(cfg.ID))
	if err != nil {
		return err
	}
	var opts []registrar.RegisterOption
	if cfg.SignalsHandle {
		opts = append(opts, registrar.DrainOnSignal(cfg.DrainGrace, syscall.SIGTERM))
	}
	s := registrar.Spec{
		Name: cfg.Service, ID: cfg.ID, Address: cfg.Advertise, Port: hp, Gray: spec, Meta: other,
		Endpoints: []string{"grpc://" + host(gp), "http://" + host(hp)},
		Check:     &registrar.CheckSpec{HTTP: "http://" + host(hp) + "/health", Interval: "1s", Timeout: "1s", DeregisterAfter: "1m"},
	}
	if a.version != "" {
		s.Tags = []string{"version=" + a.version}
	}
	var reg *registrar.Registration
	for {
		if reg, err = r.Register(ctx, s, opts...); err == nil {
			a.reg.Store(reg)
			break
		}
		log.Printf("backend: register %s: %v; retrying", cfg.ID, err)
		select {
		case <-ctx.Done():
			return nil
		case err := <-serveErr:
			return err
		case <-time.After(time.Second):
		}
	}
	log.Printf("backend: %s of %s in lane %s on http %s, grpc %s", cfg.ID, cfg.Service, reg.Lane(), host(hp), host(gp))
	if ready != nil {
		ready <- [2]int{hp, gp}
	}
	select {
	case <-ctx.Done():
		return reg.Close()
	case <-reg.Done():
		log.Printf("backend: %s drained and deregistered", cfg.ID)
		reg.Close()
		return reg.DrainError()
	case err := <-serveErr:
		reg.Close()
		return err
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// localAddr returns the local address this host uses to reach the Consul agent.
func localAddr(consul string) string {
	host := consul
	if u, err := url.Parse(consul); err == nil && u.Host != "" {
		host = u.Host
	}
	if !strings.Contains(host, ":") {
		host += ":8500"
	}
	c, err := net.Dial("udp", host)
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}
