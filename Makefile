# graylane: `make test` and `make demo` work on a machine with only Go, git and make.

GO       ?= go
TOOLS    := $(CURDIR)/.tools
CONSUL   := $(TOOLS)/bin/consul
# Consul is built from the Go module proxy in a throwaway module outside graylane's go.mod.
CONSUL_VERSION := v1.20.0
FUZZTIME ?= 10s
GOFILES   = $(shell git ls-files --cached --others --exclude-standard '*.go')

export GRAYLANE_CONSUL := $(CONSUL)

.PHONY: test check unit fuzz bench demo consul chromium screenshot clean

## test: format and vet checks, the race-enabled test suite (real Consul) and short fuzz runs
test: check unit fuzz

check:
	@unformatted="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

unit: consul chromium
	$(GO) test -race -count=1 ./...

fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseMeta$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzMetaYAML$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzDecide$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzDFA$$' -fuzztime=$(FUZZTIME) ./gray
	$(GO) test -run='^$$' -fuzz='^FuzzPasswordLine$$' -fuzztime=$(FUZZTIME) ./portal

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
