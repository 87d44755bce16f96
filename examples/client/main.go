// Command client is a Kratos gRPC client of the example service (examples/backend) with graylane's
// selector option: it calls the service n times, one user per call, and prints which lanes served
// the calls and the chain of the first call of each lane.
//
//	CONSUL_HTTP_ADDR=127.0.0.1:8500 client -service bservice -n 1000
//	CONSUL_HTTP_ADDR=127.0.0.1:8500 client -service bservice -n 10 -H userid=123
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/go-kratos/kratos/contrib/registry/consul/v2"
	klog "github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/metadata"
	mmd "github.com/go-kratos/kratos/v2/middleware/metadata"
	"github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/examples/echo"
	"github.com/graylane/graylane/selector"
)

type headers []string

func (h *headers) String() string { return strings.Join(*h, ",") }

// Set takes "name=value" or "Name: value", split at the first '=' or ':' (a header name has
// neither), as graylane explain does.
func (h *headers) Set(v string) error {
	i := strings.IndexAny(v, "=:")
	if i <= 0 || strings.TrimSpace(v[:i]) == "" {
		return fmt.Errorf("%q: want name=value or 'Name: value'", v)
	}
	*h = append(*h, strings.ToLower(strings.TrimSpace(v[:i])), strings.TrimSpace(v[i+1:]))
	return nil
}

func main() {
	klog.SetLogger(klog.NewStdLogger(io.Discard))
	var hs headers
	service := flag.String("service", "bservice", "the service to call")
	n := flag.Int("n", 1000, "calls, one user (x-user-id: user-N) each")
	flag.Var(&hs, "H", "a header name=value or 'Name: value' sent with every call (repeatable)")
	flag.Parse()
	if err := run(context.Background(), os.Stdout, *service, *n, hs); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer, service string, n int, hs headers) error {
	client, err := api.NewClient(api.DefaultConfig()) // CONSUL_HTTP_ADDR and friends
	if err != nil {
		return err
	}
	conn, err := grpc.DialInsecure(ctx,
		grpc.WithEndpoint("discovery:///"+service),
		grpc.WithDiscovery(consul.New(client)),
		grpc.WithMiddleware(mmd.Client()), // carries x-md-global- keys, the lane tag among them
		grpc.WithPrintDiscoveryDebugLog(false),
		selector.GRPC(selector.WithStickyHeader("x-user-id")),
	)
	if err != nil {
		return err
	}
	defer conn.Close()

	counts := map[string]int{}
	first := map[string]string{}
	for i := 0; i < n; i++ {
		cctx := metadata.AppendToClientContext(ctx, append([]string{"x-user-id", fmt.Sprintf("user-%d", i)}, hs...)...)
		cctx, cancel := context.WithTimeout(cctx, 5*time.Second)
		r, err := echo.Who(cctx, conn)
		cancel()
		if err != nil {
			return fmt.Errorf("call %d: %w", i, err)
		}
		counts[r.Serves]++
		if _, ok := first[r.Serves]; !ok {
			first[r.Serves] = r.String()
		}
	}
	lanes := make([]string, 0, len(counts))
	for l := range counts {
		lanes = append(lanes, l)
	}
	sort.Strings(lanes)
	fmt.Fprintf(out, "%d calls to %s\n", n, service)
	for _, l := range lanes {
		fmt.Fprintf(out, "%-8s %6d  %5.1f%%  e.g. %s\n", l, counts[l], 100*float64(counts[l])/float64(n), first[l])
	}
	return nil
}
