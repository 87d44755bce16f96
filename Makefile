# graylane: `make test` and `make demo` work on a machine with only Go, git and make.

GO       ?= go
TOOLS    := $(CURDIR)/.tools
CONSUL   := $(TOOLS)/bin/consul
# Consul is built from the Go module proxy in a throwaway module outside graylane's go.mod.
CONSUL_VERSION := v1.20.0
# Fuzzing runs a number of executions per target, not a duration: with a duration, Go 1.26's fuzz
# coordinator can fail a target with "context deadline exceeded" as the time runs out, a race in the
# toolchain (golang/go#75804), not a finding. Raise it for a longer hunt: make fuzz FUZZEXECS=2000000.
FUZZEXECS ?= 40000
GOFILES   = $(shell git ls-files --cached --others --exclude-standard '*.go')

export GRAYLANE_CONSUL := $(CONSUL)

.PHONY: test check unit fuzz bench demo soak consul prometheus chromium docker-compose screenshot clean compose e2e-apisix

## test: format and vet checks, the race-enabled test suite (real Consul), short fuzz runs and the
## compose file's validation
test: check unit fuzz compose

check:
	@unformatted="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./apisix/e2e

unit: consul prometheus chromium docker-compose
	$(GO) test -race -count=1 ./...

fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseMeta$$' -fuzztime=$(FUZZEXECS)x ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzMetaYAML$$' -fuzztime=$(FUZZEXECS)x ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzDecide$$' -fuzztime=$(FUZZEXECS)x ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzDFA$$' -fuzztime=$(FUZZEXECS)x ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzParseConf$$' -fuzztime=$(FUZZEXECS)x ./apisix/extplugin
	$(GO) test -run='^$$' -fuzz='^FuzzRequestFilter$$' -fuzztime=$(FUZZEXECS)x ./apisix/extplugin
	$(GO) test -run='^$$' -fuzz='^FuzzPasswordLine$$' -fuzztime=$(FUZZEXECS)x ./portal
	$(GO) test -run='^$$' -fuzz='^FuzzMetaByAddress$$' -fuzztime=$(FUZZEXECS)x ./selector

## bench: the decision and gateway plugin benchmarks, with allocations
bench: consul
	$(GO) test -run='^$$' -bench=. -benchmem ./gray
	$(GO) test -run='^$$' -bench=. -benchmem ./apisix/extplugin ./apisix-plugin

## demo: a gray release through both data planes on loopback: a throwaway Consul agent, the example
## Kratos services and graylane's APISIX plugin runner; shares measured through the runner's protocol
## and through a Kratos client with the selector (examples/release)
demo: consul
	$(GO) run ./examples/release

## soak: both data planes under traffic for $(SOAK) while a schedule restarts and kills service
## processes, pauses one past its health check, restarts the plugin runner and the Consul agent,
## starts fresh Kratos clients and walks releases; prints the lane-safety table (make test runs one
## minute of it, as TestSoak in examples/release)
SOAK ?= 10m
soak: consul prometheus
	$(GO) run ./examples/release -soak $(SOAK)

## compose: validate docker-compose.yml offline
compose: docker-compose
	docker-compose config -q

## docker-compose: Debian's docker-compose, when missing: the compose file and the files it mounts
## are validated offline (deploy/)
docker-compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing Debian's docker-compose (to validate docker-compose.yml offline)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-compose >/dev/null; }

## e2e-apisix: the end-to-end check against a running APISIX whose runner is graylane's, such as
## the compose stack: GRAYLANE_E2E_GATEWAY, APISIX_ADMIN_ADDR, APISIX_ADMIN_KEY, CONSUL_HTTP_ADDR
## (defaults: the compose stack on 127.0.0.1)
e2e-apisix:
	$(GO) test -tags e2e -count=1 -v ./apisix/e2e

## consul: build the Consul agent used by the tests (once; about 5 minutes cold)
consul: $(CONSUL)

$(CONSUL):
	@echo "building consul $(CONSUL_VERSION) from the Go module proxy into $(TOOLS)/bin (once, about 5 minutes; packages are listed as they compile)"
	mkdir -p $(TOOLS)/consul-build $(TOOLS)/bin
	cd $(TOOLS)/consul-build && \
	printf 'module graylane.local/consul-build\n\ngo 1.26\n\nreplace github.com/hashicorp/consul/troubleshoot => github.com/hashicorp/consul/troubleshoot v0.7.1\n' > go.mod && \
	GOFLAGS=-mod=mod $(GO) get github.com/hashicorp/consul@$(CONSUL_VERSION) && \
	GOFLAGS=-mod=mod $(GO) build -v -o $(CONSUL).tmp github.com/hashicorp/consul
	mv $(CONSUL).tmp $(CONSUL)

## prometheus: the Prometheus server the rollout tests scrape with (Debian's package, when missing)
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (the rollout tests run a real Prometheus)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

## chromium: install Debian's chromium for the portal's browser tests, when no chromium is on PATH
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 && [ -z "$$GRAYLANE_CHROMIUM" ]; then \
		echo "installing Debian's chromium for the portal's browser tests"; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

## screenshot: redraw docs/portal.png, the portal during a release, from the browser test
screenshot: consul chromium
	GRAYLANE_UPDATE_SCREENSHOT=1 $(GO) test -count=1 -run='^TestBrowser$$' ./portal

clean:
	rm -rf $(TOOLS)
