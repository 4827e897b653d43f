// Readable states: every generated enum value maps to its string, and a value
// this SDK does not know (a newer server) to the one that claims the least.
import { describe, expect, it } from "vitest";
import { ConversationOutcome, DeliveryOutcome, RecipientState, ResetReason, Tick } from "../src/gen/receipts/v1/receipts_pb.js";
import { conversationOutcome, deliveryOutcome, recipientState, resetReason, tick } from "../src/types.js";

describe("readable states", () => {
  it("maps every known value", () => {
    expect([Tick.SENT, Tick.DELIVERED, Tick.READ].map(tick)).toEqual(["sent", "delivered", "read"]);
    expect([RecipientState.NONE, RecipientState.DELIVERED, RecipientState.READ].map(recipientState)).toEqual([
      "none",
      "delivered",
      "read",
    ]);
    expect(
      [DeliveryOutcome.RECORDED, DeliveryOutcome.ALREADY_DELIVERED, DeliveryOutcome.NOT_A_RECIPIENT].map(deliveryOutcome),
    ).toEqual(["recorded", "already_delivered", "not_a_recipient"]);
    expect(
      [ConversationOutcome.OK, ConversationOutcome.NOT_FOUND, ConversationOutcome.PERMISSION_DENIED].map(conversationOutcome),
    ).toEqual(["ok", "not_found", "permission_denied"]);
    expect(
      [
        ResetReason.CURSOR_EXPIRED,
        ResetReason.EPOCH_CHANGED,
        ResetReason.CURSOR_INVALID,
        ResetReason.REPLAY_TOO_LARGE,
      ].map(resetReason),
    ).toEqual(["cursor_expired", "epoch_changed", "cursor_invalid", "replay_too_large"]);
  });

  it("reads an unknown value as the state that claims the least", () => {
    expect(tick(0)).toBe("sent");
    expect(tick(99)).toBe("sent");
    expect(recipientState(99)).toBe("none");
    expect(resetReason(99)).toBe("unknown");
  });
});
