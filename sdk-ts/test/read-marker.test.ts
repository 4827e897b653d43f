// The debounced read marker against a real server: a burst becomes one call
// with the highest mark, at most one call per conversation per interval, and
// flush()/close() lose nothing.
import { describe, expect, it, vi } from "vitest";
import { Code, ReceiptsError, createReceiptsClient, type ReadUpToResult } from "../src/node.js";
import { createReadMarker } from "../src/read-marker.js";
import { mintToken } from "./receiptd.js";
import { chat, countingTransport, type Chat } from "./world.js";

/** The reader of `c` (users[1]) on a transport that counts its calls. */
function reader(c: Chat) {
  const { transport, calls } = countingTransport();
  const client = createReceiptsClient({ transport, token: mintToken(c.users[1]!, "user") });
  const marks = () => calls.filter((x) => x.method === "MarkReadUpTo");
  return { client, marks };
}

async function watermark(c: Chat): Promise<number> {
  const [u] = await c.clients[1]!.getUnreadCounts([c.conversationId]);
  return u!.readUpToSeq;
}

describe("readMarker", () => {
  it("turns a burst of marks into one call with the highest, after the interval", async () => {
    const c = await chat(2);
    const ms = await c.send(5);
    const { client, marks } = reader(c);
    const marker = client.readMarker({ intervalMs: 300 });
    const start = Date.now();
    // Out of order, as scrolling produces them.
    for (const i of [0, 2, 1, 4, 3]) {
      marker.mark(c.conversationId, ms[i]!.id, ms[i]!.seq);
    }
    expect(marks()).toHaveLength(0);
    await vi.waitFor(() => expect(marks()).toHaveLength(1), { timeout: 3000, interval: 20 });
    expect(marks()[0]!.at - start).toBeGreaterThanOrEqual(290);
    expect(marks()[0]!.message).toMatchObject({ conversationId: c.conversationId, messageId: ms[4]!.id });
    await vi.waitFor(async () => expect(await watermark(c)).toBe(5));
    // Marks at or below what the server confirmed cost nothing.
    marker.mark(c.conversationId, ms[2]!.id, ms[2]!.seq);
    await marker.flush();
    expect(marks()).toHaveLength(1);
    await marker.close();
  });

  it("sends at most one call per conversation per interval", async () => {
    const c = await chat(2);
    const ms = await c.send(4);
    const { client, marks } = reader(c);
    const marker = client.readMarker({ intervalMs: 200 });
    for (const m of ms) {
      marker.mark(c.conversationId, m.id, m.seq);
      await new Promise((r) => setTimeout(r, 120));
    }
    await vi.waitFor(async () => expect(await watermark(c)).toBe(4), { timeout: 3000, interval: 20 });
    const at = marks().map((x) => x.at);
    expect(at.length).toBeGreaterThanOrEqual(2); // 4 marks over ~480 ms, 200 ms apart at least
    for (let i = 1; i < at.length; i++) {
      expect(at[i]! - at[i - 1]!).toBeGreaterThanOrEqual(190);
    }
    await marker.close();
  });

  it("sends each conversation's mark on its own, and one failure does not stop the others", async () => {
    const a = await chat(2);
    const b = await chat(2);
    const { transport, calls } = countingTransport();
    const user = a.users[1]!;
    const client = createReceiptsClient({ transport, token: mintToken(user, "user") });
    const [a1] = await a.send(1);
    const marker = client.readMarker({ intervalMs: 10_000 });
    marker.mark(a.conversationId, a1!.id, a1!.seq);
    const [b1] = await b.send(1);
    marker.mark(b.conversationId, b1!.id, b1!.seq);
    // b is not this user's: that mark fails for good; a's succeeds.
    const e = await marker.flush().then(() => undefined, (err: unknown) => err);
    expect(e).toBeInstanceOf(ReceiptsError);
    expect((e as ReceiptsError).code).toBe(Code.PermissionDenied);
    expect(calls.filter((x) => x.method === "MarkReadUpTo")).toHaveLength(2);
    expect(await watermark(a)).toBe(1);
    await marker.close();
  });

  it("loses nothing on flush() and close(), long before the interval", async () => {
    const c = await chat(2);
    const ms = await c.send(3);
    const { client, marks } = reader(c);
    const marker = client.readMarker({ intervalMs: 60_000 });
    marker.mark(c.conversationId, ms[0]!.id, ms[0]!.seq);
    await marker.flush();
    expect(await watermark(c)).toBe(1);
    marker.mark(c.conversationId, ms[2]!.id, ms[2]!.seq);
    marker.mark(c.conversationId, ms[1]!.id, ms[1]!.seq);
    await marker.close();
    expect(await watermark(c)).toBe(3);
    expect(marks()).toHaveLength(2);
    expect(() => marker.mark(c.conversationId, ms[2]!.id, ms[2]!.seq)).toThrow(/closed/);
  });

  it("keeps a mark that failed retryably and sends it again", async () => {
    const c = await chat(2);
    const ms = await c.send(3);
    const { transport, calls, failNext } = countingTransport();
    const client = createReceiptsClient({ transport, token: mintToken(c.users[1]!, "user") });
    const marks = () => calls.filter((x) => x.method === "MarkReadUpTo").length;
    const onError = vi.fn();
    const marker = client.readMarker({ intervalMs: 100, onError });
    failNext(2); // the background send, and the SDK's one immediate retry
    marker.mark(c.conversationId, ms[1]!.id, ms[1]!.seq);
    await vi.waitFor(async () => expect(await watermark(c)).toBe(2), { timeout: 3000, interval: 20 });
    expect(marks()).toBe(3);
    expect(onError).not.toHaveBeenCalled();

    failNext(2);
    marker.mark(c.conversationId, ms[2]!.id, ms[2]!.seq);
    const e = await marker.flush().then(() => undefined, (err: unknown) => err);
    expect((e as ReceiptsError).retryable).toBe(true);
    expect(await watermark(c)).toBe(2);
    await marker.close(); // still pending: sent now
    expect(marks()).toBe(6);
    expect(await watermark(c)).toBe(3);
  });

  it("reports a background failure to onError, with its mark", async () => {
    const c = await chat(2);
    const other = await chat(2);
    const [m] = await other.send(1);
    const onError = vi.fn();
    const marker = c.clients[1]!.readMarker({ intervalMs: 50, onError });
    marker.mark(other.conversationId, m!.id, 1);
    await vi.waitFor(() => expect(onError).toHaveBeenCalledTimes(1));
    const [error, mark] = onError.mock.calls[0]!;
    expect((error as ReceiptsError).code).toBe(Code.PermissionDenied);
    expect(mark).toEqual({ conversationId: other.conversationId, threadRootMessageId: null, messageId: m!.id, seq: 1 });
    await marker.close();
  });

  it("refuses a seq that is not a positive integer", () => {
    const marker = createReceiptsClient({ baseUrl: "http://127.0.0.1:1", token: "t" }).readMarker();
    expect(() => marker.mark("c", "m", 0)).toThrow(TypeError);
    expect(() => marker.mark("c", "m", 1.5)).toThrow(TypeError);
  });
});

/**
 * A fake MarkReadUpTo that knows each message's thread (as the server does)
 * and records the calls: the read marker's keying, without a server.
 */
function fakeServer(threadOf: Record<string, string | null>) {
  const calls: string[] = [];
  const send = (_conversationId: string, messageId: string): Promise<ReadUpToResult> => {
    calls.push(messageId);
    return Promise.resolve({
      readUpToSeq: 0,
      advanced: true,
      unreadCount: 0,
      threadRootMessageId: threadOf[messageId] ?? null,
      conversationUnreadCount: 0,
    });
  };
  return { calls, send };
}

describe("readMarker per thread (unit)", () => {
  // "c": main m1 (seq 1), m2 (2), m5 (5); thread of m1: t3 (3), t4 (4), t6 (6).
  const threadOf = { m1: null, m2: null, m5: null, t3: "m1", t4: "m1", t6: "m1" };
  const inThread = { threadRootMessageId: "m1" };

  it("keeps the highest pending mark per (conversation, thread), never across them", async () => {
    const server = fakeServer(threadOf);
    const marker = createReadMarker(server.send, { intervalMs: 60_000 });
    marker.mark("c", "t4", 4, inThread);
    marker.mark("c", "m2", 2); // lower than the thread's mark: still the main timeline's
    marker.mark("c", "t3", 3, inThread); // lower than the thread's pending mark: dropped
    marker.mark("c", "m1", 1); // lower than the main timeline's pending mark: dropped
    marker.mark("d", "m1", 1); // another conversation
    await marker.flush();
    expect(server.calls.sort()).toEqual(["m1", "m2", "t4"]);
  });

  it("confirms each timeline on its own: a confirmed thread does not suppress a lower main mark", async () => {
    const server = fakeServer(threadOf);
    const marker = createReadMarker(server.send, { intervalMs: 60_000 });
    marker.mark("c", "t6", 6, inThread);
    await marker.flush();
    marker.mark("c", "m5", 5);
    marker.mark("c", "t4", 4, inThread); // covered by the thread's confirmed 6
    await marker.flush();
    marker.mark("c", "m2", 2); // covered by the main timeline's confirmed 5
    marker.mark("c", "t6", 6, { threadRootMessageId: "m1" });
    await marker.close();
    expect(server.calls).toEqual(["t6", "m5"]);
  });

  it("takes null and an empty thread root for the main timeline", async () => {
    const server = fakeServer(threadOf);
    const marker = createReadMarker(server.send, { intervalMs: 60_000 });
    marker.mark("c", "m5", 5, { threadRootMessageId: null });
    marker.mark("c", "m2", 2, { threadRootMessageId: "" });
    marker.mark("c", "m1", 1);
    await marker.close();
    expect(server.calls).toEqual(["m5"]);
  });

  it("reports a mark the server found in another timeline, and confirms it where the server recorded it", async () => {
    const server = fakeServer(threadOf);
    const onError = vi.fn();
    const marker = createReadMarker(server.send, { intervalMs: 10, onError });
    marker.mark("c", "t4", 4); // a thread's message, named as the main timeline's
    await vi.waitFor(() => expect(onError).toHaveBeenCalledTimes(1));
    const [error, mark] = onError.mock.calls[0]! as [ReceiptsError, unknown];
    expect([error.code, error.field, error.retryable]).toEqual([Code.InvalidArgument, "thread_root_message_id", false]);
    expect(error.message).toContain("thread m1");
    expect(mark).toEqual({ conversationId: "c", threadRootMessageId: null, messageId: "t4", seq: 4 });
    // The thread was confirmed at 4 (a lower mark in it costs nothing); the
    // main timeline was not (a lower mark in it is sent).
    marker.mark("c", "t3", 3, inThread);
    marker.mark("c", "m2", 2);
    await marker.close();
    expect(server.calls).toEqual(["t4", "m2"]);

    // Without onError, the next flush() rejects with it.
    const quiet = createReadMarker(fakeServer(threadOf).send, { intervalMs: 60_000 });
    quiet.mark("c", "m2", 2, inThread);
    const e = await quiet.flush().then(() => undefined, (err: unknown) => err);
    expect((e as ReceiptsError).field).toBe("thread_root_message_id");
    expect((e as ReceiptsError).message).toContain("the main timeline");
    await quiet.close();
  });
});
