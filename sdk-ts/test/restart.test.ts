// A subscription survives its server going away: receiptd is stopped with
// SIGTERM (streams end with a resumable UNAVAILABLE) and a new process is
// started on the same port and data directory. The subscription reconnects
// with backoff and resumes from its last cursor: no loss, no duplicate.
import { afterEach, describe, expect, it } from "vitest";
import { Code, type ReceiptEvent, type ReceiptsEvent } from "../src/node.js";
import { startReceiptd, type Receiptd } from "./receiptd.js";
import { EventLog, chat, is } from "./world.js";

const servers: Receiptd[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

async function start(from?: Receiptd): Promise<Receiptd> {
  const s = await startReceiptd(from && { port: from.port, dataDir: from.dataDir });
  servers.push(s);
  return s;
}

async function stop(s: Receiptd): Promise<void> {
  servers.splice(servers.indexOf(s), 1);
  await s.stop();
}

/** Every (message, tick) state seen, in order. */
const states = (events: ReceiptEvent[]) =>
  events.flatMap((e) => (e.type === "receipts" ? e.messages.map((m) => `${m.seq}:${m.tick}`) : []));

/** Pulls the next event, failing after `ms`. */
async function next(it: AsyncIterator<ReceiptEvent>, ms = 10_000): Promise<ReceiptEvent> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    it.next(),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no event within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
  if (r.done === true) {
    throw new Error("subscription ended");
  }
  return r.value;
}

describe("a subscription across a server restart", () => {
  it("replays exactly what changed while it was away, then continues live", async () => {
    const first = await start();
    const c = await chat(2, first.baseUrl);
    const ms = await c.send(6);
    const [alice, bob] = c.clients as [(typeof c.clients)[0], (typeof c.clients)[0]];
    const sub = alice.subscribe({ reconnect: { initialDelayMs: 100, maxDelayMs: 400 } });
    const it = sub[Symbol.asyncIterator]();
    const seen: ReceiptEvent[] = [];
    seen.push(await next(it));
    expect(seen[0]!.type).toBe("live");
    await bob.markDelivered(ms.slice(0, 3).map((m) => m.id));
    while (states(seen).length < 3) {
      seen.push(await next(it));
    }

    // The consumer does not pull while the server restarts and changes
    // happen, so they can only reach it through the replay.
    await stop(first);
    const second = await start(first);
    await bob.markDelivered(ms.slice(3).map((m) => m.id));
    await bob.markReadUpTo(c.conversationId, ms[5]!.id);

    const reconnecting = await next(it);
    expect(reconnecting).toMatchObject({ type: "reconnecting", attempt: 1 });
    expect(reconnecting.type === "reconnecting" && reconnecting.error.code).toBe(Code.Unavailable);
    expect(reconnecting.cursor).toBe(seen.at(-1)!.cursor);
    const after: ReceiptEvent[] = [];
    for (let e = await next(it); ; e = await next(it)) {
      after.push(e);
      if (e.type === "live") {
        break;
      }
    }
    const live = after.at(-1)!;
    expect(live.type === "live" && live.replayed).toBe(after.length - 1);
    expect(after.length - 1).toBeGreaterThan(0);

    // Still live on the new process.
    const [m7] = await c.send(1);
    await bob.markDelivered([m7!.id]);
    let e: ReceiptEvent;
    do {
      e = await next(it);
      after.push(e);
    } while (!(e.type === "receipts" && e.messages.some((m) => m.seq === 7)));
    sub.close();
    expect((await it.next()).done).toBe(true);

    const all = [...seen, ...after];
    // No duplicate: every state change arrived once, every change event has its own cursor.
    const s = states(all);
    expect(new Set(s).size).toBe(s.length);
    const changes = all.filter((x): x is ReceiptsEvent => x.type === "receipts");
    expect(new Set(changes.map((x) => x.cursor)).size).toBe(changes.length);
    // No loss: the final state of every message is there.
    expect(s).toEqual(expect.arrayContaining(["1:read", "2:read", "3:read", "4:read", "5:read", "6:read", "7:delivered"]));
    // Nothing from before the restart came again.
    expect(states(after)).not.toEqual(expect.arrayContaining(["1:delivered"]));
    const check = await alice.getReceipts(c.conversationId, ms.map((m) => m.id));
    expect(check.every((m) => m.tick === "read")).toBe(true);
    void second;
  });

  it("keeps retrying with backoff while the server is down", async () => {
    const first = await start();
    const c = await chat(2, first.baseUrl);
    const [m1, m2] = await c.send(2);
    const log = new EventLog(c.clients[0]!.subscribe({ reconnect: { initialDelayMs: 50, maxDelayMs: 200 } }));
    await log.waitFor(is("live"));
    await c.clients[1]!.markDelivered([m1!.id]);
    await log.waitFor(is("receipts"));

    await stop(first);
    // The server is down: attempts fail (connection refused) and back off.
    const retry = await log.waitFor(is("reconnecting", (e) => e.attempt >= 3));
    expect(retry.delayMs).toBeLessThanOrEqual(200);
    expect(retry.error.retryable).toBe(true);

    await start(first);
    // Counted before the write: its event can arrive before the call returns.
    const from = log.events.length;
    await c.clients[1]!.markDelivered([m2!.id]);
    await log.waitFor(is("receipts", (e) => e.messages.some((m) => m.seq === 2)), { from, timeoutMs: 10_000 });
    await log.close();
    const s = states(log.events);
    expect(s).toEqual(["1:delivered", "2:delivered"]);
  });
});
