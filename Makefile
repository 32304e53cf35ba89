# Build, install and test the SOCI snapshotter.
#   make            build bin/soci-snapshotter-grpc and bin/soci
#   make demo       run an image lazily end to end on a private containerd + registry
#   make lint       go vet and staticcheck (pinned in scripts/install-deps.sh)
#   make test       go vet, staticcheck, unit tests (race detector on) with the fuzz seed corpora, containerd's snapshotter conformance suite, integration tests
#   make fuzz       every fuzz target of the module for FUZZTIME (default 10m) each, one after another (-parallel FUZZPARALLEL, default 1)
#   make bench      time-to-ready: overlayfs vs soci (vs --compare builds) over a shaped link (BENCH_QUICK=1: one small workload, 2 runs)
#   make bench-cluster  N nodes (1,4,8) start one image at once, direct over a shared WAN link vs through a pull-through mirror
#   make install    install binaries, systemd units and the containerd config snippet

VERSION  ?= v0.17.0-dev
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
PREFIX   ?= /usr/local
DESTDIR  ?=
TOOLS    ?= $(CURDIR)/.tools
GO       ?= go
GOTEST_FLAGS ?=
FUZZTIME ?= 10m
FUZZPARALLEL ?= 1
FUZZMINIMIZETIME ?= 5s

LDFLAGS := -X github.com/fastsoci/soci-snapshotter/internal/version.Version=$(VERSION) \
           -X github.com/fastsoci/soci-snapshotter/internal/version.Revision=$(REVISION)

BINARIES := bin/soci-snapshotter-grpc bin/soci

.PHONY: all build deps demo test unit integration fuzz install vet lint clean bench bench-cluster FORCE

all: build

build: $(BINARIES)

bin/%: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cmd/$*

# Pinned containerd, registry, nerdctl, runc and build packages in $(TOOLS).
deps:
	scripts/install-deps.sh $(TOOLS)

demo: deps build
	SOCI_TOOLS=$(TOOLS)/bin SOCI_BIN=$(CURDIR)/bin $(GO) run ./integration/cmd/demo

# Extra flags for bench/cmd/bench, e.g. BENCH_FLAGS="--compare ref=/usr/local/bin/soci-snapshotter-grpc --rtt 50ms --rate 100"
# or BENCH_FLAGS="--shaping per-conn". BENCH_QUICK=1: one small workload, 2 runs. BENCH_MATRIX=1: every
# workload on a shared 20 ms / 200 Mbit/s link and a shared 50 ms / 100 Mbit/s link.
BENCH_FLAGS ?=

bench: deps build
	SOCI_TOOLS=$(TOOLS)/bin SOCI_BIN=$(CURDIR)/bin $(GO) run ./bench/cmd/bench $(if $(BENCH_QUICK),-quick) $(if $(BENCH_MATRIX),-matrix) $(BENCH_FLAGS)

# Extra flags for bench/cmd/cluster, e.g. CLUSTER_FLAGS="--nodes 1,4 --runs 2 --rtt 50ms --rate 100".
CLUSTER_FLAGS ?=

bench-cluster: deps build
	SOCI_TOOLS=$(TOOLS)/bin SOCI_BIN=$(CURDIR)/bin $(GO) run ./bench/cmd/cluster $(CLUSTER_FLAGS)

vet:
	$(GO) vet ./...

# Static analysis: go vet, then staticcheck with the checks staticcheck.conf selects.
lint: deps
	$(GO) vet ./...
	$(TOOLS)/bin/staticcheck ./...

# The unit packages (everything but integration/), with the race detector.
# Fuzz targets run their seeds (f.Add and testdata/fuzz/) as ordinary tests.
unit:
	$(GO) test -race $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v /integration$$)

# Discovers the fuzz targets afresh, so targets added later are run too.
fuzz:
	GO="$(GO)" scripts/fuzz.sh "$(FUZZTIME)" "$(FUZZPARALLEL)" "$(FUZZMINIMIZETIME)"

integration: deps build
	SOCI_TOOLS=$(TOOLS)/bin SOCI_BIN=$(CURDIR)/bin $(GO) test $(GOTEST_FLAGS) -count=1 -timeout 25m -v ./integration/

test: deps build
	$(GO) vet ./...
	$(TOOLS)/bin/staticcheck ./...
	$(MAKE) unit
	$(MAKE) integration

install: build
	install -D -m 0755 bin/soci-snapshotter-grpc $(DESTDIR)$(PREFIX)/bin/soci-snapshotter-grpc
	install -D -m 0755 bin/soci $(DESTDIR)$(PREFIX)/bin/soci
	install -D -m 0644 deploy/soci-snapshotter.service $(DESTDIR)/etc/systemd/system/soci-snapshotter.service
	install -D -m 0644 deploy/soci-snapshotter.socket $(DESTDIR)/etc/systemd/system/soci-snapshotter.socket
	install -D -m 0644 deploy/containerd-proxy-plugin.toml $(DESTDIR)$(PREFIX)/share/soci-snapshotter/containerd-proxy-plugin.toml
	install -D -m 0644 deploy/containerd-cri.toml $(DESTDIR)$(PREFIX)/share/soci-snapshotter/containerd-cri.toml
	@test -e $(DESTDIR)/etc/soci-snapshotter-grpc/config.toml || \
		install -D -m 0644 config/testdata/default.toml $(DESTDIR)/etc/soci-snapshotter-grpc/config.toml
	@echo "Add $(PREFIX)/share/soci-snapshotter/containerd-proxy-plugin.toml to /etc/containerd/config.toml, then:"
	@echo "  systemctl daemon-reload && systemctl enable --now soci-snapshotter.socket soci-snapshotter.service && systemctl restart containerd"

clean:
	rm -rf bin out
