# cachetun — see README.md.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
TESTTIMEOUT ?= 25m

.PHONY: all build test test-short demo bench fuzz vet clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cachetun ./cmd/cachetun

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

# Every test, end-to-end ones included, with the race detector. Needs
# redis-server, redis-cli, redis-benchmark, memcached and the OpenSSH client
# (.ci/run installs them on Debian).
test: vet
	$(GO) test -race -count=1 -timeout $(TESTTIMEOUT) ./...

test-short:
	$(GO) test -short -count=1 ./...

# A gateway, a client and a cache on loopback, with throw-away keys.
demo: build
	$(GO) run ./test/demo -bin bin/cachetun

bench: build
	$(GO) run ./bench/cmd/cachetun-bench -bin bin/cachetun -out BENCHMARKS.md

# Run each fuzz target for FUZZTIME.
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$(go list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin
