// Readable states: every generated enum value maps to its string, and a value
// this SDK does not know (a newer server) to the one that claims the least.
import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import {
  ConversationOutcome,
  DeliveryOutcome,
  ListRecipientsResponseSchema,
  MessageReceiptsSchema,
  RecipientFilter,
  RecipientState,
  ResetReason,
  Tick,
} from "../src/gen/receipts/v1/receipts_pb.js";
import {
  applyRange,
  conversationOutcome,
  deliveryOutcome,
  messageReceipts,
  recipientFilter,
  recipientPage,
  recipientState,
  resetReason,
  tick,
  type RecipientFilter as Filter,
} from "../src/types.js";

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

  it("sends every filter as its generated number, and refuses a string that is not one", () => {
    expect((["all", "read", "delivered_only", "not_delivered"] as const).map((f) => recipientFilter(f, "t"))).toEqual([
      RecipientFilter.UNSPECIFIED,
      RecipientFilter.READ,
      RecipientFilter.DELIVERED_ONLY,
      RecipientFilter.NOT_DELIVERED,
    ]);
    for (const bad of ["delivered", "READ", "toString", ""]) {
      expect(() => recipientFilter(bad as Filter, "listRecipients")).toThrow(TypeError);
    }
  });
});

describe("page tokens", () => {
  it("are undefined when empty, kept as sent otherwise", () => {
    const whole = messageReceipts(create(MessageReceiptsSchema, { messageId: "m" }));
    expect(whole.recipientsNextPageToken).toBeUndefined();
    expect("recipientsNextPageToken" in whole).toBe(false);
    const cut = messageReceipts(create(MessageReceiptsSchema, { messageId: "m", recipientsNextPageToken: "r1.x" }));
    expect(cut.recipientsNextPageToken).toBe("r1.x");

    const last = recipientPage(create(ListRecipientsResponseSchema, {}));
    expect(last).toEqual({ recipients: [] });
    expect("nextPageToken" in last).toBe(false);
    const more = recipientPage(
      create(ListRecipientsResponseSchema, {
        recipients: [{ userId: "u", state: RecipientState.READ, deliveredAtMs: 1n, readAtMs: 2n }],
        nextPageToken: "r1.y",
      }),
    );
    expect(more).toEqual({
      recipients: [{ userId: "u", state: "read", deliveredAt: new Date(1), readAt: new Date(2) }],
      nextPageToken: "r1.y",
    });
  });

  it("applyRange drops the token of the recipients list it replaces", () => {
    const cut = messageReceipts(
      create(MessageReceiptsSchema, { messageId: "m", seq: 5n, recipientsNextPageToken: "r1.x" }),
    );
    const range = {
      fromSeq: 1,
      toSeq: 9,
      tick: "delivered" as const,
      deliveredCount: 3,
      readCount: 0,
      recipientsTotal: 3,
      deliveredAt: new Date(7),
      readAt: null,
      recipients: [],
    };
    const applied = applyRange(cut, range);
    expect(applied).toMatchObject({ messageId: "m", tick: "delivered", recipients: [] });
    expect("recipientsNextPageToken" in applied).toBe(false);
    expect(applyRange(cut, { ...range, fromSeq: 6 })).toBe(cut);
  });
});
