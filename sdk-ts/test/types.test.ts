// Readable states: every generated enum value maps to its string, and a value
// this SDK does not know (a newer server) to the one that claims the least.
import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import {
  ConversationOutcome,
  ConversationReadResultSchema,
  ConversationUnreadSchema,
  DeliveryOutcome,
  ListRecipientsResponseSchema,
  MarkReadUpToResponseSchema,
  MessageReceiptsSchema,
  RecipientFilter,
  RecipientState,
  ResetReason,
  Tick,
  WatermarkSyncSchema,
} from "../src/gen/receipts/v1/receipts_pb.js";
import {
  applyRange,
  conversationOutcome,
  conversationReadResult,
  conversationUnread,
  deliveryOutcome,
  messageReceipts,
  readUpToResult,
  recipientFilter,
  recipientPage,
  recipientState,
  resetReason,
  tick,
  watermark,
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

describe("threads in conversions", () => {
  it("an empty thread root is the main timeline (null), any other is kept", () => {
    const main = watermark(create(WatermarkSyncSchema, { conversationId: "c", readUpToSeq: 3n, unreadCount: 2n, conversationUnreadCount: 5n }));
    expect(main).toEqual({ conversationId: "c", threadRootMessageId: null, readUpToSeq: 3, unreadCount: 2, conversationUnreadCount: 5 });
    const inThread = watermark(create(WatermarkSyncSchema, { conversationId: "c", threadRootMessageId: "r", unreadCount: 1n, conversationUnreadCount: 4n }));
    expect(inThread).toMatchObject({ threadRootMessageId: "r", unreadCount: 1, conversationUnreadCount: 4 });
    expect(conversationReadResult(create(ConversationReadResultSchema, { conversationId: "c" })).threadRootMessageId).toBeNull();
    expect(
      conversationReadResult(create(ConversationReadResultSchema, { conversationId: "c", threadRootMessageId: "r" })).threadRootMessageId,
    ).toBe("r");
  });

  it("a conversation count of 0 (an event logged, or a server, before threads) is the timeline's count", () => {
    const old = watermark(create(WatermarkSyncSchema, { conversationId: "c", readUpToSeq: 3n, unreadCount: 2n }));
    expect(old.conversationUnreadCount).toBe(2);
    const read = readUpToResult(create(MarkReadUpToResponseSchema, { readUpToSeq: 3n, advanced: true, unreadCount: 2n }));
    expect(read).toEqual({ readUpToSeq: 3, advanced: true, unreadCount: 2, threadRootMessageId: null, conversationUnreadCount: 2 });
    const inThread = readUpToResult(
      create(MarkReadUpToResponseSchema, { readUpToSeq: 9n, unreadCount: 0n, threadRootMessageId: "r", conversationUnreadCount: 4n }),
    );
    expect(inThread).toMatchObject({ unreadCount: 0, threadRootMessageId: "r", conversationUnreadCount: 4 });
  });

  it("unread counts carry the threads, and the main timeline's count from a server before threads", () => {
    const withThreads = conversationUnread(
      create(ConversationUnreadSchema, {
        conversationId: "c",
        outcome: ConversationOutcome.OK,
        unreadCount: 5n,
        readUpToSeq: 2n,
        lastSeq: 9n,
        mainUnreadCount: 0n,
        threads: [{ threadRootMessageId: "r", unreadCount: 5n, readUpToSeq: 4n, lastSeq: 9n }],
      }),
    );
    expect(withThreads).toEqual({
      conversationId: "c",
      outcome: "ok",
      unreadCount: 5,
      readUpToSeq: 2,
      lastSeq: 9,
      mainUnreadCount: 0,
      threads: [{ threadRootMessageId: "r", unreadCount: 5, readUpToSeq: 4, lastSeq: 9 }],
    });
    const before = conversationUnread(
      create(ConversationUnreadSchema, { conversationId: "c", outcome: ConversationOutcome.OK, unreadCount: 3n, lastSeq: 3n }),
    );
    expect(before).toMatchObject({ unreadCount: 3, mainUnreadCount: 3, threads: [] });
  });
});
