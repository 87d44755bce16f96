# graylane: `make test` and `make demo` work on a machine with only Go, git and make.
#
# What the tests need besides Go, and where it comes from:
#   consul      the pinned version: CONSUL=/path, else a `consul` on PATH of that version, else built
#               from the Go module proxy into .tools/bin (once, 5 to 16 minutes)
#   prometheus  GRAYLANE_PROMETHEUS_BIN=/path, else on PATH, else Debian's package (apt-get)
#   chromium    GRAYLANE_CHROMIUM=/path, else chromium on PATH, else Debian's package (apt-get)
#   docker-compose (validates docker-compose.yml offline; no engine) on PATH, else Debian's package
# On a machine without apt-get a missing one stops `make test` before anything runs, with one line
# saying what to install or which variable to set.

SHELL    := /bin/bash
GO       ?= go
TOOLS    := $(CURDIR)/.tools
# Consul is built from the Go module proxy in a throwaway module outside graylane's go.mod.
CONSUL_VERSION := v1.20.0
CONSUL_BUILT   := $(TOOLS)/bin/consul
CONSUL ?= $(shell p=$$(command -v consul 2>/dev/null); \
  if [ -n "$$p" ] && "$$p" version 2>/dev/null | head -1 | grep -qx 'Consul $(CONSUL_VERSION)'; then echo "$$p"; \
  else echo "$(CONSUL_BUILT)"; fi)
# Fuzzing runs a number of executions per target, not a duration: with a duration, Go 1.26's fuzz
# coordinator can fail a target with "context deadline exceeded" as the time runs out, a race in the
# toolchain (golang/go#75804), not a finding. Raise it for a longer hunt: make fuzz FUZZEXECS=2000000.
FUZZEXECS ?= 40000
GOFILES   = $(shell git ls-files --cached --others --exclude-standard '*.go')

export GRAYLANE_CONSUL := $(CONSUL)

.PHONY: test check unit fuzz bench demo soak consul prometheus chromium docker-compose screenshot clean compose e2e-apisix try requirements prometheus-install chromium-install docker-compose-install bench-apisix bench-scale

## test: format and vet checks, the race-enabled test suite (real Consul), short fuzz runs and the
## compose file's validation
test: requirements check unit fuzz compose

## requirements: install (Debian) or name (elsewhere) what the tests need, before anything runs
requirements: prometheus chromium docker-compose consul

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

## try: the demo's stack left running to explore, on loopback: a Consul agent, bservice with a canary
## that takes the test header and 5 % of users, cservice, graylane's plugin runner, an HTTP entry
## through either data plane, and the release portal; the graylane command is built into .tools/try.
## It prints what to try; Ctrl-C stops everything it started.
try: consul
	$(GO) run ./examples/release -try -dir $(TOOLS)/try

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

## e2e-apisix: the end-to-end check against a running APISIX whose runner is graylane's, such as
## the compose stack: GRAYLANE_E2E_GATEWAY, APISIX_ADMIN_ADDR, APISIX_ADMIN_KEY, CONSUL_HTTP_ADDR
## (defaults: the compose stack on 127.0.0.1)
e2e-apisix:
	$(GO) test -tags e2e -count=1 -v ./apisix/e2e

## bench-apisix: what a graylane route costs on a running APISIX whose runner is graylane's (the
## same variables as e2e-apisix): req/s, p50, p99 and gateway and runner CPU per request of a plain
## route, traffic-split alone and graylane's route without and with a gray lane, as a markdown table
## (GRAYLANE_BENCH_SERVICE, GRAYLANE_BENCH_DURATION, GRAYLANE_BENCH_CONNECTIONS, GRAYLANE_BENCH_ROUNDS)
bench-apisix:
	$(GO) run ./apisix/gatewaybench

## bench-scale: what one process that follows many services costs on one Consul agent at its default
## limits (http_max_conns_per_client = 200): a real agent with 100, 500 and 2,000 services × 10
## instances, one runner-shaped watcher over plain HTTP and over HTTPS (HTTP/2): time until every
## view is ready, connections, 429s, goroutines, heap and RSS per service, requests in a minute of
## quiet, propagation p50/p99 of 100 weight changes, as a markdown table (about 10 minutes; flags in
## SCALE, e.g. make bench-scale SCALE='-services 100,500 -quiet 10s -cluster'; see watch/scalebench)
SCALE ?=
bench-scale: consul
	$(GO) run ./watch/scalebench $(SCALE)

## consul: the Consul agent the tests and the demo run ($(CONSUL)): built once when no consul
## $(CONSUL_VERSION) is on PATH, with progress as "package N of M"
consul: $(CONSUL)

$(CONSUL_BUILT):
	@echo "building consul $(CONSUL_VERSION) from the Go module proxy into $(TOOLS)/bin (once: 5 to 16 minutes on 2 cores;"
	@echo "  a consul $(CONSUL_VERSION) on PATH, or CONSUL=/path/to/consul, skips this)"
	@mkdir -p $(TOOLS)/consul-build $(TOOLS)/bin
	@set -eo pipefail; cd $(TOOLS)/consul-build && \
	printf 'module graylane.local/consul-build\n\ngo 1.26\n\nreplace github.com/hashicorp/consul/troubleshoot => github.com/hashicorp/consul/troubleshoot v0.7.1\n' > go.mod && \
	echo "consul: resolving its modules (log: $(TOOLS)/consul-build/get.log)" && \
	{ GOFLAGS=-mod=mod $(GO) get github.com/hashicorp/consul@$(CONSUL_VERSION) >get.log 2>&1 || { cat get.log; exit 1; }; } && \
	total=$$(GOFLAGS=-mod=mod $(GO) list -deps github.com/hashicorp/consul | wc -l) && \
	GOFLAGS=-mod=mod $(GO) build -v -o $(CONSUL_BUILT).tmp github.com/hashicorp/consul 2>&1 | \
	  awk -v total=$$total '/^[^ :]+$$/ { n++; if (n % 100 == 0) { printf "consul: package %d of at most %d\n", n, total; fflush() } next } { print }'
	@mv $(CONSUL_BUILT).tmp $(CONSUL_BUILT)
	@echo "consul $(CONSUL_VERSION) built: $(CONSUL_BUILT)"

# debian_install NAME PACKAGE HINT: install a Debian package when apt-get exists (as root, or with
# sudo that asks no password); else print what to install, and fail.
define debian_install
	@if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: $(1) is missing: $(3)" >&2; exit 1; fi; \
	SUDO=; if [ "$$(id -u)" != 0 ]; then SUDO="sudo -n"; fi; \
	echo "installing Debian's $(2) ($(1) is missing)"; \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null || { \
	  echo "make: could not install $(2) with apt-get (needs root or sudo without a password): $(3)" >&2; exit 1; }
endef

## prometheus: the Prometheus server the rollout tests scrape with (GRAYLANE_PROMETHEUS_BIN, on
## PATH, or Debian's package)
prometheus:
	@[ -n "$$GRAYLANE_PROMETHEUS_BIN" ] || command -v prometheus >/dev/null 2>&1 || $(MAKE) -s prometheus-install

prometheus-install:
	$(call debian_install,prometheus,prometheus,install Prometheus 2.x (brew install prometheus; dnf install golang-github-prometheus) or set GRAYLANE_PROMETHEUS_BIN=/path/to/prometheus)

## chromium: the browser of the portal's browser tests (GRAYLANE_CHROMIUM, on PATH, or Debian's)
chromium:
	@[ -n "$$GRAYLANE_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  $(MAKE) -s chromium-install

chromium-install:
	$(call debian_install,chromium,chromium,install Chromium or Chrome (brew install --cask chromium; dnf install chromium) and set GRAYLANE_CHROMIUM=/path/to/it)

## docker-compose: validates docker-compose.yml offline (no engine needed; on PATH, or Debian's)
docker-compose:
	@command -v docker-compose >/dev/null 2>&1 || $(MAKE) -s docker-compose-install

docker-compose-install:
	$(call debian_install,docker-compose,docker-compose,install docker-compose v1 or v2 (brew install docker-compose; dnf install docker-compose))

## screenshot: redraw docs/portal.png, the portal of make try during its release (canary at 25 %)
screenshot: consul chromium
	GRAYLANE_UPDATE_SCREENSHOT=1 $(GO) test -count=1 -run='^TestTry$$' ./examples/release

clean:
	rm -rf $(TOOLS)
