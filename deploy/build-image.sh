#!/usr/bin/env bash
# Builds the receiptd container image (deploy/Containerfile) from a locally
# assembled root filesystem: the binary, the shared libraries `ldd` says it
# loads, a CA bundle, /etc/passwd with the non-root user 65532. No base image
# and no registry are involved.
#
#   deploy/build-image.sh [--binary PATH] [--tag NAME:TAG] [--engine podman|docker]
#
# Without --binary it builds target/release/receiptd (cargo --locked). The
# image is only as portable as the binary's glibc: it carries the libraries of
# the machine that built it, so build where the binary was built.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=
tag=localhost/receiptd:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
engine=
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--tag NAME:TAG] [--engine podman|docker]" >&2; exit 64 ;;
  esac
done
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null; then engine=docker
  else echo "$0: needs podman or docker" >&2; exit 1; fi
fi
if [ -z "$binary" ]; then
  cargo build --release --locked -p receipts-server --bin receiptd
  binary=target/release/receiptd
fi
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$ctx/data"
mkdir -m 1777 "$root/tmp"
# Debug symbols stay with the build, not in the image.
strip -o "$root/usr/local/bin/receiptd" "$binary"
# Every library the dynamic loader would load, and the loader itself, at the
# paths the binary names (symbolic links resolved).
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
cp deploy/Containerfile "$ctx/Containerfile"

format=()
# HEALTHCHECK is a Docker-format instruction; OCI images drop it.
[ "$engine" = podman ] && format=(--format docker)
"$engine" build "${format[@]}" -q -t "$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null
echo "built $tag from $binary ($("$engine" image inspect --format '{{.Size}}' "$tag") bytes)"
