#!/usr/bin/env bash
# A two-minute tour of Receipts with grpcurl, against a receiptd started with
#   cargo run --release --bin receiptd -- --dev-mode
# (dev mode trusts the x-receipts-user header; loopback only).
#
# Usage: examples/tour.sh [host:port]      (default 127.0.0.1:50051)
# Needs grpcurl: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
set -euo pipefail
ADDR=${1:-127.0.0.1:50051}
GRPCURL=${GRPCURL:-grpcurl}

uuid() { cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen | tr 'A-Z' 'a-z'; }
BACKEND=$(uuid); ALICE=$(uuid); BOB=$(uuid); CAROL=$(uuid)
CHAT=$(uuid); MSG=$(uuid)

as_backend() { "$GRPCURL" -plaintext -H "x-receipts-user: $BACKEND" -H "x-receipts-role: service" "$@"; }
as() { local who=$1; shift; "$GRPCURL" -plaintext -H "x-receipts-user: $who" "$@"; }

echo "== the API, discovered through server reflection"
"$GRPCURL" -plaintext "$ADDR" list

echo "== the backend creates a group chat (alice, bob, carol) and registers alice's message"
as_backend -d "{\"conversation_id\":\"$CHAT\",\"member_ids\":[\"$ALICE\",\"$BOB\",\"$CAROL\"]}" \
  "$ADDR" receipts.v1.ReceiptBackendService/CreateConversation
as_backend -d "{\"messages\":[{\"message_id\":\"$MSG\",\"conversation_id\":\"$CHAT\",\"seq\":1,\"sender_id\":\"$ALICE\"}]}" \
  "$ADDR" receipts.v1.ReceiptBackendService/RegisterMessages

echo "== alice subscribes to her receipts (in the background)"
SUB_LOG=$(mktemp)
as "$ALICE" -d '{}' "$ADDR" receipts.v1.ReceiptService/SubscribeReceipts >"$SUB_LOG" 2>&1 &
SUB_PID=$!
trap 'kill $SUB_PID 2>/dev/null || true; rm -f "$SUB_LOG"' EXIT
# Wait until the stream is live (its first event is the `live` marker).
for _ in $(seq 1 100); do grep -q '"live"' "$SUB_LOG" && break; sleep 0.1; done

tick() {
  as "$ALICE" -d "{\"conversation_id\":\"$CHAT\",\"message_ids\":[\"$MSG\"]}" \
    "$ADDR" receipts.v1.ReceiptService/GetReceipts | grep -E '"(tick|deliveredCount|readCount|recipientsTotal)"' | tr -d ' \n'
  echo
}
echo "== one tick:   $(tick)"

as "$BOB" -d "{\"message_ids\":[\"$MSG\"]}" "$ADDR" receipts.v1.ReceiptService/MarkDelivered >/dev/null
as "$CAROL" -d "{\"message_ids\":[\"$MSG\"]}" "$ADDR" receipts.v1.ReceiptService/MarkDelivered >/dev/null
echo "== two ticks:  $(tick)"

as "$BOB" -d "{\"conversation_id\":\"$CHAT\",\"message_id\":\"$MSG\"}" "$ADDR" receipts.v1.ReceiptService/MarkReadUpTo >/dev/null
echo "== 1 of 2 read: $(tick)"
as "$CAROL" -d "{\"conversation_id\":\"$CHAT\",\"message_id\":\"$MSG\"}" "$ADDR" receipts.v1.ReceiptService/MarkReadUpTo >/dev/null
echo "== blue ticks: $(tick)"

# Group changes arrive as one summary per window (1 s by default).
for _ in $(seq 1 50); do grep -q 'TICK_READ' "$SUB_LOG" && break; sleep 0.1; done
echo "== what alice's subscription received:"
cat "$SUB_LOG"
grep -q 'TICK_READ' "$SUB_LOG"
echo "== tour complete"
