// The delivered batcher against a real server: calls bounded in size and in
// delay, duplicates sent once, nothing lost on flush()/close().
import { describe, expect, it, vi } from "vitest";
import { Code, type DeliveryResult, type ReceiptsError, createReceiptsClient } from "../src/node.js";
import { mintToken } from "./receiptd.js";
import { chat, countingTransport, type Chat } from "./world.js";

function recipient(c: Chat) {
  const t = countingTransport();
  const client = createReceiptsClient({ transport: t.transport, token: mintToken(c.users[1]!, "user") });
  const calls = () =>
    t.calls
      .filter((x) => x.method === "MarkDelivered")
      .map((x) => ({ ids: (x.message as { messageIds: string[] }).messageIds, at: x.at }));
  const batches = () => calls().map((x) => x.ids);
  return { client, batches, calls, failNext: t.failNext };
}

async function deliveredCount(c: Chat, ids: string[]): Promise<number> {
  const states = await c.clients[0]!.getReceipts(c.conversationId, ids);
  return states.filter((m) => m.deliveredCount === 1).length;
}

describe("deliveredBatcher", () => {
  it("sends full batches at once and the rest after the delay", async () => {
    const c = await chat(2);
    const ms = await c.send(7);
    const { client, batches, calls } = recipient(c);
    const results: DeliveryResult[] = [];
    const batcher = client.deliveredBatcher({ maxBatch: 3, maxDelayMs: 1000, onResults: (r) => results.push(...r) });
    const start = Date.now();
    batcher.add(...ms.map((m) => m.id));
    await vi.waitFor(() => expect(batches()).toHaveLength(3), { timeout: 5000, interval: 10 });
    // Two full batches at once, the remaining id when the delay is up.
    const sent = calls().map((x) => ({ size: x.ids.length, after: x.at - start }));
    expect(sent.map((x) => x.size)).toEqual([3, 3, 1]);
    expect(sent[1]!.after).toBeLessThan(900);
    expect(sent[2]!.after).toBeGreaterThanOrEqual(990);
    expect(batches().flat()).toEqual(ms.map((m) => m.id));
    await vi.waitFor(() => expect(results).toHaveLength(7));
    expect(results.every((r) => r.outcome === "recorded")).toBe(true);
    expect(await deliveredCount(c, ms.map((m) => m.id))).toBe(7);
    await batcher.close();
  });

  it("sends one id once however often it is added, and not again once acknowledged", async () => {
    const c = await chat(2);
    const [m1, m2] = await c.send(2);
    const { client, batches } = recipient(c);
    const batcher = client.deliveredBatcher({ maxDelayMs: 50 });
    batcher.add(m1!.id, m1!.id);
    batcher.add(m1!.id, m2!.id);
    await vi.waitFor(() => expect(batches()).toEqual([[m1!.id, m2!.id]]));
    await batcher.flush();
    batcher.add(m1!.id);
    await batcher.flush();
    expect(batches()).toHaveLength(1);
    await batcher.close();
  });

  it("loses nothing on flush() and close()", async () => {
    const c = await chat(2);
    const ms = await c.send(3);
    const { client, batches } = recipient(c);
    const batcher = client.deliveredBatcher({ maxDelayMs: 60_000 });
    batcher.add(ms[0]!.id);
    await batcher.flush();
    expect(await deliveredCount(c, [ms[0]!.id])).toBe(1);
    batcher.add(ms[1]!.id, ms[2]!.id);
    await batcher.close();
    expect(await deliveredCount(c, ms.map((m) => m.id))).toBe(3);
    expect(batches()).toHaveLength(2);
    expect(() => batcher.add(ms[0]!.id)).toThrow(/closed/);
  });

  it("puts a batch that failed retryably back, and reports one rejected for good", async () => {
    const c = await chat(2);
    const [m] = await c.send(1);
    const { client, batches, failNext } = recipient(c);
    const onError = vi.fn();
    const batcher = client.deliveredBatcher({ maxDelayMs: 20, onError });
    failNext(2); // the send, and the SDK's one immediate retry
    batcher.add(m!.id);
    await vi.waitFor(async () => expect(await deliveredCount(c, [m!.id])).toBe(1), { timeout: 5000, interval: 50 });
    expect(batches()).toHaveLength(3);

    const unknown = crypto.randomUUID();
    batcher.add(unknown);
    await vi.waitFor(() => expect(onError).toHaveBeenCalledTimes(1));
    expect((onError.mock.calls[0]![0] as ReceiptsError).code).toBe(Code.NotFound);
    expect(onError.mock.calls[0]![1]).toEqual([unknown]);
    await batcher.close();
  });

  it("refuses a batch size the server would reject", () => {
    const client = createReceiptsClient({ baseUrl: "http://127.0.0.1:1", token: "t" });
    expect(() => client.deliveredBatcher({ maxBatch: 1001 })).toThrow(RangeError);
  });
});
