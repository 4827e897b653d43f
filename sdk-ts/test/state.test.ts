// The client-side receipt state against a real receiptd: ranges over the
// held messages, a resume, and a reset.
import { describe, expect, it } from "vitest";
import { createReceiptState, type ReceiptState, type Watermark } from "../src/node.js";
import { chat, until } from "./world.js";

describe("createReceiptState", () => {
  it("follows ranges over the held messages, resumes from its cursor, and replaces everything on a reset", async () => {
    const c = await chat(2);
    const ms = await c.send(120);
    const ids = ms.map((m) => m.id);
    const [alice, bob] = [c.clients[0]!, c.clients[1]!];
    const state = createReceiptState();
    // The UI shows the first 100.
    state.track(await alice.getReceipts(c.conversationId, ids.slice(0, 100)));
    expect(state.seq(ids[9]!)).toBe(10);
    const changes: string[][] = [];
    state.onChange((changed) => changes.push(changed));

    let stop = new AbortController();
    let following = state.follow(alice, { signal: stop.signal });
    await until(state, "live", (s) => s.cursor !== undefined);
    await bob.markDelivered(ids);
    await until(state, "100 delivered", (s) => s.conversation(c.conversationId).every((m) => m.tick === "delivered"));
    expect(state.conversation(c.conversationId)).toHaveLength(100);
    expect(state.message(ids[110]!)).toBeUndefined();
    expect(changes.some((ch) => ch.length === 100)).toBe(true);
    await bob.markReadUpTo(c.conversationId, ids[49]!);
    await until(state, "50 read", (s) => s.conversation(c.conversationId).filter((m) => m.tick === "read").length === 50);
    stop.abort();
    await following;

    // What happened while it was away arrives when it follows again.
    await bob.markReadUpTo(c.conversationId, ids[99]!);
    stop = new AbortController();
    following = state.follow(alice, { signal: stop.signal });
    await until(state, "100 read after resuming", (s) =>
      s.conversation(c.conversationId).every((m) => m.tick === "read"),
    );
    stop.abort();
    await following;

    // A cursor the server cannot honour: the snapshot replaces everything.
    const reset = createReceiptState();
    reset.track(await alice.getReceipts(c.conversationId, ids.slice(0, 5)));
    stop = new AbortController();
    following = reset.follow(alice, { cursor: "not-a-cursor", signal: stop.signal });
    await until(reset, "the snapshot", (s) => s.message(ids[119]!) !== undefined);
    expect(reset.message(ids[119]!)).toMatchObject({ tick: "delivered", seq: 120 });
    expect(reset.watermark(c.conversationId)?.readUpToSeq).toBe(0);
    stop.abort();
    await following;
  });
});

describe("createReceiptState with threads (unit)", () => {
  const at = (threadRootMessageId: string | null, readUpToSeq: number, unreadCount: number, conversationUnreadCount: number): Watermark => ({
    conversationId: "c",
    threadRootMessageId,
    readUpToSeq,
    unreadCount,
    conversationUnreadCount,
  });

  it("keeps the main timeline's and each thread's position apart, with the conversation's badge from the latest", () => {
    const state = createReceiptState();
    expect(state.apply({ type: "watermark", cursor: "1", ...at("r1", 8, 0, 4) })).toEqual(["c"]);
    // A thread's position never stands for the main timeline's.
    expect(state.watermark("c")).toBeUndefined();
    expect(state.watermark("c", "r1")).toEqual(at("r1", 8, 0, 4));
    expect(state.unreadCount("c")).toBe(4);

    expect(state.apply({ type: "watermark", cursor: "2", ...at(null, 2, 3, 3) })).toEqual(["c"]);
    expect(state.watermark("c")).toEqual(at(null, 2, 3, 3));
    expect(state.watermark("c", null)).toEqual(at(null, 2, 3, 3));
    expect(state.watermark("c", "r1")).toEqual(at("r1", 8, 0, 4)); // untouched
    expect(state.unreadCount("c")).toBe(3);
    expect(state.threadWatermarks("c")).toEqual([at("r1", 8, 0, 4)]);
    // The same again changes nothing.
    expect(state.apply({ type: "watermark", cursor: "3", ...at(null, 2, 3, 3) })).toEqual([]);

    // A reset: per conversation the main timeline, then its threads.
    state.apply({
      type: "reset",
      cursor: "4",
      reason: "cursor_invalid",
      snapshot: { recentMessages: [], watermarks: [at(null, 5, 0, 1), at("r2", 6, 1, 1)] },
    });
    expect(state.watermark("c")).toEqual(at(null, 5, 0, 1));
    expect(state.watermark("c", "r1")).toBeUndefined();
    expect(state.threadWatermarks("c")).toEqual([at("r2", 6, 1, 1)]);
    expect(state.unreadCount("c")).toBe(1);
    expect(state.unreadCount("other")).toBeUndefined();
  });
});
