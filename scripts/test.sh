#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first
# (Debian's redis-server, Cassandra 5.0 resolved with Maven, npm packages,
# Debian's chromium, podman and runc, grpcurl and helm from the Go module
# proxy).
# Idempotent: a second run reuses what the first installed (tools are cached
# under .cache/, cargo's build under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
mkdir -p "$CACHE"

step() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "the Rust SDK without its default \`tls\` feature builds no TLS stack (no ring, no rustls)"
if cargo tree --locked -p receipts-sdk --no-default-features -e normal | grep -E ' (ring|rustls) v'; then
  echo "receipts-sdk --no-default-features still depends on a TLS crate (above)" >&2
  exit 1
fi
# (Compiling it that way costs ~3 min of a cold tonic build with other
# features; the tree is the claim users care about.)

step "the published crates package (receipts-proto, receipts-sdk: cargo publish --dry-run)"
# --no-verify: the packaged sources are the ones every other step builds;
# a verifying dry run rebuilds both crates from scratch (~3.5 min here).
# The proto files must travel with receipts-proto, whose build reads them.
cargo package --list --locked --allow-dirty -p receipts-proto | grep -qx 'receipts/v1/receipts.proto' \
  || { echo "receipts-proto's package lacks receipts/v1/receipts.proto" >&2; exit 1; }
cargo publish --dry-run --no-verify --locked --allow-dirty -p receipts-proto -p receipts-sdk

step "build receiptd (the crash tests run the real binary), the examples and the load tool"
cargo build -p receipts-server -p receipts-examples -p receipts-bench --bins

step "backends: Redis (standalone, and a cluster of 3 masters with a replica each) and Cassandra 5.0"
. scripts/backends-up.sh

step "tests (embedded store; Cassandra persistence; the production tier's multi-node tests; the fault suite's short form)"
cargo test --workspace

# One conformance suite, many stores: the behaviour tests run unchanged
# against Redis + Cassandra and against a Redis Cluster + Cassandra.
for store in redis redis-cluster; do
  step "behaviour suites against the $store store"
  # --workspace: the same feature set as the run above, so nothing is
  # rebuilt (-p receipts-tests alone resolves features differently).
  RECEIPTS_TEST_STORE=$store cargo test --workspace \
    --test semantics --test recipients --test subscribe --test ranges --test model --test errors \
    --test sdk --test grpc_web --test serving --test threads
done

# The TypeScript SDK and the browser example: generated-code freshness, buf
# lint and breaking, type checks, Node tests and headless Chromium, all
# against the receiptd built above.
scripts/test-ts.sh

step "README tour with grpcurl against a real receiptd (reflection, dev mode, graceful stop)"
export GOBIN=$CACHE/go-bin
if [ ! -x "$GOBIN/grpcurl" ]; then
  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
target/debug/receiptd --dev-mode --listen "127.0.0.1:$PORT" --data-dir "$DATA" 2>"$DATA.log" &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null || true
  rm -rf "$DATA" "$DATA.log"
  stop_backends
}
trap cleanup EXIT
for i in $(seq 1 300); do
  if "$GOBIN/grpcurl" -plaintext -d '{"service":"receipts.v1.ReceiptService"}' "127.0.0.1:$PORT" \
      grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
    break
  fi
  if [ "$i" = 300 ]; then echo "receiptd did not become SERVING"; cat "$DATA.log"; exit 1; fi
  sleep 0.1
done
GRPCURL=$GOBIN/grpcurl examples/tour.sh "127.0.0.1:$PORT"

step "Rust SDK example: live ticks in a direct chat and a group"
target/debug/ticks "http://127.0.0.1:$PORT"
kill -TERM "$PID"
if ! wait "$PID"; then echo "receiptd did not exit cleanly on SIGTERM"; cat "$DATA.log"; exit 1; fi
echo "examples: 2 passed, 0 failed"

# The container image (deploy/Containerfile), built with podman from the
# receiptd above, run, probed, used and stopped.
scripts/test-image.sh

# The Helm chart (helm lint and template) and the compose file, without a
# cluster or an engine.
scripts/test-deploy.sh

# A smoke run, not a benchmark (debug build, a few seconds): the load tool
# starts its own receiptd, drives every kind of conversation, and prints
# its report; it fails if no receipts RPC succeeded or the report is not
# valid JSON. Real measurements use a release build and longer runs.
step "load tool smoke runs (receipts-bench, a few seconds each)"
BENCH=$(mktemp -d)
target/debug/receipts-bench --spawn target/debug/receiptd \
  --direct 10 --groups 20:2,100:1 --devices 1 --warmup-secs 1 --duration-secs 2 \
  --plot "$BENCH/embedded" --json "$BENCH/embedded.json"
# The production tier, against the backends started above: Redis's own
# counters and a short redis-benchmark ceiling on the same Redis.
target/debug/receipts-bench --spawn target/debug/receiptd \
  --server-arg=--store --server-arg=redis-scylla \
  --server-arg=--redis-urls --server-arg="$RECEIPTS_TEST_REDIS" \
  --server-arg=--redis-prefix --server-arg="bench-smoke-$$" \
  --server-arg=--scylla-nodes --server-arg="$RECEIPTS_TEST_CASSANDRA" \
  --server-arg=--scylla-keyspace --server-arg=bench_smoke \
  --direct 10 --groups 20:2 --devices 1 --warmup-secs 1 --duration-secs 2 \
  --redis-url "$RECEIPTS_TEST_REDIS" --redis-benchmark "$(command -v redis-benchmark)" \
  --redis-benchmark-requests 5000 --json "$BENCH/redis.json"
# The per-call costs in large groups (--large-groups), small here.
target/debug/receipts-bench --spawn target/debug/receiptd \
  --server-arg=--group-window-ms --server-arg=200 --large-group-window-ms 200 \
  --large-groups 50,200 --large-group-rounds 3 --json "$BENCH/large.json"
node -e 'const fs = require("fs"), dir = process.argv[1];
  const fail = (m) => { console.error("receipts-bench: " + m); process.exit(1); };
  const e = JSON.parse(fs.readFileSync(dir + "/embedded.json", "utf8"));
  if (!(e.receipts_rpcs > 0 && e.propagation_direct.count > 0 && e.noop.rpc_per_sec > 0))
    fail("embedded report is missing numbers");
  for (const p of e.plots) if (!fs.readFileSync(p, "utf8").includes("<svg")) fail(p + " is no SVG");
  if (e.plots.length !== 2) fail("expected two plots");
  const r = JSON.parse(fs.readFileSync(dir + "/redis.json", "utf8"));
  if (!(r.receipts_rpcs > 0 && r.redis.window.commands_per_receipts_rpc > 0 &&
        r.redis.benchmark.ceiling_receipts_rpc_per_sec > 0))
    fail("redis report is missing numbers");
  const l = JSON.parse(fs.readFileSync(dir + "/large.json", "utf8"));
  if (!(l.length === 20 && l.every((row) => row.call === "window flush (one summary)" || row.rounds > 0)))
    fail("large-groups report is missing rows");' "$BENCH"
rm -rf "$BENCH"

step "all passed"
