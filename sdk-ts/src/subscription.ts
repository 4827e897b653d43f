// A receipt stream that survives disconnects: it reconnects with exponential
// backoff and jitter and resumes from the last cursor it yielded, so the
// server replays exactly what was missed (no gap, no duplicate).
import { Code, createClient } from "@connectrpc/connect";
import type { Connection } from "./connection.js";
import { decodeError, ReceiptsError } from "./errors.js";
import { ReceiptService } from "./gen/receipts/v1/receipts_pb.js";
import { receiptEvent, type ReceiptEvent } from "./types.js";

/** How a subscription retries after losing its stream. */
export interface ReconnectOptions {
  /** Delay before the first retry, in ms (default 250). */
  initialDelayMs?: number;
  /** Upper bound of the delay, in ms (default 15 000). */
  maxDelayMs?: number;
  /** Reconnects in a row, without an event in between, before the iterator throws the last error (default: unlimited). */
  maxAttempts?: number;
}

/** Options of `subscribe()`. */
export interface SubscribeOptions {
  /**
   * The cursor of the last event processed (e.g. saved before a page reload):
   * the server replays what was missed, or sends a `reset` with a snapshot if
   * it can no longer. Omit to start at the live position.
   */
  cursor?: string;
  /** Ends the subscription when aborted (like `close()`). */
  signal?: AbortSignal;
  /**
   * Receive a change that covers many messages (a batch marked delivered, a
   * read of thousands) as `ranges` keyed by seq, applied with `applyRange`,
   * instead of one entry per message. For clients that keep each message's
   * seq. Default false.
   */
  acceptRanges?: boolean;
  reconnect?: ReconnectOptions;
}

/**
 * The caller's receipt stream, as an async iterable of typed events. Iterate it
 * once; `break` or `close()` ends it. It throws a `ReceiptsError` only for a
 * failure that retrying cannot fix (a status such as UNAUTHENTICATED, or in
 * Node a TLS certificate failure: see `ReceiptsError.tlsFailure`), or once
 * `reconnect.maxAttempts` consecutive attempts failed.
 */
export interface ReceiptSubscription extends AsyncIterable<ReceiptEvent> {
  /** The cursor of the last event yielded (or the initial one): where a new subscription would resume. */
  readonly cursor: string;
  /** Ends the subscription; a pending `next()` resolves as done. */
  close(): void;
}

/** @internal */
export function openSubscription(connection: Connection, options: SubscribeOptions = {}): ReceiptSubscription {
  const rpc = createClient(ReceiptService, connection.transport);
  const initialDelayMs = options.reconnect?.initialDelayMs ?? 250;
  const maxDelayMs = options.reconnect?.maxDelayMs ?? 15_000;
  const maxAttempts = options.reconnect?.maxAttempts ?? Number.POSITIVE_INFINITY;
  // Aborted by close() or the caller's signal; every wait races against it.
  const closed = new AbortController();
  options.signal?.addEventListener("abort", () => closed.abort(), { once: true });
  if (options.signal?.aborted === true) {
    closed.abort();
  }
  let cursor = options.cursor ?? "";
  let iterated = false;

  async function* run(): AsyncGenerator<ReceiptEvent, void, undefined> {
    let failures = 0;
    while (!closed.signal.aborted) {
      const call = new AbortController();
      const stop = () => call.abort();
      closed.signal.addEventListener("abort", stop, { once: true });
      let lost: ReceiptsError;
      try {
        const headers = await connection.headers();
        const stream = rpc.subscribeReceipts(
          { cursor, acceptRanges: options.acceptRanges ?? false },
          { headers, signal: call.signal },
        );
        for await (const res of stream) {
          // The cursor advances past every event, even one this SDK does not
          // know (a newer server): it has been processed as far as we can.
          cursor = res.cursor;
          failures = 0;
          const event = receiptEvent(res);
          if (event !== undefined) {
            yield event;
          }
        }
        // A stream is endless; a clean end is a server going away.
        lost = new ReceiptsError(Code.Unavailable, "stream ended by the server");
      } catch (e) {
        if (closed.signal.aborted) {
          return;
        }
        lost = decodeError(e, connection);
        if (!lost.retryable) {
          throw lost;
        }
      } finally {
        closed.signal.removeEventListener("abort", stop);
        call.abort();
      }
      failures += 1;
      if (failures > maxAttempts) {
        throw lost;
      }
      const delayMs = backoff(failures, initialDelayMs, maxDelayMs);
      yield { type: "reconnecting", cursor, attempt: failures, delayMs, error: lost };
      await sleep(delayMs, closed.signal);
    }
  }

  return {
    get cursor() {
      return cursor;
    },
    close() {
      closed.abort();
    },
    [Symbol.asyncIterator]() {
      if (iterated) {
        throw new TypeError("a ReceiptSubscription can be iterated only once");
      }
      iterated = true;
      return run();
    },
  };
}

/**
 * @internal
 * Exponential backoff with "equal jitter": half the capped exponential delay
 * plus a random part of the other half, so clients that lost the same server
 * do not come back in lockstep, yet never retry in a tight loop.
 */
export function backoff(attempt: number, initialMs: number, maxMs: number): number {
  const capped = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(capped / 2 + Math.random() * (capped / 2));
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
