package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	kconsul "github.com/go-kratos/kratos/contrib/registry/consul/v2"
	kselector "github.com/go-kratos/kratos/v2/selector"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/portal"
	"github.com/graylane/graylane/registrar"
)

// tryOperator is the portal account `make try` creates.
const tryOperator = "try"

// tryMain is `make try`: the stack of the demo, left running to explore. It starts a Consul agent,
// cservice (stable and canary), bservice (two stable instances and a canary that takes the test
// header userid: 123 and 5 % of users), graylane's plugin runner, an HTTP entry that sends each
// request through the gateway path or a Kratos client with the selector, and the release portal;
// it prints what to try, and stops everything at Ctrl-C (or when ctx ends).
func tryMain(ctx context.Context, out io.Writer, dir string, ready func(*tryStack)) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "graylane-try-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	s := &stack{dir: dir}
	defer s.close()
	if err := s.build(ctx, out); err != nil {
		return err
	}
	fmt.Fprintln(out, "building github.com/graylane/graylane/cmd/graylane")
	if b, err := exec.CommandContext(ctx, "go", "build", "-buildvcs=auto", "-o", filepath.Join(dir, "graylane"), "github.com/graylane/graylane/cmd/graylane").CombinedOutput(); err != nil {
		return fmt.Errorf("go build cmd/graylane: %v\n%s", err, b)
	}
	if err := s.startConsul(false); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		spec []byte
		next string
	}{{"cservice.yaml", cserviceSpec, ""}, {"bservice.yaml", bserviceSpec, "cservice"}} {
		specs, err := registrar.ParseSpecs(f.name, f.spec)
		if err != nil {
			return err
		}
		for _, sp := range specs {
			if err := s.startInstance(ctx, sp, f.next); err != nil {
				return err
			}
		}
	}
	// The sticky key every plane uses, kept once per service as `graylane options` keeps it, so that
	// status, explain and the portal show what the planes do.
	for _, svc := range []string{"bservice", "cservice"} {
		if _, err := s.r.SetServiceOptions(ctx, svc, gray.Options{StickyHeader: stickyHeader}); err != nil {
			return err
		}
	}
	if _, err := s.r.Do(ctx, "bservice", registrar.SetWeight{Lane: "canary", Weight: 5 * gray.MaxWeight / 100}); err != nil {
		return err
	}
	if err := s.startRunner(ctx); err != nil {
		return err
	}

	gw := newGateway(s.sock, s.w)
	defer gw.close()
	kc := &kratosClient{conns: map[string]*grpc.ClientConn{}, nodes: map[string]*atomic.Pointer[[]kselector.Node]{},
		consul: func() *kconsul.Registry { return kconsul.New(s.client) }, watcher: s.w}
	defer kc.close()
	// Ready when both planes send the test header to the canary.
	d := &demo{out: io.Discard, s: s, planes: []plane{gw, kc}}
	tester := []request{{User: "tester", Headers: [][2]string{{"userid", "123"}}}}
	if err := d.wait(ctx, "bservice", tester, func(m []*reply) bool { return share(m, "canary") == 1 }); err != nil {
		return err
	}
	entry, err := serveTryEntry(gw, kc)
	if err != nil {
		return err
	}
	defer entry.Close()

	password := rand.Text()[:12]
	line, err := portal.HashPassword(tryOperator, password)
	if err != nil {
		return err
	}
	pwFile := filepath.Join(dir, "portal-passwords")
	if err := os.WriteFile(pwFile, []byte(line+"\n"), 0o600); err != nil {
		return err
	}
	pws, err := portal.LoadPasswords(pwFile)
	if err != nil {
		return err
	}
	p, err := portal.New(portal.Config{Consul: registrar.NewConfig(s.agent.HTTPAddr), Passwords: pws})
	if err != nil {
		return err
	}
	defer p.Close()
	pl, err := listenPreferring("127.0.0.1:8089")
	if err != nil {
		return err
	}
	psrv := p.HTTPServer()
	go psrv.Serve(pl)
	defer psrv.Close()

	t := &tryStack{
		Consul: "http://" + s.agent.HTTPAddr, Portal: "http://" + pl.Addr().String(), Entry: "http://" + entry.Addr,
		Operator: tryOperator, Password: password, Dir: dir,
	}
	t.print(out)
	if ready != nil {
		ready(t)
	}
	<-ctx.Done()
	p.Close() // ends the portal's event streams before the server closes
	return nil
}

// tryStack is what `make try` leaves running, as printed.
type tryStack struct {
	Consul, Portal, Entry string
	Operator, Password    string
	Dir                   string // the graylane command and the processes' logs
}

func (t *tryStack) print(out io.Writer) {
	fmt.Fprintf(out, `
graylane is running on loopback (Ctrl-C stops everything):

  Consul       %s   (its UI: %s/ui)
  portal       %s   sign in as %q with password %s
  services     bservice: bservice-1, bservice-2 (stable) and bservice-canary-1 (canary: the
               header userid: 123, and 5 %% of users by x-user-id); cservice: stable and canary
  entry        %s/SERVICE sends a request through graylane's plugin runner and the lane's
               upstream, as APISIX would; add ?via=mesh for a Kratos client with the selector

In another terminal:

  export PATH=%s:$PATH CONSUL_HTTP_ADDR=%s
  graylane status bservice
  curl -s -H 'userid: 123' %s/bservice              # a tester: the canary
  curl -s -H 'x-user-id: alice' %s/bservice?via=mesh  # a user, sticky to one lane
  graylane explain bservice -H 'x-user-id: alice'
  graylane weight bservice canary 25                  # watch the portal follow
  graylane history bservice
  graylane promote bservice canary                    # or: graylane rollback bservice canary

`, t.Consul, t.Consul, t.Portal, t.Operator, t.Password, t.Entry, t.Dir, t.Consul, t.Entry, t.Entry)
}

// listenPreferring listens on addr, or on a free loopback port when addr is taken.
func listenPreferring(addr string) (net.Listener, error) {
	if l, err := net.Listen("tcp", addr); err == nil {
		return l, nil
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// tryEntry is the HTTP entry of `make try`: GET /SERVICE[/path] sends the request, with its headers,
// through the gateway path, or with ?via=mesh through a Kratos client, and answers who served it.
type tryEntry struct {
	Addr string
	srv  *http.Server
}

func (e *tryEntry) Close() error { return e.srv.Close() }

func serveTryEntry(gw *gateway, kc *kratosClient) (*tryEntry, error) {
	l, err := listenPreferring("127.0.0.1:9080")
	if err != nil {
		return nil, err
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, hr *http.Request) {
		service, path, _ := strings.Cut(strings.TrimPrefix(hr.URL.Path, "/"), "/")
		if service == "" {
			http.Error(w, "GET /SERVICE[/path][?via=mesh], for example /bservice", http.StatusNotFound)
			return
		}
		r := &request{User: hr.Header.Get(stickyHeader), Method: hr.Method, Path: "/" + path}
		if path == "" {
			r.Path = ""
		}
		for k, vs := range hr.Header {
			if strings.EqualFold(k, stickyHeader) || strings.EqualFold(k, gray.DefaultTagKey) && hr.URL.Query().Get("via") != "mesh" {
				continue // the gateway's route strips a lane header from outside
			}
			for _, v := range vs {
				r.Headers = append(r.Headers, [2]string{strings.ToLower(k), v})
			}
		}
		var p plane = gw
		if hr.URL.Query().Get("via") == "mesh" {
			p = kc
		}
		ctx, cancel := context.WithTimeout(hr.Context(), 10*time.Second)
		defer cancel()
		rep, err := p.Do(ctx, service, r)
		if err != nil {
			http.Error(w, p.Name()+": "+err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Via string `json:"via"`
			*reply
		}{p.Name(), rep})
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "try entry:", err)
		}
	}()
	return &tryEntry{Addr: l.Addr().String(), srv: srv}, nil
}
