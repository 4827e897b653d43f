// The delivered batcher against a real server: calls bounded in size and in
// delay, duplicates sent once, nothing lost on flush()/close().
import { describe, expect, it, vi } from "vitest";
import type { MarkDeliveredRequest } from "../src/gen/receipts/v1/receipts_pb.js";
import { Code, type DeliveryResult, type ReceiptsError, createReceiptsClient } from "../src/node.js";
import { mintToken } from "./receiptd.js";
import { chat, countingTransport, type Chat, type Message } from "./world.js";

function recipient(c: Chat) {
  const t = countingTransport();
  const client = createReceiptsClient({ transport: t.transport, token: mintToken(c.users[1]!, "user") });
  const sent = () =>
    t.calls
      .filter((x) => x.method === "MarkDelivered")
      .map((x) => ({ request: x.message as MarkDeliveredRequest, at: x.at }));
  /** Each call's ids, alone then by conversation: what the server's limit counts. */
  const calls = () =>
    sent().map(({ request, at }) => ({
      ids: [...request.messageIds, ...request.conversations.flatMap((g) => g.messageIds)],
      at,
    }));
  const batches = () => calls().map((x) => x.ids);
  /** Each call's request: ids alone, and `[conversationId, messageIds]` per conversation. */
  const requests = () =>
    sent().map(({ request }) => ({
      messageIds: request.messageIds,
      conversations: request.conversations.map((g) => [g.conversationId, g.messageIds]),
    }));
  return { client, batches, calls, requests, failNext: t.failNext };
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

  it("sends messages added with their conversation in the conversation form, counting both forms in maxBatch", async () => {
    const c = await chat(2);
    const d = await chat(c.users); // the same two people, another conversation
    const ms = await c.send(4);
    const [o] = await d.send(1);
    const { client, requests } = recipient(c);
    const results: DeliveryResult[] = [];
    const batcher = client.deliveredBatcher({ maxBatch: 3, maxDelayMs: 60_000, onResults: (r) => results.push(...r) });
    const inC = (m: Message) => ({ conversationId: c.conversationId, messageId: m.id });
    batcher.add(inC(ms[0]!), ms[1]!.id);
    batcher.add(ms[0]!.id); // pending with its conversation already: stays so
    batcher.add({ conversationId: d.conversationId, messageId: o!.id }); // the third id: a full batch
    await vi.waitFor(() => expect(requests()).toHaveLength(1));
    batcher.add(ms[2]!.id, inC(ms[2]!), inC(ms[3]!)); // ms[2] given its conversation after all
    await batcher.flush();
    expect(requests()).toEqual([
      {
        messageIds: [ms[1]!.id],
        conversations: [
          [c.conversationId, [ms[0]!.id]],
          [d.conversationId, [o!.id]],
        ],
      },
      { messageIds: [], conversations: [[c.conversationId, [ms[2]!.id, ms[3]!.id]]] },
    ]);
    // Each call's results in the order the messages were added.
    expect(results.map((r) => [r.messageId, r.outcome])).toEqual(
      [ms[0], ms[1], o, ms[2], ms[3]].map((m) => [m!.id, "recorded"]),
    );
    expect(await deliveredCount(c, ms.map((m) => m.id))).toBe(4);
    // Acknowledged, however they were named: adding them again costs no call.
    batcher.add(inC(ms[1]!), ms[3]!.id);
    await batcher.close();
    expect(requests()).toHaveLength(2);
  });

  it("reports a message added under a conversation it is not in as NOT_FOUND", async () => {
    const c = await chat(2);
    const d = await chat(c.users);
    const [m] = await c.send(1);
    await d.send(1);
    const { client } = recipient(c);
    const onError = vi.fn();
    const batcher = client.deliveredBatcher({ maxDelayMs: 20, onError });
    batcher.add({ conversationId: d.conversationId, messageId: m!.id });
    await vi.waitFor(() => expect(onError).toHaveBeenCalledTimes(1));
    expect((onError.mock.calls[0]![0] as ReceiptsError).code).toBe(Code.NotFound);
    expect(onError.mock.calls[0]![1]).toEqual([m!.id]);
    expect(await deliveredCount(c, [m!.id])).toBe(0);
    batcher.add({ conversationId: c.conversationId, messageId: m!.id });
    await batcher.close();
    expect(await deliveredCount(c, [m!.id])).toBe(1);
  });

  it("refuses a batch size the server would reject", () => {
    const client = createReceiptsClient({ baseUrl: "http://127.0.0.1:1", token: "t" });
    expect(() => client.deliveredBatcher({ maxBatch: 1001 })).toThrow(RangeError);
  });
});
