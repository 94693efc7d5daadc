# cachetun — see README.md.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
TESTTIMEOUT ?= 25m

.PHONY: all build test test-short demo bench bench-wan fuzz vet clean package

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

# The WAN bench: laptop and gateway namespaces across an emulated link
# (bench/linkemu). Needs root (namespaces, TUN, iptables), redis-server,
# redis-benchmark and OpenSSH. A full run (6 links, 5 paths, 2 rounds)
# takes 13-14 minutes on 2 cores; it prints its estimate first. Choose with
# WANFLAGS, e.g. WANFLAGS='-links 80ms -rounds 1'.
WANFLAGS ?=
bench-wan: build
	$(GO) run ./bench/cmd/cachetun-bench-wan -bin bin/cachetun -out BENCHMARKS.md $(WANFLAGS)

# Run each fuzz target for FUZZTIME.
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$(go list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# .deb and .rpm for linux/$(GOARCH) in $(PKGDIR) (nfpm, pinned in go.mod's tool
# directive; recipe: dist/nfpm.yaml). Package versions come from a vX.Y.Z tag,
# else 0.0.0~git<commit>.
GOARCH   ?= $(shell $(GO) env GOARCH)
PKGTAG   := $(shell git describe --tags --match 'v[0-9]*' --abbrev=0 2>/dev/null)
PKGVERSION    ?= $(if $(PKGTAG),$(patsubst v%,%,$(PKGTAG)),0.0.0)
PKGPRERELEASE ?= $(if $(PKGTAG),,git$(shell git rev-parse --short HEAD 2>/dev/null))
PKGDIR   ?= bin
package:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(PKGDIR)/pkg/cachetun ./cmd/cachetun
	for p in deb rpm; do \
	  GOARCH=$(GOARCH) PKGVERSION=$(PKGVERSION) PKGPRERELEASE=$(PKGPRERELEASE) PKGBIN=$(PKGDIR)/pkg/cachetun \
	    $(GO) tool nfpm package --config dist/nfpm.yaml --packager $$p --target $(PKGDIR)/ || exit 1; \
	done

clean:
	rm -rf bin
