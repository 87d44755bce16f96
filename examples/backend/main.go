// Command backend is the example service of the APISIX compose stack: an HTTP server that
// registers itself in Consul with gray meta and answers every request with who it is and the lane
// header it received, so that a client of the gateway can see which lane served it.
//
//	GRAY_SERVICE=bservice GRAY_ID=bservice-canary-1 GRAY_META='{"canary":"true","weight":"10"}' backend
//
// Environment: GRAY_SERVICE (the Consul service), GRAY_ID (the instance ID), GRAY_META (the gray
// meta as a JSON object of strings), LISTEN (default :8080), ADVERTISE (the address Consul and the
// gateway reach it at; default: the address it reaches Consul from), and the standard CONSUL_*
// variables. It deregisters on SIGTERM. Later meta changes are graylane's: it registers only once.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/registrar"
)

// Reply is what the backend answers.
type Reply struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Path     string `json:"path"`
	// Lane is the lane header the request carried ("" when none).
	Lane string `json:"lane"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, nil); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx ends; ready, when not nil, receives the listening port once registered.
func run(ctx context.Context, ready chan<- int) error {
	service, id := os.Getenv("GRAY_SERVICE"), os.Getenv("GRAY_ID")
	if service == "" || id == "" {
		return errors.New("backend: set GRAY_SERVICE and GRAY_ID")
	}
	meta := map[string]string{}
	if m := os.Getenv("GRAY_META"); m != "" {
		if err := json.Unmarshal([]byte(m), &meta); err != nil {
			return fmt.Errorf("backend: GRAY_META: %w", err)
		}
	}
	if _, err := gray.ParseInstanceMeta(id, meta); err != nil {
		return err
	}
	listen := envOr("LISTEN", ":8080")
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	cfg := registrar.NewConfig("")
	client, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	advertise := os.Getenv("ADVERTISE")
	if advertise == "" {
		advertise = localAddr(cfg.Address)
	}
	laneKey := gray.NewHeaderKey(gray.DefaultTagKey)
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Reply{Service: service, Instance: id, Path: r.URL.Path, Lane: r.Header.Get(laneKey.Canonical())})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)

	reg := &api.AgentServiceRegistration{ID: id, Name: service, Address: advertise, Port: port, Meta: meta,
		Check: &api.AgentServiceCheck{HTTP: "http://" + net.JoinHostPort(advertise, strconv.Itoa(port)) + "/health",
			Interval: "2s", Timeout: "1s", DeregisterCriticalServiceAfter: "1m"}}
	for {
		if err = client.Agent().ServiceRegister(reg); err == nil {
			break
		}
		log.Printf("backend: register %s: %v; retrying", id, err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	log.Printf("backend: %s of %s on %s:%d, meta %v", id, service, advertise, port, meta)
	if ready != nil {
		ready <- port
	}
	<-ctx.Done()
	client.Agent().ServiceDeregister(id)
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
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
