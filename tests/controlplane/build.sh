#!/usr/bin/env bash
# Builds the test control plane (tidegate-controlplane) and helm from the Go
# module proxy, once per go.sum and Go version, and kustomize and sops
# (tests/tools, cached apart), and links them into target/tools/bin. Prints the directory holding the binaries.
#
#   tests/controlplane/build.sh          build if not cached
#   TIDEGATE_TOOLS_CACHE=DIR             where builds are cached
#                                        (default ~/.cache/tidegate/tools)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

if ! command -v go >/dev/null 2>&1; then
  echo "error: the test control plane is built with Go (>= 1.24), and no 'go' is on PATH." >&2
  echo "Install Go, then run tests/controlplane/build.sh again." >&2
  exit 1
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/go.mod")
helm_version=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' "$here/go.mod")
key=$( { cat "$here/go.sum" "$here/go.mod" "$here"/*.go "$here/build.sh"; go version; } | sha256sum | cut -c1-16)
cache=${TIDEGATE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tidegate/tools}
out="$cache/$key"

if [[ ! -x "$out/tidegate-controlplane" || ! -x "$out/helm" ]]; then
  mkdir -p "$out.partial"
  cd "$here"
  start=$(date +%s)
  echo "building the test control plane: Kubernetes $k8s_version and helm $helm_version from the Go module proxy" >&2
  echo "(a cold build downloads about 140 MB of modules and compiles for about 8 minutes on 2 cores; later runs reuse $cache)" >&2

  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  minor=$(echo "$k8s_version" | cut -d. -f2)
  kv() { echo "-X $1.gitVersion=$k8s_version -X $1.gitMajor=1 -X $1.gitMinor=$minor -X $1.gitTreeState=clean -X $1.buildDate=$build_date"; }
  ldflags="-s -w $(kv k8s.io/component-base/version) $(kv k8s.io/client-go/pkg/version)"

  # `go build -v` names each module it downloads and each package it compiles:
  # counted into a heartbeat, so a long cold build never sits silent.
  progress() {
    awk -v what="$1" '
      /^go: downloading/ { d++; if (d % 50 == 0) printf "  %s: downloaded %d modules\n", what, d > "/dev/stderr"; next }
      /^#|\.go:[0-9]+:|^go: / { print > "/dev/stderr"; next }
      { n++; if (n % 100 == 0) printf "  %s: compiled %d packages (%ds)\n", what, n, systime() - start > "/dev/stderr" }' start="$start"
  }
  if ! go build -v -trimpath -ldflags "$ldflags" -o "$out.partial/tidegate-controlplane" . 2>&1 | progress tidegate-controlplane; then
    echo "error: go build of the control plane failed (see above)" >&2
    exit 1
  fi
  if ! go build -v -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
    -o "$out.partial/helm" helm.sh/helm/v3/cmd/helm 2>&1 | progress helm; then
    echo "error: go build of helm failed (see above)" >&2
    exit 1
  fi
  rm -rf "$out"
  mv "$out.partial" "$out"
  # Builds for other go.sum or Go versions are not used again.
  find "$cache" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
  echo "built in $(($(date +%s) - start))s into $out" >&2
fi

# kustomize and sops, each from a module of its own (tests/tools), cached apart.
bash "$root/tests/tools/build.sh" "$out" "$cache-generators"

mkdir -p "$target/tools"
ln -sfn "$out" "$target/tools/bin"
echo "$target/tools/bin"
