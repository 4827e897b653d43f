// Threads against a real receiptd: a message registered under a root of the
// main timeline is read in its own timeline; the main timeline and every
// thread keep their own read position, unread count and watermark events,
// and the conversation's badge is their sum.
import { describe, expect, it } from "vitest";
import type { MarkReadUpToRequest } from "../src/gen/receipts/v1/receipts_pb.js";
import {
  Code,
  createReceiptState,
  createReceiptsClient,
  type MessageReceipts,
  type ReceiptState,
  type ReceiptsClient,
  type RecipientState,
  type Watermark,
} from "../src/node.js";
import { mintToken } from "./receiptd.js";
import { rejection } from "./rejection.js";
import { EventLog, backend, chat, countingTransport, is, until, userClient, uuid, type Chat } from "./world.js";

/**
 * A group of alice (users[0], who sends), bob (users[1], who reads) and
 * carol (users[2]), with, by seq:
 *
 *   1 r1 · 2 r2 · 3 a1 · 4 a2 · 5 a3 · 6 b1 · 7 m3 · 8 a4 (bob's)
 *
 * r1, r2 and m3 in the main timeline; a1..a4 in thread A (root r1), b1 in
 * thread B (root r2). r1's id sorts below r2's, so "highest root first" is
 * B before A whether roots are ordered by seq or by id.
 *
 * Before any read, bob's unread counts are: main 3 (r1, r2, m3), A 3 (a4 is
 * his own), B 1; the conversation 7.
 */
async function threaded() {
  const c = await chat(3);
  const [r1, r2] = [uuid(), uuid()].sort() as [string, string];
  const [a1, a2, a3, b1, m3, a4] = Array.from({ length: 6 }, uuid) as [string, string, string, string, string, string];
  const plan: [id: string, seq: number, from: number, root?: string][] = [
    [r1, 1, 0],
    [r2, 2, 0],
    [a1, 3, 0, r1],
    [a2, 4, 0, r1],
    [a3, 5, 0, r1],
    [b1, 6, 0, r2],
    [m3, 7, 0],
    [a4, 8, 1, r1],
  ];
  // One call: a root may be registered earlier in the same request.
  const { registered } = await backend().registerMessages(
    plan.map(([messageId, seq, from, threadRootMessageId]) => ({
      messageId,
      conversationId: c.conversationId,
      seq,
      senderId: c.users[from]!,
      threadRootMessageId,
    })),
  );
  expect(registered).toBe(plan.length);
  const [alice, bob, carol] = c.clients as [ReceiptsClient, ReceiptsClient, ReceiptsClient];
  return { c, alice, bob, carol, r1, r2, a1, a2, a3, b1, m3, a4, all: plan.map(([id]) => id) };
}

/** Each message's recipients' states as `{ [userId]: state }`, by message id. */
function statesOf(messages: MessageReceipts[]): Record<string, Record<string, RecipientState>> {
  return Object.fromEntries(
    messages.map((m) => [m.messageId, Object.fromEntries(m.recipients.map((r) => [r.userId, r.state]))]),
  );
}

describe("threads: registration", () => {
  it("registers a thread's messages under a main-timeline message of a group, and refuses moving one to another thread", async () => {
    const c = await chat(3);
    const [root, other] = await c.send(2);
    const [reply] = await c.send(1, 1, root!.id);
    // A thread's message is a message like any other: one tick, its recipients.
    const [state] = await c.clients[1]!.getReceipts(c.conversationId, [reply!.id]);
    expect(state).toMatchObject({ messageId: reply!.id, seq: 3, senderId: c.users[1], tick: "sent", recipientsTotal: 2 });

    const b = backend();
    const again = { messageId: reply!.id, conversationId: c.conversationId, seq: 3, senderId: c.users[1]!, threadRootMessageId: root!.id };
    expect(await b.registerMessages([again])).toEqual({ registered: 0 }); // idempotent
    // The thread is part of the message's identity.
    const moved = await rejection(b.registerMessages([{ ...again, threadRootMessageId: other!.id }]));
    expect(moved.code).toBe(Code.AlreadyExists);
    const toMain = await rejection(b.registerMessages([{ ...again, threadRootMessageId: null }]));
    expect(toMain.code).toBe(Code.AlreadyExists);
  });

  it("refuses a root that is a thread's message or comes later, registering nothing", async () => {
    const c = await chat(3);
    const [root] = await c.send(1);
    const [reply] = await c.send(1, 0, root!.id);
    const b = backend();
    const at = (seq: number, threadRootMessageId: string) => ({
      messageId: uuid(),
      conversationId: c.conversationId,
      seq,
      senderId: c.users[0]!,
      threadRootMessageId,
    });
    const later = at(10, "");
    // Threads do not nest; a root has a lower seq than its thread's messages.
    for (const bad of [[at(3, reply!.id)], [at(4, later.messageId), later]]) {
      const e = await rejection(b.registerMessages(bad));
      // INVALID_ARGUMENT for a nested thread, NOT_FOUND for a root not
      // registered before the message: either way naming the field.
      expect([Code.InvalidArgument, Code.NotFound]).toContain(e.code);
      expect(e.field).toBe("messages[0].thread_root_message_id");
      // All or nothing: none of the call's messages exists.
      for (const m of bad) {
        const unknown = await rejection(c.clients[0]!.getReceipts(c.conversationId, [m.messageId]));
        expect(unknown.code).toBe(Code.NotFound);
      }
    }
  });
});

describe("threads: reading", () => {
  it("a read in a thread reads none of the main timeline, and a read of the main timeline none of a thread", async () => {
    const t = await threaded();
    const { c } = t;
    // Bob reads thread A up to a2 (seq 4): a1 and a2, nothing else.
    expect(await t.bob.markReadUpTo(c.conversationId, t.a2)).toEqual({
      readUpToSeq: 4,
      advanced: true,
      threadRootMessageId: t.r1,
      unreadCount: 1, // a3 (a4 is his own)
      conversationUnreadCount: 5, // main 3 + A 1 + B 1
    });
    // Carol reads the main timeline up to m3 (seq 7): r1, r2 and m3, not
    // a1..a3 and b1 below it.
    expect(await t.carol.markReadUpTo(c.conversationId, t.m3)).toEqual({
      readUpToSeq: 7,
      advanced: true,
      threadRootMessageId: null,
      unreadCount: 0,
      conversationUnreadCount: 5, // A 4 (a4 is bob's) + B 1
    });
    const [bob, carol] = [c.users[1]!, c.users[2]!];
    const seen = await t.alice.getReceipts(c.conversationId, t.all.slice(0, 7), { includeRecipients: true });
    expect(statesOf(seen)).toEqual({
      [t.r1]: { [bob]: "none", [carol]: "read" },
      [t.r2]: { [bob]: "none", [carol]: "read" },
      [t.a1]: { [bob]: "read", [carol]: "none" },
      [t.a2]: { [bob]: "read", [carol]: "none" },
      [t.a3]: { [bob]: "none", [carol]: "none" },
      [t.b1]: { [bob]: "none", [carol]: "none" },
      [t.m3]: { [bob]: "none", [carol]: "read" },
    });
    expect(seen.map((m) => m.readCount)).toEqual([1, 1, 1, 1, 0, 0, 1]);

    // The root is in the main timeline: reading it moves bob's main position,
    // not his position in its thread.
    expect(await t.bob.markReadUpTo(c.conversationId, t.r1)).toMatchObject({
      readUpToSeq: 1,
      advanced: true,
      threadRootMessageId: null,
      unreadCount: 2,
      conversationUnreadCount: 4,
    });
    // A lower message of the thread is a late call in the thread (its
    // position is 4), whatever the main timeline's position.
    expect(await t.bob.markReadUpTo(c.conversationId, t.a1)).toEqual({
      readUpToSeq: 4,
      advanced: false,
      threadRootMessageId: t.r1,
      unreadCount: 1,
      conversationUnreadCount: 4,
    });

    // Each reads the other timeline too: the ticks turn blue where both read.
    await t.bob.markReadUpTo(c.conversationId, t.m3);
    await t.carol.markReadUpTo(c.conversationId, t.a2);
    const ticks = await t.alice.getReceipts(c.conversationId, t.all.slice(0, 7));
    expect(Object.fromEntries(ticks.map((m) => [m.messageId, m.tick]))).toEqual({
      [t.r1]: "read",
      [t.r2]: "read",
      [t.a1]: "read",
      [t.a2]: "read",
      [t.a3]: "sent",
      [t.b1]: "sent",
      [t.m3]: "read",
    });
  });

  it("counts unread per thread, the main timeline alone, and the conversation as their sum", async () => {
    const t = await threaded();
    const { c } = t;
    const counts = async () => (await t.bob.getUnreadCounts([c.conversationId]))[0]!;
    expect(await counts()).toEqual({
      conversationId: c.conversationId,
      outcome: "ok",
      unreadCount: 7,
      readUpToSeq: 0,
      lastSeq: 8,
      mainUnreadCount: 3,
      // Highest root first.
      threads: [
        { threadRootMessageId: t.r2, unreadCount: 1, readUpToSeq: 0, lastSeq: 6 },
        { threadRootMessageId: t.r1, unreadCount: 3, readUpToSeq: 0, lastSeq: 8 },
      ],
    });

    await t.bob.markReadUpTo(c.conversationId, t.a2);
    expect(await counts()).toMatchObject({
      unreadCount: 5,
      readUpToSeq: 0,
      mainUnreadCount: 3,
      threads: [
        { threadRootMessageId: t.r2, unreadCount: 1, readUpToSeq: 0, lastSeq: 6 },
        { threadRootMessageId: t.r1, unreadCount: 1, readUpToSeq: 4, lastSeq: 8 },
      ],
    });

    await t.bob.markReadUpTo(c.conversationId, t.m3);
    expect(await counts()).toMatchObject({ unreadCount: 2, readUpToSeq: 7, mainUnreadCount: 0 });

    // Up to his own a4: nothing of thread A is unread, so it is no longer listed.
    await t.bob.markReadUpTo(c.conversationId, t.a4);
    expect(await counts()).toMatchObject({
      unreadCount: 1,
      readUpToSeq: 7,
      mainUnreadCount: 0,
      threads: [{ threadRootMessageId: t.r2, unreadCount: 1, readUpToSeq: 0, lastSeq: 6 }],
    });
    // Carol's counts are her own: a4 is unread for her.
    const [carol] = await t.carol.getUnreadCounts([c.conversationId]);
    expect(carol).toMatchObject({ unreadCount: 8, mainUnreadCount: 3 });
    expect(carol!.threads.map((x) => [x.threadRootMessageId, x.unreadCount])).toEqual([
      [t.r2, 1],
      [t.r1, 4],
    ]);
  });

  it("markConversationsRead marks single threads, and a conversation with all its threads", async () => {
    const t = await threaded();
    const { c } = t;
    const other = await chat(c.users); // the same people, another conversation
    const [o1] = await other.send(1);
    const [o2] = await other.send(1, 0, o1!.id);
    const [stranger, strangerRoot] = [uuid(), uuid()];

    const read = await t.bob.markConversationsRead([other.conversationId], {
      threads: [
        { conversationId: c.conversationId, threadRootMessageId: t.r1 },
        { conversationId: stranger, threadRootMessageId: strangerRoot },
      ],
    });
    // Conversations first, then threads, each in request order. (Where a
    // conversation's main timeline ends up is the next test's.)
    expect(read).toEqual([
      { conversationId: other.conversationId, threadRootMessageId: null, outcome: "ok", readUpToSeq: expect.any(Number), advanced: true },
      { conversationId: c.conversationId, threadRootMessageId: t.r1, outcome: "ok", readUpToSeq: 8, advanced: true },
      { conversationId: stranger, threadRootMessageId: strangerRoot, outcome: "not_found", readUpToSeq: 0, advanced: false },
    ]);
    // Thread A only: the main timeline and thread B are as unread as before.
    const [after] = await t.bob.getUnreadCounts([c.conversationId]);
    expect(after).toMatchObject({
      unreadCount: 4,
      readUpToSeq: 0,
      mainUnreadCount: 3,
      threads: [{ threadRootMessageId: t.r2, unreadCount: 1, readUpToSeq: 0, lastSeq: 6 }],
    });
    // The other conversation was marked in its main timeline and its thread.
    const [whole] = await t.bob.getUnreadCounts([other.conversationId]);
    expect(whole).toMatchObject({ unreadCount: 0, mainUnreadCount: 0, threads: [] });
    const [o2state] = await t.alice.getReceipts(other.conversationId, [o2!.id]);
    expect(o2state!.readCount).toBe(1);

    // Again: nothing moves.
    expect(
      await t.bob.markConversationsRead([], { threads: [{ conversationId: c.conversationId, threadRootMessageId: t.r1 }] }),
    ).toEqual([{ conversationId: c.conversationId, threadRootMessageId: t.r1, outcome: "ok", readUpToSeq: 8, advanced: false }]);
    // The whole conversation: the main timeline up to its last message, and thread B.
    expect(await t.bob.markConversationsRead([c.conversationId])).toEqual([
      { conversationId: c.conversationId, threadRootMessageId: null, outcome: "ok", readUpToSeq: expect.any(Number), advanced: true },
    ]);
    expect((await t.bob.getUnreadCounts([c.conversationId]))[0]).toMatchObject({
      unreadCount: 0,
      mainUnreadCount: 0,
      threads: [],
    });
    const ticks = await t.alice.getReceipts(c.conversationId, t.all.slice(0, 7));
    expect(ticks.map((m) => m.readCount)).toEqual([1, 1, 1, 1, 1, 1, 1]);
  });

  it("markConversationsRead moves each timeline up to its own latest message, a conversation's main timeline included", async () => {
    const c = await chat(3);
    const [root] = await c.send(1); // 1, main
    const [reply] = await c.send(1, 0, root!.id); // 2, in root's thread
    const [last] = await c.send(1); // 3, main
    const [later] = await c.send(1, 0, root!.id); // 4, in root's thread: the conversation's latest
    const bob = c.clients[1]!;
    // A single thread: up to the thread's latest message.
    const other = await chat(3);
    const [oRoot] = await other.send(1);
    await other.send(1, 0, oRoot!.id); // 2
    await other.send(1); // 3
    const [thread] = await other.clients[1]!.markConversationsRead([], {
      threads: [{ conversationId: other.conversationId, threadRootMessageId: oRoot!.id }],
    });
    expect(thread).toMatchObject({ threadRootMessageId: oRoot!.id, readUpToSeq: 2 });
    // A conversation: its main timeline up to the main timeline's latest
    // message (seq 3, as a MarkReadUpTo of it would), its thread up to the
    // thread's (seq 4).
    expect(await bob.markConversationsRead([c.conversationId])).toEqual([
      { conversationId: c.conversationId, threadRootMessageId: null, outcome: "ok", readUpToSeq: last!.seq, advanced: true },
    ]);
    expect((await bob.getUnreadCounts([c.conversationId]))[0]).toMatchObject({ readUpToSeq: last!.seq, lastSeq: later!.seq });
    expect(await bob.markReadUpTo(c.conversationId, reply!.id)).toMatchObject({
      threadRootMessageId: root!.id,
      readUpToSeq: later!.seq,
      advanced: false,
    });
  });
});

describe("threads: watermarks across devices", () => {
  it("a thread read on one device arrives on the reader's other subscription with its thread", async () => {
    const t = await threaded();
    const { c } = t;
    const log = new EventLog(t.bob.subscribe());
    const state = createReceiptState();
    const stop = new AbortController();
    const following = state.follow(t.bob, { signal: stop.signal });
    await log.waitFor(is("live"));
    await until(state, "live", (s) => s.cursor !== undefined);
    const phone = userClient(c.users[1]!); // bob's other device

    await phone.markReadUpTo(c.conversationId, t.a2);
    const inThread = await log.waitFor(is("watermark"));
    expect(inThread).toEqual({
      type: "watermark",
      cursor: inThread.cursor,
      conversationId: c.conversationId,
      threadRootMessageId: t.r1,
      readUpToSeq: 4,
      unreadCount: 1,
      conversationUnreadCount: 5,
    });
    await phone.markReadUpTo(c.conversationId, t.r2);
    const inMain = await log.waitFor(is("watermark", (w) => w.threadRootMessageId === null));
    expect(inMain).toMatchObject({ readUpToSeq: 2, unreadCount: 1, conversationUnreadCount: 3 });

    // The receipt state keeps the two positions apart; the badge is the whole conversation's.
    await until(state, "both positions", (s) => s.watermark(c.conversationId) !== undefined && s.unreadCount(c.conversationId) === 3);
    const main: Watermark = {
      conversationId: c.conversationId,
      threadRootMessageId: null,
      readUpToSeq: 2,
      unreadCount: 1,
      conversationUnreadCount: 3,
    };
    const threadA: Watermark = {
      conversationId: c.conversationId,
      threadRootMessageId: t.r1,
      readUpToSeq: 4,
      unreadCount: 1,
      conversationUnreadCount: 5,
    };
    expect(state.watermark(c.conversationId)).toEqual(main);
    expect(state.watermark(c.conversationId, t.r1)).toEqual(threadA);
    expect(state.watermark(c.conversationId, t.r2)).toBeUndefined();
    expect(state.threadWatermarks(c.conversationId)).toEqual([threadA]);
    stop.abort();
    await following;
    await log.close();

    // A reset's snapshot: per conversation the main position, then the
    // threads read in.
    await phone.markReadUpTo(c.conversationId, t.b1);
    const reset = new EventLog(t.bob.subscribe({ cursor: "not-a-cursor" }));
    const { snapshot } = await reset.waitFor(is("reset"));
    const mine = snapshot.watermarks.filter((w) => w.conversationId === c.conversationId);
    expect(mine[0]).toEqual({ ...main, conversationUnreadCount: 2 });
    const byRoot = (a: Watermark, b: Watermark) => (a.threadRootMessageId! < b.threadRootMessageId! ? -1 : 1);
    expect(mine.slice(1).sort(byRoot)).toEqual(
      [
        { ...threadA, conversationUnreadCount: 2 },
        { conversationId: c.conversationId, threadRootMessageId: t.r2, readUpToSeq: 6, unreadCount: 0, conversationUnreadCount: 2 },
      ].sort(byRoot),
    );
    await reset.close();
  });
});

describe("threads: the read marker", () => {
  /** Bob's marker over a transport that records the MarkReadUpTo calls. */
  function marker(c: Chat) {
    const { transport, calls } = countingTransport();
    const client = createReceiptsClient({ transport, token: mintToken(c.users[1]!, "user") });
    const sent = () =>
      calls.filter((x) => x.method === "MarkReadUpTo").map((x) => (x.message as MarkReadUpToRequest).messageId);
    return { marker: client.readMarker({ intervalMs: 60_000 }), sent };
  }

  it("keeps one position per timeline: a thread's mark neither advances nor suppresses the main timeline's", async () => {
    const t = await threaded();
    const { c } = t;
    const { marker: m, sent } = marker(c);
    // The seqs of alice's messages bob has read (he is the only reader):
    // r1 1, r2 2, m3 7 in the main timeline; a1 3, a2 4, a3 5 in A; b1 6 in B.
    const readSeqs = async () => {
      const states = await t.alice.getReceipts(c.conversationId, t.all.slice(0, 7));
      return states.filter((x) => x.readCount === 1).map((x) => x.seq);
    };

    // Thread A at seq 4, then the main timeline at seq 1 (lower, but another timeline).
    m.mark(c.conversationId, t.a2, 4, { threadRootMessageId: t.r1 });
    m.mark(c.conversationId, t.r1, 1);
    m.mark(c.conversationId, t.a1, 3, { threadRootMessageId: t.r1 }); // below A's pending mark: dropped
    await m.flush();
    expect(sent().sort()).toEqual([t.a2, t.r1].sort());
    expect(await readSeqs()).toEqual([1, 3, 4]);

    // The main timeline goes on below the thread's confirmed seq; the thread
    // ignores a mark it already covers.
    m.mark(c.conversationId, t.r2, 2);
    m.mark(c.conversationId, t.a1, 3, { threadRootMessageId: t.r1 });
    await m.flush();
    expect(sent().slice(2)).toEqual([t.r2]);
    expect(await readSeqs()).toEqual([1, 2, 3, 4]);

    // A thread's message marked as the main timeline's: the server moves the
    // thread, and the marker says the thread root was wrong.
    m.mark(c.conversationId, t.a3, 5);
    const e = await rejection(m.flush());
    expect([e.code, e.field, e.retryable]).toEqual([Code.InvalidArgument, "thread_root_message_id", false]);
    expect(e.message).toContain(t.r1);
    expect(await readSeqs()).toEqual([1, 2, 3, 4, 5]);
    // The marker confirmed it in the thread, where the server recorded it.
    m.mark(c.conversationId, t.a3, 5, { threadRootMessageId: t.r1 });
    m.mark(c.conversationId, t.m3, 7);
    await m.close();
    expect(sent().slice(3)).toEqual([t.a3, t.m3]);
    // b1 (6), below the main timeline's 7, stays unread.
    expect(await readSeqs()).toEqual([1, 2, 3, 4, 5, 7]);
  });
});
