// Command release (`make demo`) walks a gray release through both of graylane's data planes, with
// real parts on loopback: a Consul agent, the example Kratos services (examples/backend) as separate
// processes registered with gray meta, graylane's APISIX plugin runner (apisix-plugin) spoken to over
// APISIX's own protocol, and a Kratos gRPC client with the selector option.
//
// At each step it sends a few thousand requests through the gateway path (plugin runner, then the
// lane's upstream) and through the Kratos client, and prints where they were served, as measured
// from the services' answers:
//
//  1. the canary is deployed: the test header reaches it, nothing else does;
//  2. weight 5, then 25: the shares, and the users of 5 % still in the canary at 25 %;
//  3. rollback: the canary's share drops to 0, with the time each plane took;
//  4. blue/green on pay: green beside blue takes nothing, the switch to green, the switch back;
//  5. a call chain: a request put in the canary lane at the gateway stays in it at cservice.
//
// It needs the consul binary that `make consul` builds (or $GRAYLANE_CONSUL, or consul on PATH), and
// builds the service and the runner itself. Ctrl-C stops everything it started.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	klog "github.com/go-kratos/kratos/v2/log"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

//go:embed bservice.yaml
var bserviceSpec []byte

//go:embed cservice.yaml
var cserviceSpec []byte

//go:embed pay.yaml
var paySpec []byte

const (
	users   = 2000 // production users per measurement, per plane
	testers = 200  // requests with the test header, per plane
)

func main() {
	dir := flag.String("dir", "", "where to put binaries, sockets and logs (default: a temporary directory, removed at the end)")
	soakFor := flag.Duration("soak", 0, "instead of the demo, soak both planes under churn this long (whole minutes; make soak)")
	try := flag.Bool("try", false, "instead of the demo, start the stack with a canary at 5 % and the portal, and leave it running until Ctrl-C (make try)")
	flag.Parse()
	klog.SetLogger(klog.NewStdLogger(io.Discard))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case *soakFor > 0:
		err = soakMain(ctx, os.Stdout, *dir, *soakFor)
	case *try:
		if err = tryMain(ctx, os.Stdout, *dir, nil); err == nil {
			fmt.Println("\nstopped: everything make try started")
			return
		}
	default:
		err = run(ctx, os.Stdout, *dir)
	}
	if ctx.Err() != nil {
		fmt.Println("\ninterrupted: everything the demo started is stopped")
		os.Exit(130)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer, dir string) error {
	began := time.Now()
	if dir == "" {
		d, err := os.MkdirTemp("", "graylane-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	s := &stack{dir: dir}
	defer s.close()
	if err := s.build(ctx, out); err != nil {
		return err
	}
	if err := s.startConsul(false); err != nil {
		return err
	}
	bspecs, err := registrar.ParseSpecs("bservice.yaml", bserviceSpec)
	if err != nil {
		return err
	}
	cspecs, err := registrar.ParseSpecs("cservice.yaml", cserviceSpec)
	if err != nil {
		return err
	}
	pspecs, err := registrar.ParseSpecs("pay.yaml", paySpec)
	if err != nil {
		return err
	}
	spec := func(specs []registrar.Spec, id string) registrar.Spec {
		for _, sp := range specs {
			if sp.ID == id {
				return sp
			}
		}
		panic("no spec " + id)
	}
	for _, sp := range cspecs {
		if err := s.startInstance(ctx, sp, ""); err != nil {
			return err
		}
	}
	for _, id := range []string{"bservice-1", "bservice-2"} {
		if err := s.startInstance(ctx, spec(bspecs, id), "cservice"); err != nil {
			return err
		}
	}
	if err := s.startRunner(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "started on loopback: Consul %s, bservice-1 and -2 (calling cservice), cservice-1, cservice-canary-1, the plugin runner (%s)\n",
		s.agent.HTTPAddr, s.sock)
	fmt.Fprintf(out, "listening: %s\n", strings.Join(s.Addrs(), " "))

	gw := newGateway(s.sock, s.w)
	defer gw.close()
	kc := &kratosClient{conns: map[string]*grpc.ClientConn{}, nodes: map[string]*atomic.Pointer[[]kselector.Node]{},
		consul: func() *kconsul.Registry { return kconsul.New(s.client) }, watcher: s.w}
	defer kc.close()
	d := &demo{out: out, s: s, planes: []plane{gw, kc}}

	prod := userRequests(users, nil)
	tests := make([]request, testers)
	for i := range tests {
		tests[i] = request{User: fmt.Sprintf("tester-%d", i), Headers: [][2]string{{"userid", "123"}}}
	}
	if err := d.wait(ctx, "bservice", prod[:200], func(m []*reply) bool { return share(m, "stable") == 1 }); err != nil {
		return err
	}
	d.heading("0", "bservice runs on stable; every request goes to stable")
	if err := d.table(ctx, "bservice", "production users", prod); err != nil {
		return err
	}

	// 1. The canary: test traffic only.
	d.heading("1", "canary deployed: bservice-canary-1, the test header userid: 123 only (bservice.yaml)")
	start := time.Now()
	if err := s.startInstance(ctx, spec(bspecs, "bservice-canary-1"), "cservice"); err != nil {
		return err
	}
	if err := d.wait(ctx, "bservice", tests[:20], func(m []*reply) bool { return share(m, "canary") == 1 }); err != nil {
		return err
	}
	fmt.Fprintf(out, "registered and reached by both planes in %v\n", time.Since(start).Round(time.Millisecond))
	if err := d.matches(ctx, "1-canary.yaml"); err != nil {
		return err
	}
	if err := d.table(ctx, "bservice", "test header userid: 123", tests); err != nil {
		return err
	}
	if err := d.table(ctx, "bservice", "production users", prod); err != nil {
		return err
	}

	// 2. Weights.
	var inCanary [][]bool // per plane, per production user, at 5 %
	var at25 [][]*reply
	for _, w := range []int{5, 25} {
		d.heading("2", fmt.Sprintf("graylane weight bservice canary %d", w))
		before, err := d.measure(ctx, "bservice", prod[:400])
		if err != nil {
			return err
		}
		took, err := d.change(ctx, "bservice", registrar.SetWeight{Lane: "canary", Weight: gray.Weight(w * 100)}, prod[:400],
			func(p int, m []*reply) bool { return share(m, "canary") > share(before[p], "canary") })
		if err != nil {
			return err
		}
		d.took(took)
		if err := d.matches(ctx, fmt.Sprintf("2-weight-%d.yaml", w)); err != nil {
			return err
		}
		got, err := d.tableOf(ctx, "bservice", "production users", prod)
		if err != nil {
			return err
		}
		if w == 5 {
			for _, m := range got {
				in := make([]bool, len(m))
				for i, r := range m {
					in[i] = r.Serves == "canary"
				}
				inCanary = append(inCanary, in)
			}
			continue
		}
		at25 = got
		for p, m := range got {
			was, still := 0, 0
			for i, r := range m {
				if inCanary[p][i] {
					was++
					if r.Serves == "canary" {
						still++
					}
				}
			}
			fmt.Fprintf(out, "  %-26s %d users were in the canary at 5 %%; at 25 %% %d of them still are (%.0f %%)\n",
				d.planes[p].Name()+":", was, still, 100*float64(still)/float64(max(was, 1)))
		}
	}

	// 3. Rollback.
	d.heading("3", "graylane rollback bservice canary: back to test traffic only")
	// The probe: the users the gateway put in the canary at 25 %, in small batches.
	var was []request
	for i, r := range prod {
		if at25[0][i].Serves == "canary" {
			was = append(was, r)
		}
	}
	took, err := d.change(ctx, "bservice", registrar.Rollback{Lane: "canary"}, was[:min(len(was), 50)],
		func(_ int, m []*reply) bool { return share(m, "canary") == 0 })
	if err != nil {
		return err
	}
	d.took(took)
	if err := d.matches(ctx, "3-rollback.yaml"); err != nil {
		return err
	}
	if err := d.table(ctx, "bservice", "production users", prod); err != nil {
		return err
	}
	if err := d.table(ctx, "bservice", "test header userid: 123", tests); err != nil {
		return err
	}

	// 4. Blue/green on pay.
	d.heading("4", "blue/green: pay-green-1 deployed beside pay-blue-1 (pay.yaml)")
	for _, sp := range pspecs {
		if err := s.startInstance(ctx, sp, ""); err != nil {
			return err
		}
	}
	greenTesters := make([]request, testers)
	for i := range greenTesters {
		greenTesters[i] = request{User: fmt.Sprintf("tester-%d", i), Headers: [][2]string{{"x-env", "green"}}}
	}
	if err := d.wait(ctx, "pay", greenTesters[:20], func(m []*reply) bool { return share(m, "green") == 1 }); err != nil {
		return err
	}
	if err := d.matches(ctx, "4-bluegreen.yaml"); err != nil {
		return err
	}
	if err := d.table(ctx, "pay", "production users", prod); err != nil {
		return err
	}
	if err := d.table(ctx, "pay", "test header x-env: green", greenTesters); err != nil {
		return err
	}
	for _, c := range []struct {
		op   registrar.Op
		to   string
		text string
		spec string
	}{
		{registrar.Promote{Lane: "green"}, "green", "graylane promote pay green: the switch", "4-promote-green.yaml"},
		{registrar.Rollback{Lane: "green"}, "blue", "graylane rollback pay green: the switch back", "4-rollback-green.yaml"},
	} {
		d.heading("4", c.text)
		took, err := d.change(ctx, "pay", c.op, prod[:200], func(_ int, m []*reply) bool { return share(m, c.to) == 1 })
		if err != nil {
			return err
		}
		d.took(took)
		if err := d.matches(ctx, c.spec); err != nil {
			return err
		}
		if err := d.table(ctx, "pay", "production users", prod); err != nil {
			return err
		}
	}

	// 5. The chain.
	d.heading("5", "a call chain: gateway -> bservice -> cservice (only cservice-canary-1 and bservice-canary-1 are canaries)")
	chain := append(append([]request{}, tests...), prod[:testers]...)
	if err := d.chain(ctx, chain); err != nil {
		return err
	}
	fmt.Fprintf(out, "\ndone in %v; stopping everything it started, and closing what it listened on: %s\n",
		time.Since(began).Round(100*time.Millisecond), strings.Join(s.Addrs(), " "))
	return nil
}

// userRequests returns n production requests, one per user.
func userRequests(n int, headers [][2]string) []request {
	out := make([]request, n)
	for i := range out {
		out[i] = request{User: fmt.Sprintf("user-%d", i), Headers: headers}
	}
	return out
}
