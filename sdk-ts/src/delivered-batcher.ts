// Batched delivery acknowledgements: a client acknowledges every message it
// displays; the batcher turns that into few MarkDelivered calls, bounded in
// size and in delay.
import { ReceiptsError } from "./errors.js";
import type { DeliveryResult, MessageRef } from "./types.js";

/** Options of `client.deliveredBatcher()`. */
export interface DeliveredBatcherOptions {
  /**
   * Send as soon as this many distinct messages are pending (default 100; the
   * server accepts up to 1000 ids a call, each sent once however it was named).
   */
  maxBatch?: number;
  /** Send pending messages at the latest this many ms after the first was added (default 200). */
  maxDelayMs?: number;
  /** Called with the results of every successful call. */
  onResults?: (results: DeliveryResult[]) => void;
  /**
   * Called when a batch is rejected for good (NOT_FOUND, PERMISSION_DENIED:
   * the server then records none of it). Without it, the error is kept and the
   * next `flush()` or `close()` rejects with it. Retryable failures (server
   * unavailable) are not reported: the ids stay pending and are sent again.
   */
  onError?: (error: ReceiptsError, messageIds: string[]) => void;
}

/** Collects delivered acknowledgements and sends them in batches. */
export interface DeliveredBatcher {
  /**
   * Acknowledges messages, each named with its conversation
   * (`{ conversationId, messageId }`, preferred: the server then needs no
   * lookup of the conversation) or by its id alone. A message pending twice
   * is sent once, with a conversation if it was given one.
   */
  add(...messages: (MessageRef | string)[]): void;
  /** Sends everything pending now and waits; rejects with a `ReceiptsError` if a batch failed. */
  flush(): Promise<void>;
  /** Flushes, then refuses further messages. */
  close(): Promise<void>;
}

type Send = (messages: (MessageRef | string)[]) => Promise<DeliveryResult[]>;

/** Pending messages taken for one call: `[messageId, conversationId if known]`. */
type Batch = [string, string | undefined][];

/** How many acknowledged ids to remember, so re-adding them costs no call. */
const REMEMBERED = 10_000;
/** The least delay before a batch that failed retryably is sent again. */
const RETRY_DELAY_MS = 1000;

/** @internal */
export function createDeliveredBatcher(
  send: Send,
  options: DeliveredBatcherOptions = {},
): DeliveredBatcher {
  const maxBatch = options.maxBatch ?? 100;
  const maxDelayMs = options.maxDelayMs ?? 200;
  if (!Number.isSafeInteger(maxBatch) || maxBatch < 1 || maxBatch > 1000) {
    throw new RangeError(`deliveredBatcher: maxBatch must be 1..1000, got ${String(maxBatch)}`);
  }
  // Insertion-ordered: pending ids in the order added, each with its
  // conversation if known; acknowledged ids oldest first, trimmed to REMEMBERED.
  const pending = new Map<string, string | undefined>();
  const acknowledged = new Set<string>();
  const inflight = new Set<Promise<ReceiptsError | undefined>>();
  const unreported: ReceiptsError[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;

  /** Makes `id` pending, keeping the conversation it was given before if this call names none. */
  function put(id: string, conversationId: string | undefined): void {
    if (conversationId !== undefined || !pending.has(id)) {
      pending.set(id, conversationId);
    }
  }

  /** Up to maxBatch pending ids, oldest first (one id each: the call carries at most maxBatch ids). */
  function take(): Batch {
    const batch: Batch = [];
    for (const entry of pending) {
      if (batch.length === maxBatch) {
        break;
      }
      batch.push(entry);
      pending.delete(entry[0]);
    }
    return batch;
  }

  /** Sends one batch; resolves with its error, if any. */
  function sendBatch(batch: Batch, background: boolean): Promise<ReceiptsError | undefined> {
    const messages = batch.map(([messageId, conversationId]) =>
      conversationId === undefined ? messageId : { conversationId, messageId },
    );
    const call = send(messages).then(
      (results) => {
        for (const [id] of batch) {
          acknowledged.add(id);
        }
        for (const id of acknowledged) {
          if (acknowledged.size <= REMEMBERED) {
            break;
          }
          acknowledged.delete(id);
        }
        options.onResults?.(results);
        return undefined;
      },
      (e: unknown) => {
        const error = ReceiptsError.from(e);
        if (error.retryable) {
          for (const [id, conversationId] of batch) {
            put(id, conversationId);
          }
          schedule(Math.max(maxDelayMs, RETRY_DELAY_MS));
        } else if (background && options.onError !== undefined) {
          options.onError(error, batch.map(([id]) => id));
        } else if (background) {
          unreported.push(error);
        }
        return error;
      },
    );
    inflight.add(call);
    void call.finally(() => inflight.delete(call));
    return call;
  }

  function schedule(delayMs = maxDelayMs): void {
    if (closed || pending.size === 0) {
      return;
    }
    while (pending.size >= maxBatch) {
      void sendBatch(take(), true);
    }
    if (pending.size > 0 && timer === undefined) {
      timer = setTimeout(() => {
        timer = undefined;
        while (pending.size > 0) {
          void sendBatch(take(), true);
        }
      }, delayMs);
    }
  }

  async function flush(): Promise<void> {
    // Let batches already in flight settle first: one that fails retryably
    // puts its ids back, and this flush sends them again.
    await Promise.all([...inflight]);
    clearTimeout(timer);
    timer = undefined;
    const mine: Promise<ReceiptsError | undefined>[] = [];
    while (pending.size > 0) {
      mine.push(sendBatch(take(), false));
    }
    const errors = await Promise.all(mine);
    const first = [...unreported.splice(0), ...errors].find((e) => e !== undefined);
    if (first !== undefined) {
      throw first;
    }
  }

  return {
    add(...messages) {
      if (closed) {
        throw new TypeError("DeliveredBatcher.add: the batcher is closed");
      }
      for (const m of messages) {
        const [id, conversationId] = typeof m === "string" ? [m, undefined] : [m.messageId, m.conversationId];
        if (!acknowledged.has(id)) {
          put(id, conversationId);
        }
      }
      schedule();
    },
    flush,
    async close() {
      closed = true;
      await flush();
    },
  };
}
