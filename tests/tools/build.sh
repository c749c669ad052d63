#!/usr/bin/env bash
# Builds the tools tidegate runs or is tested against from the Go module
# proxy, each from a module of its own (kustomize here, sops in sops/), once
# per go.sum and Go version, and links them into DIR.
#
#   tests/tools/build.sh DIR CACHE
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$1
cache=$2

# build NAME MODULE_DIR PACKAGE [LDFLAGS]: go build of PACKAGE into
# CACHE/NAME/KEY, kept while the module's go.sum and the Go version hold.
build() {
  local name=$1 module=$2 package=$3 ldflags=${4:-}
  local key out
  key=$( { cat "$module/go.sum" "$module/go.mod" "$here/build.sh"; go version; } | sha256sum | cut -c1-16)
  out="$cache/$name/$key"
  if [[ ! -x "$out/$name" ]]; then
    mkdir -p "$out.partial"
    echo "building $name from the Go module proxy" >&2
    if ! (cd "$module" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.partial/$name" "$package"); then
      echo "error: go build of $name failed (see above)" >&2
      exit 1
    fi
    rm -rf "$out"
    mv "$out.partial" "$out"
    # Builds for other go.sum or Go versions are not used again.
    find "$cache/$name" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
  fi
  ln -sfn "$out/$name" "$dir/$name"
}

version() {
  awk -v m="$2" '{ for (i = 1; i < NF; i++) if ($i == m) print $(i + 1) }' "$1/go.mod"
}

kustomize=$(version "$here" sigs.k8s.io/kustomize/kustomize/v5)
build kustomize "$here" sigs.k8s.io/kustomize/kustomize/v5 \
  "-X sigs.k8s.io/kustomize/api/provenance.version=$kustomize"
build sops "$here/sops" github.com/getsops/sops/v3/cmd/sops
