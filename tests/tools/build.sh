#!/usr/bin/env bash
# Builds the generators tidegate runs (kustomize) from the Go module proxy,
# once per go.sum and Go version, and links them into DIR.
#
#   tests/tools/build.sh DIR CACHE
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$1
cache=$2
version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "sigs.k8s.io/kustomize/kustomize/v5") print $(i + 1) }' "$here/go.mod")
key=$( { cat "$here/go.sum" "$here/go.mod" "$here/build.sh"; go version; } | sha256sum | cut -c1-16)
out="$cache/$key"
if [[ ! -x "$out/kustomize" ]]; then
  mkdir -p "$out.partial"
  echo "building kustomize $version from the Go module proxy" >&2
  if ! (cd "$here" && go build -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$version" \
      -o "$out.partial/kustomize" sigs.k8s.io/kustomize/kustomize/v5); then
    echo "error: go build of kustomize failed (see above)" >&2
    exit 1
  fi
  rm -rf "$out"
  mv "$out.partial" "$out"
  # Builds for other go.sum or Go versions are not used again.
  find "$cache" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
fi
ln -sfn "$out/kustomize" "$dir/kustomize"
