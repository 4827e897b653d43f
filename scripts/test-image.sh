#!/usr/bin/env bash
# The container image, built and run for real with Debian's podman: built from
# the receiptd that scripts/test.sh built (deploy/build-image.sh --binary),
# started as a container, checked healthy with its own HEALTHCHECK, running as
# a non-root user, serving real calls (the Rust example over the published
# port), and stopped with SIGTERM to a clean exit 0.
#
# How far this machine allows (docs/deploy.md, "How it was verified"): podman
# runs as root with runc (crun cannot run under this machine's hybrid cgroup
# layout), host networking, and explicit ulimits (the default ones exceed the
# machine's hard limits, which a container may not raise).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

step "container image: podman and runc from Debian's packages"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman runc >/dev/null
fi

tag=localhost/receiptd:ci-$$
name=receiptd-ci-$$
step "container image: build $tag from target/debug/receiptd"
deploy/build-image.sh --binary target/debug/receiptd --tag "$tag"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS=$(free_port)
run=(podman --runtime runc)
cleanup() {
  "${run[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
  podman rmi -f "$tag" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "container image: run it (dev mode, API on $PORT, metrics on $METRICS)"
"${run[@]}" run -d --name "$name" --network host \
  --ulimit nofile=16384:16384 --ulimit nproc=4096:4096 --health-interval disable \
  -e RECEIPTS_LISTEN="127.0.0.1:$PORT" -e RECEIPTS_METRICS_LISTEN="127.0.0.1:$METRICS" \
  -e RECEIPTS_DEV_MODE=true "$tag" >/dev/null

# (--health-interval disable: podman's periodic checks need systemd timers,
# which this machine lacks; the check itself is run by hand below.)
# The image's HEALTHCHECK (`receiptd health` inside the container) turns healthy.
healthy=
for _ in $(seq 1 100); do
  if "${run[@]}" healthcheck run "$name" >/dev/null 2>&1; then healthy=1; break; fi
  sleep 0.2
done
if [ -z "$healthy" ]; then
  echo "the container never passed its health check"; "${run[@]}" logs "$name"; exit 1
fi
echo "health check: healthy"

pid=$("${run[@]}" inspect --format '{{.State.Pid}}' "$name")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
if [ "$uid" != 65532 ]; then echo "receiptd runs as uid $uid, not 65532"; exit 1; fi
echo "runs as uid $uid (non-root)"
if ! python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://127.0.0.1:$METRICS/metrics" | grep -q '^receipts_build_info'; then
  echo "no metrics on $METRICS"; exit 1
fi
echo "metrics: served"

step "container image: live ticks from the Rust example against the container"
target/debug/ticks "http://127.0.0.1:$PORT"

step "container image: SIGTERM drains and exits 0"
"${run[@]}" stop -t 30 "$name" >/dev/null 2> >(grep -v 'systemd connection' >&2)
code=$("${run[@]}" inspect --format '{{.State.ExitCode}}' "$name")
if [ "$code" != 0 ]; then echo "exit code $code after SIGTERM"; "${run[@]}" logs "$name"; exit 1; fi
# The log of a container just stopped may reach `podman logs` a moment
# later (seen once in CI: the drain line missing, then there): look for up
# to 10 s.
drained=
for _ in $(seq 20); do
  if "${run[@]}" logs "$name" 2>&1 | grep -q 'drain'; then drained=1; break; fi
  sleep 0.5
done
if [ -z "$drained" ]; then
  echo "no drain in the container's log:"; "${run[@]}" logs "$name"; exit 1
fi
echo "stopped with exit code 0 after a drain"
echo "container image: 4 passed, 0 failed"
