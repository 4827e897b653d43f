// The receipt stream: typed events, the live marker, resuming from a cursor,
// resets with a snapshot, and closing.
import { describe, expect, it } from "vitest";
import { applyRange } from "../src/node.js";
import { EventLog, chat, is } from "./world.js";

describe("subscribe", () => {
  it("starts with a live marker, then pushes direct changes at once", async () => {
    const c = await chat(2);
    const [m] = await c.send(1);
    const log = new EventLog(c.clients[0]!.subscribe());
    const live = await log.waitFor(is("live"));
    expect(live.replayed).toBe(0);
    expect(log.events[0]).toBe(live);

    await c.clients[1]!.markDelivered([m!.id]);
    const delivered = await log.waitFor(is("receipts", (e) => e.messages.some((x) => x.tick === "delivered")));
    expect(delivered).toMatchObject({ conversationId: c.conversationId, group: false });
    expect(delivered.messages[0]!.recipients).toHaveLength(1);

    await c.clients[1]!.markReadUpTo(c.conversationId, m!.id);
    const read = await log.waitFor(is("receipts", (e) => e.messages.some((x) => x.tick === "read")));
    expect(read.messages[0]).toMatchObject({ messageId: m!.id, readCount: 1, recipientsTotal: 1 });
    expect(read.messages[0]!.readAt).toBeInstanceOf(Date);
    expect(log.subscription.cursor).toBe(read.cursor);
    await log.close();
  });

  it("pushes one group summary with absolute counts (2 of 3 read)", async () => {
    const c = await chat(4);
    const [m] = await c.send(1);
    const log = new EventLog(c.clients[0]!.subscribe());
    await log.waitFor(is("live"));
    await Promise.all([1, 2].map((i) => c.clients[i]!.markReadUpTo(c.conversationId, m!.id)));
    const summary = await log.waitFor(is("receipts", (e) => e.messages[0]!.readCount === 2));
    expect(summary.group).toBe(true);
    expect(summary.messages[0]).toMatchObject({ tick: "sent", readCount: 2, deliveredCount: 2, recipientsTotal: 3 });
    expect(summary.messages[0]!.recipients).toEqual([]);
    await log.close();
  });

  it("with acceptRanges, a batch arrives as one range that applyRange applies by seq", async () => {
    const c = await chat(2);
    const ms = await c.send(150);
    const ranged = new EventLog(c.clients[0]!.subscribe({ acceptRanges: true }));
    const plain = new EventLog(c.clients[0]!.subscribe());
    await ranged.waitFor(is("live"));
    await plain.waitFor(is("live"));
    // What the sender's UI holds: every message with its seq.
    const ids = ms.map((m) => m.id);
    let held = [
      ...(await c.clients[0]!.getReceipts(c.conversationId, ids.slice(0, 100))),
      ...(await c.clients[0]!.getReceipts(c.conversationId, ids.slice(100))),
    ];
    expect(held.every((m) => m.tick === "sent")).toBe(true);

    await c.clients[1]!.markDelivered(ids.slice(0, 120));
    const ev = await ranged.waitFor(is("receipts"));
    expect(ev.messages).toEqual([]);
    expect(ev.ranges).toHaveLength(1);
    expect(ev.ranges[0]).toMatchObject({ fromSeq: 1, toSeq: 120, tick: "delivered", deliveredCount: 1 });
    expect(ev.ranges[0]!.recipients).toHaveLength(1);
    const before = held;
    held = held.map((m) => ev.ranges.reduce(applyRange, m));
    expect(held.filter((m) => m.tick === "delivered")).toHaveLength(120);
    // A message the range does not cover is the same object.
    expect(held[130]).toBe(before[130]);
    expect(held[0]!.deliveredAt).toEqual(ev.ranges[0]!.deliveredAt);

    // Without acceptRanges: the same change as one entry per message.
    const seen = new Set<string>();
    while (seen.size < 120) {
      const e = await plain.waitFor(is("receipts", (x) => x.messages.some((m) => !seen.has(m.messageId))));
      expect(e.ranges).toEqual([]);
      e.messages.forEach((m) => seen.add(m.messageId));
    }
    await ranged.close();
    await plain.close();
  });

  it("syncs the caller's own watermark from its other devices", async () => {
    const c = await chat(2);
    const ms = await c.send(3, 1);
    const log = new EventLog(c.clients[0]!.subscribe());
    await log.waitFor(is("live"));
    await c.clients[0]!.markReadUpTo(c.conversationId, ms[1]!.id); // "another device" of the same user
    const w = await log.waitFor(is("watermark"));
    expect(w).toEqual({
      type: "watermark",
      cursor: w.cursor,
      conversationId: c.conversationId,
      threadRootMessageId: null,
      readUpToSeq: 2,
      unreadCount: 1,
      conversationUnreadCount: 1,
    });
    await log.close();
  });

  it("resumes from its cursor: replays what was missed, once, then goes live", async () => {
    const c = await chat(2);
    const ms = await c.send(3);
    const first = new EventLog(c.clients[0]!.subscribe());
    await first.waitFor(is("live"));
    await c.clients[1]!.markDelivered([ms[0]!.id]);
    await first.waitFor(is("receipts"));
    await first.close();
    const cursor = first.subscription.cursor;

    // Missed while away: two more deliveries, then a read of all three.
    await c.clients[1]!.markDelivered([ms[1]!.id]);
    await c.clients[1]!.markDelivered([ms[2]!.id]);
    await c.clients[1]!.markReadUpTo(c.conversationId, ms[2]!.id);

    const second = new EventLog(c.clients[0]!.subscribe({ cursor }));
    const live = await second.waitFor(is("live"));
    const replayed = second.events.slice(0, second.events.indexOf(live));
    expect(live.replayed).toBe(replayed.length);
    // Coalesced: the latest state of each message, each message once.
    const states = replayed.flatMap((e) => (e.type === "receipts" ? e.messages : []));
    expect(states.map((s) => [s.seq, s.tick]).sort()).toEqual([
      [1, "read"],
      [2, "read"],
      [3, "read"],
    ]);
    // Each replayed change has its own position.
    expect(new Set(replayed.map((e) => e.cursor)).size).toBe(replayed.length);
    await second.close();
  });

  it("answers an unusable cursor with a typed reset carrying a snapshot", async () => {
    const c = await chat(2);
    const [m] = await c.send(1);
    await c.clients[1]!.markDelivered([m!.id]);
    const log = new EventLog(c.clients[0]!.subscribe({ cursor: "not-a-cursor" }));
    const reset = await log.waitFor(is("reset"));
    expect(log.events[0]).toBe(reset);
    expect(reset.reason).toBe("cursor_invalid");
    expect(reset.snapshot.recentMessages).toHaveLength(1);
    expect(reset.snapshot.recentMessages[0]).toMatchObject({ messageId: m!.id, tick: "delivered" });
    expect(reset.snapshot.watermarks).toEqual([
      { conversationId: c.conversationId, threadRootMessageId: null, readUpToSeq: 0, unreadCount: 0, conversationUnreadCount: 0 },
    ]);
    await log.waitFor(is("live"));
    expect(log.subscription.cursor).not.toBe("not-a-cursor");
    await log.close();
  });

  it("ends when closed, by break, or by its signal", async () => {
    const c = await chat(2);
    const sub = c.clients[0]!.subscribe();
    let seen = 0;
    for await (const e of sub) {
      seen += 1;
      expect(e.type).toBe("live");
      break;
    }
    expect(seen).toBe(1);

    const abort = new AbortController();
    const log = new EventLog(c.clients[0]!.subscribe({ signal: abort.signal }));
    await log.waitFor(is("live"));
    abort.abort();
    await log.done;
    expect(log.events.map((e) => e.type)).toEqual(["live"]);
  });
});
