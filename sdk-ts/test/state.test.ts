// The client-side receipt state against a real receiptd: ranges over the
// held messages, a resume, and a reset.
import { describe, expect, it } from "vitest";
import { createReceiptState, type ReceiptState } from "../src/node.js";
import { chat } from "./world.js";

/** Resolves once `ok(state)` holds, checking on every change and every 20 ms. */
async function until(state: ReceiptState, what: string, ok: (s: ReceiptState) => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!ok(state)) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 10 s`);
    await new Promise<void>((resolve) => {
      const off = state.onChange(() => {
        off();
        resolve();
      });
      setTimeout(() => {
        off();
        resolve();
      }, 20);
    });
  }
}

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
