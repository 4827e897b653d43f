// Every method of both clients against a real receiptd, with domain types out.
import { describe, expect, it, vi } from "vitest";
import type { MarkDeliveredRequest } from "../src/gen/receipts/v1/receipts_pb.js";
import {
  Code,
  ReceiptsError,
  createBackendClient,
  createReceiptsClient,
  createReceiptsConnection,
  getReceipts,
  getUnreadCounts,
  markDelivered,
  markReadUpTo,
  subscribe,
} from "../src/node.js";
import { mintToken } from "./receiptd.js";
import { rejection } from "./rejection.js";
import { backend, baseUrl, chat, countingTransport, uuid, type Message } from "./world.js";

describe("ReceiptService", () => {
  it("markDelivered answers per distinct message and turns the tick to delivered", async () => {
    const c = await chat(2);
    const [m1, m2] = await c.send(2);
    const before = Date.now();
    const results = await c.clients[1]!.markDelivered([m1!.id, m2!.id, m1!.id]);
    expect(results.map((r) => [r.messageId, r.outcome])).toEqual([
      [m1!.id, "recorded"],
      [m2!.id, "recorded"],
    ]);
    expect(results[0]!.deliveredAt).toBeInstanceOf(Date);
    expect(results[0]!.deliveredAt!.getTime()).toBeGreaterThanOrEqual(before - 1000);

    const again = await c.clients[1]!.markDelivered([m1!.id]);
    expect(again[0]!.outcome).toBe("already_delivered");
    const own = await c.clients[0]!.markDelivered([m1!.id]);
    expect(own[0]).toEqual({ messageId: m1!.id, outcome: "not_a_recipient", deliveredAt: null });

    const [state] = await c.clients[0]!.getReceipts(c.conversationId, [m1!.id]);
    expect(state!.tick).toBe("delivered");
  });

  it("markReadUpTo moves the watermark once and reports the unread count", async () => {
    const c = await chat(2);
    const ms = await c.send(3);
    const first = await c.clients[1]!.markReadUpTo(c.conversationId, ms[1]!.id);
    const main = { threadRootMessageId: null, unreadCount: 1, conversationUnreadCount: 1 };
    expect(first).toEqual({ readUpToSeq: 2, advanced: true, ...main });
    const late = await c.clients[1]!.markReadUpTo(c.conversationId, ms[0]!.id);
    expect(late).toEqual({ readUpToSeq: 2, advanced: false, ...main });
  });

  it("getReceipts returns counts, times as Dates, and recipients when asked", async () => {
    const c = await chat(3);
    const sentAt = new Date("2026-01-02T03:04:05.678Z");
    const m = { id: uuid(), seq: 1 };
    await backend().registerMessages([
      { messageId: m.id, conversationId: c.conversationId, seq: 1, senderId: c.users[0]!, sentAt },
    ]);
    await c.clients[1]!.markReadUpTo(c.conversationId, m.id);

    const [plain] = await c.clients[0]!.getReceipts(c.conversationId, [m.id]);
    expect(plain).toMatchObject({
      messageId: m.id,
      conversationId: c.conversationId,
      seq: 1,
      senderId: c.users[0],
      sentAt,
      tick: "sent",
      deliveredCount: 1,
      readCount: 1,
      recipientsTotal: 2,
      deliveredAt: null,
      readAt: null,
      recipients: [],
    });

    const [full] = await c.clients[0]!.getReceipts(c.conversationId, [m.id], { includeRecipients: true });
    const byUser = new Map(full!.recipients.map((r) => [r.userId, r]));
    expect(byUser.get(c.users[1]!)!.state).toBe("read");
    expect(byUser.get(c.users[1]!)!.readAt).toBeInstanceOf(Date);
    expect(byUser.get(c.users[2]!)).toEqual({
      userId: c.users[2],
      state: "none",
      deliveredAt: null,
      readAt: null,
    });
  });

  it("getUnreadCounts and markConversationsRead answer per conversation", async () => {
    const a = await chat(2);
    await a.send(2);
    const b = await chat(2);
    await b.send(1);
    const stranger = uuid();
    const me = a.clients[1]!;
    // The same user in b: b.users[1] is another user, so b is not this user's.
    const counts = await me.getUnreadCounts([a.conversationId, b.conversationId, stranger]);
    expect(counts).toEqual([
      { conversationId: a.conversationId, outcome: "ok", unreadCount: 2, readUpToSeq: 0, lastSeq: 2, mainUnreadCount: 2, threads: [] },
      { conversationId: b.conversationId, outcome: "permission_denied", unreadCount: 0, readUpToSeq: 0, lastSeq: 0, mainUnreadCount: 0, threads: [] },
      { conversationId: stranger, outcome: "not_found", unreadCount: 0, readUpToSeq: 0, lastSeq: 0, mainUnreadCount: 0, threads: [] },
    ]);
    const read = await me.markConversationsRead([a.conversationId, stranger]);
    expect(read).toEqual([
      { conversationId: a.conversationId, threadRootMessageId: null, outcome: "ok", readUpToSeq: 2, advanced: true },
      { conversationId: stranger, threadRootMessageId: null, outcome: "not_found", readUpToSeq: 0, advanced: false },
    ]);
    const [after] = await me.getUnreadCounts([a.conversationId]);
    expect(after!.unreadCount).toBe(0);
  });

  it("privacy settings round-trip and hide reads from the sender", async () => {
    const c = await chat(2);
    const [m] = await c.send(1);
    const reader = c.clients[1]!;
    expect(await reader.getPrivacySettings()).toEqual({ sendReadReceipts: true });
    expect(await reader.updatePrivacySettings({ sendReadReceipts: false })).toEqual({ sendReadReceipts: false });
    expect(await reader.getPrivacySettings()).toEqual({ sendReadReceipts: false });
    await reader.markReadUpTo(c.conversationId, m!.id);
    const [seen] = await c.clients[0]!.getReceipts(c.conversationId, [m!.id]);
    expect([seen!.tick, seen!.readCount, seen!.deliveredCount]).toEqual(["delivered", 0, 1]);
  });
});

describe("markDelivered with conversations", () => {
  it("groups messages by conversation and answers in the order given, mixed with ids alone", async () => {
    const a = await chat(2);
    const b = await chat(a.users); // the same two people, another conversation
    const [a1, a2, a3] = await a.send(3);
    const [b1, b2] = await b.send(2);
    const t = countingTransport();
    const bob = createReceiptsClient({ transport: t.transport, token: mintToken(a.users[1]!, "user") });
    const inA = (m: Message) => ({ conversationId: a.conversationId, messageId: m.id });
    const inB = (m: Message) => ({ conversationId: b.conversationId, messageId: m.id });
    const results = await bob.markDelivered([inB(b1!), a1!.id, inA(a2!), inB(b2!), a3!.id, inA(a3!), inB(b1!)]);
    // The server answers ids alone first (a1, then b1, b2, a2, a3): the SDK
    // gives them back in the caller's order, one per distinct message.
    expect(results.map((r) => [r.messageId, r.outcome])).toEqual(
      [b1, a1, a2, b2, a3].map((m) => [m!.id, "recorded"]),
    );
    expect(results.every((r) => r.deliveredAt instanceof Date)).toBe(true);

    // One call: ids alone as given (a3, named with its conversation too, is
    // sent only with it), the others grouped by conversation, first seen first.
    const sent = t.calls.filter((x) => x.method === "MarkDelivered").map((x) => x.message as MarkDeliveredRequest);
    expect(sent).toHaveLength(1);
    expect(sent[0]!.messageIds).toEqual([a1!.id]);
    expect(sent[0]!.conversations.map((g) => [g.conversationId, g.messageIds])).toEqual([
      [b.conversationId, [b1!.id, b2!.id, b1!.id]],
      [a.conversationId, [a2!.id, a3!.id]],
    ]);

    const ticks = [
      ...(await a.clients[0]!.getReceipts(a.conversationId, [a1!.id, a2!.id, a3!.id])),
      ...(await b.clients[0]!.getReceipts(b.conversationId, [b1!.id, b2!.id])),
    ].map((m) => m.tick);
    expect(ticks).toEqual(["delivered", "delivered", "delivered", "delivered", "delivered"]);
    const again = await bob.markDelivered([inA(a1!), b2!.id]);
    expect(again.map((r) => [r.messageId, r.outcome])).toEqual([
      [a1!.id, "already_delivered"],
      [b2!.id, "already_delivered"],
    ]);
  });

  it("rejects a message named under a conversation it is not in as NOT_FOUND, recording nothing", async () => {
    const a = await chat(2);
    const b = await chat(a.users);
    const [a1, a2] = await a.send(2);
    await b.send(1);
    const bob = a.clients[1]!;
    const right = { conversationId: a.conversationId, messageId: a1!.id };
    // Another conversation of the caller's: the message is not found in it.
    // An unknown conversation: the conversation is not found.
    const unknown = uuid();
    for (const [wrong, named] of [
      [b.conversationId, a2!.id],
      [unknown, unknown],
    ] as const) {
      const e = await rejection(bob.markDelivered([right, { conversationId: wrong, messageId: a2!.id }]));
      expect(e).toBeInstanceOf(ReceiptsError);
      expect(e.code).toBe(Code.NotFound);
      expect(e.field).toMatch(/^conversations/);
      expect(e.rawMessage).toContain(named);
      expect(e.retryable).toBe(false);
    }
    // All or nothing: not even the message named rightly was recorded.
    const states = await a.clients[0]!.getReceipts(a.conversationId, [a1!.id, a2!.id]);
    expect(states.map((m) => [m.tick, m.deliveredCount])).toEqual([
      ["sent", 0],
      ["sent", 0],
    ]);
    const fixed = await bob.markDelivered([right, { conversationId: a.conversationId, messageId: a2!.id }]);
    expect(fixed.map((r) => r.outcome)).toEqual(["recorded", "recorded"]);
  });

  it("rejects one message named under two conversations as INVALID_ARGUMENT", async () => {
    const a = await chat(2);
    const b = await chat(a.users);
    const [a1] = await a.send(1);
    await b.send(1);
    const bob = a.clients[1]!;
    const e = await rejection(
      bob.markDelivered([
        { conversationId: a.conversationId, messageId: a1!.id },
        { conversationId: b.conversationId, messageId: a1!.id },
      ]),
    );
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.field).toMatch(/^conversations/);
    const [state] = await a.clients[0]!.getReceipts(a.conversationId, [a1!.id]);
    expect(state!.deliveredCount).toBe(0);
  });

  it("takes what getReceipts returned, through the standalone function too", async () => {
    const c = await chat(2);
    const ms = await c.send(2);
    const reader = createReceiptsConnection({ baseUrl: baseUrl(), token: mintToken(c.users[1]!, "user") });
    const states = await getReceipts(reader, c.conversationId, ms.map((m) => m.id));
    const results = await markDelivered(reader, states);
    expect(results.map((r) => [r.messageId, r.outcome])).toEqual(ms.map((m) => [m.id, "recorded"]));
  });
});

describe("standalone functions", () => {
  it("markDelivered, markReadUpTo and getReceipts of a connection act as the client's methods", async () => {
    const c = await chat(2);
    const [m1, m2] = await c.send(2);
    const [sender, reader] = c.users.map((id) =>
      createReceiptsConnection({ baseUrl: baseUrl(), token: mintToken(id, "user") }),
    );
    const delivered = await markDelivered(reader!, [m1!.id]);
    expect(delivered.map((r) => r.outcome)).toEqual(["recorded"]);
    expect(await markReadUpTo(reader!, c.conversationId, m2!.id)).toEqual({
      readUpToSeq: 2,
      advanced: true,
      unreadCount: 0,
      threadRootMessageId: null,
      conversationUnreadCount: 0,
    });
    expect((await getUnreadCounts(reader!, [c.conversationId]))[0]!.unreadCount).toBe(0);
    const states = await getReceipts(sender!, c.conversationId, [m1!.id, m2!.id]);
    expect(states.map((m) => m.tick)).toEqual(["read", "read"]);
    // The same calls through the client agree.
    expect(await c.clients[0]!.getReceipts(c.conversationId, [m1!.id, m2!.id])).toEqual(states);
  });

  it("subscribe(connection) streams the caller's receipts", async () => {
    const c = await chat(2);
    const connection = createReceiptsConnection({ baseUrl: baseUrl(), token: mintToken(c.users[0]!, "user") });
    const sub = subscribe(connection);
    const events = sub[Symbol.asyncIterator]();
    expect((await events.next()).value).toMatchObject({ type: "live" });
    const [m] = await c.send(1);
    await c.clients[1]!.markDelivered([m!.id]);
    const next = (await events.next()).value as { type: string; messages: { messageId: string; tick: string }[] };
    expect(next.type).toBe("receipts");
    expect(next.messages.map((x) => [x.messageId, x.tick])).toEqual([[m!.id, "delivered"]]);
    sub.close();
  });

  it("createReceiptsConnection checks its options like createReceiptsClient", () => {
    expect(() => createReceiptsConnection({ baseUrl: baseUrl() })).toThrow(
      /^createReceiptsConnection: pass exactly one of `token` and `devUserId`/,
    );
  });
});

describe("credentials", () => {
  it("calls a token function before every call, so tokens can refresh", async () => {
    const user = uuid();
    const token = vi.fn(async () => mintToken(user, "user"));
    const client = createReceiptsClient({ baseUrl: baseUrl(), token });
    await client.getPrivacySettings();
    await client.getPrivacySettings();
    expect(token).toHaveBeenCalledTimes(2);
  });

  it("dev mode acts as devUserId through the x-receipts-user header", async () => {
    const c = await chat(2);
    const [m] = await c.send(1);
    const dev = createReceiptsClient({ baseUrl: baseUrl(), devUserId: c.users[1]! });
    const [r] = await dev.markDelivered([m!.id]);
    expect(r!.outcome).toBe("recorded");
    const devBackend = createBackendClient({ baseUrl: baseUrl(), devUserId: uuid() });
    expect(await devBackend.createConversation(uuid(), [uuid(), uuid()])).toEqual({ created: true });
  });

  it("refuses options without exactly one credential, or without an address", () => {
    expect(() => createReceiptsClient({ baseUrl: baseUrl() })).toThrow(/exactly one of `token` and `devUserId`/);
    expect(() => createReceiptsClient({ baseUrl: baseUrl(), token: "t", devUserId: uuid() })).toThrow(TypeError);
    expect(() => createBackendClient({ token: "t" })).toThrow(/`baseUrl`/);
  });
});

describe("ReceiptBackendService", () => {
  it("creates conversations idempotently", async () => {
    const b = backend();
    const id = uuid();
    const members = [uuid(), uuid()];
    expect(await b.createConversation(id, members)).toEqual({ created: true });
    expect(await b.createConversation(id, members)).toEqual({ created: false });
  });

  it("adds and removes members from a seq on", async () => {
    const c = await chat(2);
    const b = backend();
    const carol = uuid();
    expect(await b.addMembers(c.conversationId, [{ userId: carol, fromSeq: 2 }])).toEqual({ added: 1, memberCount: 3 });
    expect(await b.addMembers(c.conversationId, [{ userId: carol, fromSeq: 2 }])).toEqual({ added: 0, memberCount: 3 });
    const [m1, m2] = await c.send(2);
    const [first, second] = await c.clients[0]!.getReceipts(c.conversationId, [m1!.id, m2!.id]);
    expect([first!.recipientsTotal, second!.recipientsTotal]).toEqual([1, 2]);
    expect(await b.removeMembers(c.conversationId, [{ userId: carol, fromSeq: 3 }])).toEqual({ removed: 1, memberCount: 2 });
  });

  it("registers messages idempotently and counts only new ones", async () => {
    const c = await chat(2);
    const b = backend();
    const batch = [1, 2].map((seq) => ({
      messageId: uuid(),
      conversationId: c.conversationId,
      seq,
      senderId: c.users[0]!,
      sentAt: 1_700_000_000_000 + seq,
    }));
    expect(await b.registerMessages(batch)).toEqual({ registered: 2 });
    expect(await b.registerMessages(batch)).toEqual({ registered: 0 });
    const [m] = await c.clients[0]!.getReceipts(c.conversationId, [batch[0]!.messageId]);
    expect(m!.sentAt).toEqual(new Date(1_700_000_000_001));
  });
});
