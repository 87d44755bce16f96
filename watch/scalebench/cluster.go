package main

import (
	"os"
	"time"

	"github.com/graylane/graylane/internal/consultest"
)

// runCluster measures the https mode with the watcher on a client agent of a 3-server cluster, as
// on a node of a datacenter: the services are registered through a server, the client agent
// answers the watcher's blocking queries (with Consul's streaming backend, from one subscription per
// service to the servers).
func runCluster(cfg benchConfig, n int) (result, error) {
	dir, err := os.MkdirTemp("", "graylane-scalebench-cluster-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	servers, err := consultest.StartServers(dir, 3)
	if err != nil {
		return result{}, err
	}
	defer func() {
		for _, s := range servers {
			s.Stop()
		}
	}()
	client, err := consultest.StartTLSClientAgent(dir, servers)
	if err != nil {
		return result{}, err
	}
	defer client.Stop()
	reg, closeReg, err := registrationClient(servers[0].HTTPAddr)
	if err != nil {
		return result{}, err
	}
	defer closeReg()
	if err := register(reg, n, cfg.instances); err != nil {
		return result{}, err
	}
	time.Sleep(time.Second) // the registrations reach every server
	closeReg()
	r, err := runCase(cfg, client, reg, closeReg, "https", n)
	r.mode = "https, client agent of 3 servers"
	return r, err
}
