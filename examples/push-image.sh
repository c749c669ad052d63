#!/bin/sh
# push-image.sh REGISTRY REPOSITORY TAG [CREATED]
#
# Pushes a minimal image (one empty layer, built at CREATED, RFC 3339;
# now by default) to a registry over plain HTTP with its HTTP API, as a
# CI pipeline would push a new build. Needs curl and sha256sum.
set -eu
registry=$1 repo=$2 tag=$3
created=${4:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

digest() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# upload FILE DIGEST: a blob, in two requests (start, then the whole of it).
upload() {
  location=$(curl -fsS -X POST -D - -o /dev/null "http://$registry/v2/$repo/blobs/uploads/" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $location in /*) location="http://$registry$location" ;; esac
  case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary "@$1" "$location${sep}digest=$2" >/dev/null
}

head -c 1024 /dev/zero >"$dir/layer" # an empty tar
layer=$(digest "$dir/layer")
printf '{"created":"%s","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' \
  "$created" "$layer" >"$dir/config"
config=$(digest "$dir/config")
upload "$dir/layer" "$layer"
upload "$dir/config" "$config"
printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"%s","size":1024}]}' \
  "$config" "$(wc -c <"$dir/config" | tr -d ' ')" "$layer" >"$dir/manifest"
curl -fsS -X PUT -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' \
  --data-binary "@$dir/manifest" "http://$registry/v2/$repo/manifests/$tag" >/dev/null
echo "pushed $registry/$repo:$tag (built $created)"
