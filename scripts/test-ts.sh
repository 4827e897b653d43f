#!/usr/bin/env bash
# Tests the TypeScript SDK (sdk-ts/) and the browser example (examples/web/)
# against the real receiptd (target/debug/receiptd, built by scripts/test.sh or
# `cargo build -p receipts-server --bin receiptd`) and Debian's Chromium.
#
# Idempotent: a clean install runs only when a node_modules is missing or was
# not installed from the current package-lock.json; Chromium is installed
# with apt only if missing.
# Fails (never skips) when receiptd or Chromium is missing or does not start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SDK=$ROOT/sdk-ts
WEB=$ROOT/examples/web
export npm_config_loglevel=error npm_config_fund=false npm_config_audit=false

step() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() { printf 'test-ts: %s\n' "$*" >&2; exit 1; }

export RECEIPTD=$ROOT/target/debug/receiptd
[ -x "$RECEIPTD" ] || fail "$RECEIPTD is missing: run \`cargo build -p receipts-server --bin receiptd\` first"
command -v node >/dev/null || fail "node is not installed"

step "Chromium from Debian's packages"
export CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
"$CHROMIUM" --version 2>/dev/null || fail "$CHROMIUM does not run"

# A clean install of exactly the locked versions (`npm ci`), unless
# node_modules was installed from this very package-lock.json. The lockfiles
# list every platform's optional packages (buf's, rollup's and esbuild's
# builds for other systems), so `npm ci` accepts them on any machine and
# installs only what this platform needs: what the registry lists on a given
# day never changes what is installed or whether the run passes.
install() {
  local dir=$1 stamp=$1/node_modules/.receipts-lock.sha256 want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "${dir#"$ROOT"/}: node_modules matches package-lock.json, reused"
    return
  fi
  (cd "$dir" && npm ci --no-audit --no-fund --no-update-notifier) ||
    fail "${dir#"$ROOT"/}: npm ci failed (is package-lock.json in sync with package.json? run \`npm install\` there and commit the lockfile)"
  echo "$want" >"$stamp"
}

step "npm dependencies"
install "$SDK"
install "$WEB"

cd "$SDK"
BIN=$SDK/node_modules/.bin
export PATH=$BIN:$PATH # buf runs the protoc-gen-es plugin from here
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

step "generated code (src/gen) is what buf.gen.yaml makes from proto/"
"$BIN/buf" generate -o "$SCRATCH/gen"
if ! diff -ru src/gen "$SCRATCH/gen/src/gen"; then
  fail "sdk-ts/src/gen is stale: run \`npm run generate\` in sdk-ts and commit the result"
fi
echo "src/gen is up to date"

step "buf lint"
"$BIN/buf" lint ../proto
echo "buf lint: clean"

step "buf breaking against the committed baseline (sdk-ts/proto-baseline.binpb)"
"$BIN/buf" breaking ../proto --against proto-baseline.binpb
echo "no breaking change"
# The check must be able to fail: deleting a field from a copy is caught.
cp -r ../proto/buf.yaml ../proto/receipts "$SCRATCH/"
sed -i 's/^  bool include_recipients = 3;$/  reserved 3;/' "$SCRATCH/receipts/v1/receipts.proto"
grep -q '^  reserved 3;$' "$SCRATCH/receipts/v1/receipts.proto" || fail "negative control: could not edit the proto copy"
if "$BIN/buf" breaking "$SCRATCH" --against proto-baseline.binpb >/dev/null 2>&1; then
  fail "buf breaking did not catch a deleted field"
fi
echo "a deleted field is caught"

step "type check and build the SDK"
"$BIN/tsc" --noEmit
rm -rf dist
"$BIN/tsc" -p tsconfig.build.json
# The package as consumers import it (package.json exports, Node condition).
node --input-type=module -e '
  const sdk = await import("@receipts/sdk");
  for (const name of ["createReceiptsClient", "createBackendClient", "ReceiptsError", "ReceiptService"]) {
    if (!(name in sdk)) { console.error("missing export " + name); process.exit(1); }
  }
  console.log("@receipts/sdk resolves to dist/ and exports its API");'

step "bundle size: a page that only marks delivered ships less than the whole client"
# Fails unless tree-shaking leaves the subscription, receipt state and read
# marker out of a page that imports only markDelivered (sdk-ts/README.md, "Bundle size").
node scripts/bundle-size.mjs

step "npm pack: what publishing would ship"
npm pack --dry-run --json 2>/dev/null > "$SCRATCH/pack.json"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[0];
  const files = new Set(r.files.map((f) => f.path));
  const fail = (m) => { console.error("npm pack: " + m); process.exit(1); };
  for (const f of ["package.json", "README.md", "CHANGELOG.md", "LICENSE",
                   "dist/index.js", "dist/index.d.ts", "dist/node.js", "dist/node.d.ts"])
    if (!files.has(f)) fail("missing " + f);
  for (const f of files)
    if (f.startsWith("test/") || f.startsWith("node_modules/") || f.endsWith(".binpb")) fail("ships " + f);
  console.log(`npm pack: ${r.name}@${r.version}, ${r.entryCount} files, ${r.size} bytes packed`);' "$SCRATCH/pack.json"

step "type check the example"
(cd "$WEB" && node_modules/.bin/tsc --noEmit && node_modules/.bin/tsc --noEmit -p tsconfig.node.json)
echo "examples/web: clean"

step "SDK tests (vitest, Node) against a real receiptd"
"$BIN/vitest" run --reporter=default --reporter=json --outputFile.json="$SCRATCH/sdk.json"

step "browser end to end (headless Chromium, vite preview, real receiptd)"
(cd "$WEB" && node_modules/.bin/vitest run --reporter=default --reporter=json --outputFile.json="$SCRATCH/web.json")

node -e '
  let passed = 0, failed = 0;
  for (const f of process.argv.slice(1)) {
    const r = require(f);
    passed += r.numPassedTests;
    failed += r.numFailedTests;
  }
  console.log(`\nts: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);' "$SCRATCH/sdk.json" "$SCRATCH/web.json"
