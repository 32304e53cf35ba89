#!/usr/bin/env bash
# Installs the pinned tools the tests and the demo need into a project-local
# prefix (default: <repo>/.tools). Idempotent: a tool already at the pinned
# version is left alone. Usage: scripts/install-deps.sh [PREFIX]
set -euo pipefail

CONTAINERD_VERSION=v2.2.6
REGISTRY_VERSION=v3.1.2
NERDCTL_VERSION=v2.2.0
# crictl, the CRI client the node tests drive containerd's CRI plugin with.
CRICTL_VERSION=v1.37.0
# staticcheck 2026.2.2; supports the Go 1.26 toolchain.
STATICCHECK_VERSION=v0.8.2

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-${TOOLS_PREFIX:-$repo/.tools}}
bin=$prefix/bin
stamps=$prefix/stamps
mkdir -p "$bin" "$stamps"

log() { printf 'install-deps: %s\n' "$*" >&2; }

# Debian packages: runc (the OCI runtime), zlib1g-dev (static libz.a for the
# zTOC gzip code), iptables (nerdctl's default bridge network wants it).
apt_pkgs=()
command -v runc >/dev/null 2>&1 || apt_pkgs+=(runc)
[ -f /usr/lib/x86_64-linux-gnu/libz.a ] || [ -f /usr/lib/libz.a ] || apt_pkgs+=(zlib1g-dev)
command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 || apt_pkgs+=(fuse3)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

stamp_ok() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ] && [ -x "$bin/$1" ]; }

for tool in containerd ctr containerd-shim-runc-v2; do
  if ! stamp_ok "$tool" "$CONTAINERD_VERSION"; then
    log "building $tool $CONTAINERD_VERSION"
    GOBIN=$bin CGO_ENABLED=1 go install "github.com/containerd/containerd/v2/cmd/$tool@$CONTAINERD_VERSION"
    echo "$CONTAINERD_VERSION" >"$stamps/$tool"
  fi
done

if ! stamp_ok registry "$REGISTRY_VERSION"; then
  log "building registry $REGISTRY_VERSION"
  GOBIN=$bin go install "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
  echo "$REGISTRY_VERSION" >"$stamps/registry"
fi

if ! stamp_ok staticcheck "$STATICCHECK_VERSION"; then
  log "building staticcheck $STATICCHECK_VERSION"
  GOBIN=$bin go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
  echo "$STATICCHECK_VERSION" >"$stamps/staticcheck"
fi

if ! stamp_ok crictl "$CRICTL_VERSION"; then
  log "building crictl $CRICTL_VERSION"
  GOBIN=$bin go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  echo "$CRICTL_VERSION" >"$stamps/crictl"
fi

if ! stamp_ok nerdctl "$NERDCTL_VERSION"; then
  # `go install` of nerdctl fails: its go.mod replaces a test-only module that
  # the module zip lacks. Build from the downloaded module source instead,
  # without the one non-test file that imports that module.
  log "building nerdctl $NERDCTL_VERSION"
  src=$(GONOSUMDB=github.com/containerd/nerdctl GOFLAGS=-mod=mod \
    go mod download -json "github.com/containerd/nerdctl/v2@$NERDCTL_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { log "nerdctl source not found"; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  rm -f "$work/cmd/nerdctl/helpers/testing_linux.go"
  (cd "$work" && GONOSUMDB=github.com/containerd/nerdctl GOFLAGS=-mod=mod go build -o "$bin/nerdctl" ./cmd/nerdctl)
  echo "$NERDCTL_VERSION" >"$stamps/nerdctl"
fi

log "tools ready in $bin"
