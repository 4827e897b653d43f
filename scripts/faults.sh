#!/usr/bin/env bash
# The fault suite's long form (docs/reliability.md): 20 kill -9 cycles of the
# embedded store, 5 node kills, a Redis restart, Redis down 30 s, Cassandra
# down 60 s, a Redis Cluster master failover, and a 30-minute soak with RSS
# sampled. Installs and starts the backends like scripts/test.sh. The test
# command runs the short form of the same tests.
#
#   scripts/faults.sh                 # the long form (about 35 minutes)
#   scripts/faults.sh soak            # only tests whose name contains "soak"
#   RECEIPTS_SOAK_SECS=600 scripts/faults.sh soak
#
# Every figure line starts with "faults:"; the full output is kept in
# target/faults.log.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p receipts-server --bin receiptd
. scripts/backends-up.sh

export RECEIPTS_FAULTS=${RECEIPTS_FAULTS:-long}
# Two at a time: the soak runs beside the faults (its RSS is its own
# process's), and the whole form ends with the soak.
status=0
cargo test --locked -p receipts-tests --test faults -- --nocapture --test-threads 2 "$@" \
  >target/faults.log 2>&1 || status=$?
grep -E '^(faults:|  +[0-9]+ s |test |test result)' target/faults.log || true
if [ "$status" != 0 ]; then
  echo "fault suite failed; see target/faults.log"
fi
exit "$status"
