// Command scalebench measures what one process that follows many services costs, and whether it
// fits one Consul agent at its default limits (limits.http_max_conns_per_client = 200). `make
// bench-scale` runs it.
//
// For each number of services S it starts one real Consul agent (a dev agent from consultest, at
// its default limits, serving its API on HTTP and on HTTPS with a CA made for the run), registers S
// services × 10 instances through the catalog API (9 stable instances and a canary at a weight, the
// gray meta graylane writes; one service in 20 with recorded decision options), and then, for each
// mode, starts one watch.Watcher shaped like the APISIX plugin runner's (one view per service, all
// asked for at once) and measures:
//
//	ready        the time until every view is ready (or how many are after -ready-timeout)
//	conns        TCP connections from this process to the agent: the most seen while the views
//	             became ready, and after; dials counts the connections opened in all
//	429          requests the agent refused (Watcher.Refused)
//	goroutines   per service, over the process before the watcher started
//	heap, stacks, RSS
//	             per service: HeapInuse after a GC, StackInuse (the goroutines' stacks), and the
//	             resident set, over the process before the watcher started
//	quiet        requests sent to the agent during -quiet with nothing changing
//	p50, p99     propagation of -changes weight changes: one instance of a random service is
//	             registered again through the catalog with a new weight; the time from the request
//	             to the view's snapshot showing the weight
//	write        the registration's own time (p50), before the watcher started and while it
//	             watched, and the propagation counted from the registration's answer: the part
//	             the watcher adds to what the agent's write costs by itself
//
// Modes: http reaches the agent's plain HTTP port (one connection per query in flight); https its
// HTTPS port, where the watcher's queries share HTTP/2 connections. Requests are counted on the
// connections: over HTTP each request written, over HTTP/2 each HEADERS frame (the TLS
// connections are dialled by this program, which reads what the HTTP/2 client writes before it is
// encrypted). With -native-h2 the https mode leaves the TLS dial to the watcher's transport, as a
// deployment does; requests are then not counted.
//
// Flags:
//
//	-services       100,500,2000  the numbers of services
//	-modes          http,https
//	-instances      10            instances per service
//	-quiet          60s           how long to count requests with nothing changing
//	-changes        100           weight changes timed
//	-ready-timeout  60s           how long to wait for every view to be ready
//	-cluster                      also run the https mode with the watcher on a client agent of a
//	                              3-server cluster
//
// The agent and this program share the machine: on a small one the agent's work (it answers every
// blocking query) is in the propagation times.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	var (
		servicesFlag = flag.String("services", "100,500,2000", "numbers of services, comma-separated")
		modesFlag    = flag.String("modes", "http,https", "modes: http, https")
		instances    = flag.Int("instances", 10, "instances per service")
		quiet        = flag.Duration("quiet", 60*time.Second, "how long to count requests with nothing changing")
		changes      = flag.Int("changes", 100, "weight changes to time")
		readyTimeout = flag.Duration("ready-timeout", 60*time.Second, "how long to wait for every view to be ready")
		nativeH2     = flag.Bool("native-h2", false, "https: let the watcher's transport dial TLS (requests are not counted)")
		cluster      = flag.Bool("cluster", false, "also run https with the watcher on a client agent of a 3-server cluster")
	)
	flag.Parse()
	// net/http logs every 429 an agent answers on an idle connection (plain HTTP beyond the
	// agent's limit): the watcher counts them, the table shows them.
	log.SetOutput(io.Discard)
	var sizes []int
	for _, f := range strings.Split(*servicesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "scalebench: -services: %q is not a number of services\n", f)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}
	var modes []string
	for _, m := range strings.Split(*modesFlag, ",") {
		m = strings.TrimSpace(m)
		if m != "http" && m != "https" {
			fmt.Fprintf(os.Stderr, "scalebench: -modes: %q is neither http nor https\n", m)
			os.Exit(2)
		}
		modes = append(modes, m)
	}
	cfg := benchConfig{instances: *instances, quiet: *quiet, changes: *changes, readyTimeout: *readyTimeout, nativeH2: *nativeH2}
	var results []result
	for _, s := range sizes {
		rs, err := runSize(cfg, s, modes)
		results = append(results, rs...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "scalebench: %d services: %v\n", s, err)
			printTable(os.Stdout, results)
			os.Exit(1)
		}
		if *cluster {
			r, err := runCluster(cfg, s)
			if err != nil {
				fmt.Fprintf(os.Stderr, "scalebench: %d services on a cluster's client agent: %v\n", s, err)
				printTable(os.Stdout, results)
				os.Exit(1)
			}
			results = append(results, r)
		}
	}
	printTable(os.Stdout, results)
}
