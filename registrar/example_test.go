package registrar_test

import (
	"context"
	"log"
	"syscall"
	"time"

	"github.com/go-kratos/kratos/v2/transport/http"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/graylane/graylane/metrics"
	"github.com/graylane/graylane/registrar"
)

// A service registers its own instance with gray meta in the source article's YAML form, drains
// itself on SIGTERM, and labels its server metrics by the lane it serves in. The same code is in
// the README.
func ExampleRegistrar_Register() {
	ctx := context.Background()
	r, err := registrar.New(registrar.NewConfig("")) // CONSUL_HTTP_ADDR and friends
	if err != nil {
		log.Fatal(err)
	}
	specs, err := registrar.ParseSpecs("bservice.yaml", []byte(`
name: bservice
id: bservice-canary-1
address: 10.0.0.7
port: 8000
endpoints: ["grpc://10.0.0.7:9000", "http://10.0.0.7:8000"]
check: {http: "http://10.0.0.7:8000/health", interval: 5s}
meta:
  version: v2
  canary: true
  weight: 10
  match:
    - header:
        - key: "userid"
          value_match: "123"
`))
	if err != nil {
		log.Fatal(err) // names the file, the line, the instance and the field
	}
	reg, err := r.Register(ctx, specs[0], registrar.DrainOnSignal(10*time.Second, syscall.SIGTERM))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()

	requests, _ := metrics.NewServerRequests(prometheus.DefaultRegisterer)
	srv := http.NewServer(http.Middleware(metrics.Server(requests, "bservice", reg.Lane)))
	go srv.Start(ctx)
	<-reg.Done() // SIGTERM: weight 0, drained, 10 s for clients to see it, deregistered
	srv.Stop(ctx)
}
