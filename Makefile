# graylane: `make test` and `make demo` work on a machine with only Go, git and make.

GO       ?= go
TOOLS    := $(CURDIR)/.tools
CONSUL   := $(TOOLS)/bin/consul
# Consul is built from the Go module proxy in a throwaway module outside graylane's go.mod.
CONSUL_VERSION := v1.20.0
FUZZTIME ?= 10s
GOFILES   = $(shell git ls-files --cached --others --exclude-standard '*.go')

export GRAYLANE_CONSUL := $(CONSUL)

.PHONY: test check unit fuzz bench demo consul prometheus clean

## test: format and vet checks, the race-enabled test suite (real Consul) and short fuzz runs
test: check unit fuzz

check:
	@unformatted="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

unit: consul prometheus
	$(GO) test -race -count=1 ./...

fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseMeta$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzMetaYAML$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzDecide$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzDFA$$' -fuzztime=$(FUZZTIME) ./gray

## bench: the decision benchmarks, with allocations
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./gray

## demo: a whole gray release on a throwaway Consul agent (canary and blue/green)
demo: consul
	$(GO) run ./examples/release

## consul: build the Consul agent used by the tests (once; about 5 minutes cold)
consul: $(CONSUL)

$(CONSUL):
	@echo "building consul $(CONSUL_VERSION) from the Go module proxy into $(TOOLS)/bin (once)"
	mkdir -p $(TOOLS)/consul-build $(TOOLS)/bin
	cd $(TOOLS)/consul-build && \
	printf 'module graylane.local/consul-build\n\ngo 1.26\n\nreplace github.com/hashicorp/consul/troubleshoot => github.com/hashicorp/consul/troubleshoot v0.7.1\n' > go.mod && \
	GOFLAGS=-mod=mod $(GO) get github.com/hashicorp/consul@$(CONSUL_VERSION) && \
	GOFLAGS=-mod=mod $(GO) build -o $(CONSUL).tmp github.com/hashicorp/consul
	mv $(CONSUL).tmp $(CONSUL)

## prometheus: the Prometheus server the rollout tests scrape with (Debian's package, when missing)
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (the rollout tests run a real Prometheus)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

clean:
	rm -rf $(TOOLS)
