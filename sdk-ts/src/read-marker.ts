// Debounced read marking: a chat UI marks "read" on every scroll, but the
// server only needs the highest position per conversation now and then.
import { ReceiptsError } from "./errors.js";
import type { ReadUpToResult } from "./types.js";

/** Options of `client.readMarker()`. */
export interface ReadMarkerOptions {
  /** At most one MarkReadUpTo per conversation per this many ms (default 1000). */
  intervalMs?: number;
  /**
   * Called when a background send is rejected for good (e.g. PERMISSION_DENIED
   * after leaving the conversation). Without it, the error is kept and the next
   * `flush()` or `close()` rejects with it. Retryable failures (server
   * unavailable) are not reported: the mark is kept and sent again.
   */
  onError?: (error: ReceiptsError, mark: ReadMark) => void;
}

/** One "read up to" position. */
export interface ReadMark {
  conversationId: string;
  /** The newest message read; everything up to its seq becomes read. */
  messageId: string;
  /** That message's seq, used to keep the highest mark per conversation. */
  seq: number;
}

/**
 * Collects read positions and sends, per conversation, at most one
 * MarkReadUpTo per interval with the highest position marked. Nothing is lost:
 * `flush()` sends what is pending at once, `close()` flushes and stops.
 */
export interface ReadMarker {
  /** Records that the user has read up to `messageId` (at `seq`) in `conversationId`. Lower or equal positions than one already marked are ignored. */
  mark(conversationId: string, messageId: string, seq: number): void;
  /** Sends every pending mark now and waits for the answers; rejects with a `ReceiptsError` if a send failed. */
  flush(): Promise<void>;
  /** Flushes, then refuses further marks. */
  close(): Promise<void>;
}

type Send = (conversationId: string, messageId: string) => Promise<ReadUpToResult>;

/** Per-conversation state. */
interface Slot {
  /** The highest mark not yet sent. */
  pending: ReadMark | undefined;
  /** The highest seq the server confirmed; marks at or below it are no-ops. */
  confirmedSeq: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  inflight: Promise<unknown> | undefined;
}

/** @internal */
export function createReadMarker(send: Send, options: ReadMarkerOptions = {}): ReadMarker {
  const intervalMs = options.intervalMs ?? 1000;
  const slots = new Map<string, Slot>();
  const unreported: ReceiptsError[] = [];
  let closed = false;

  // Trailing edge: the first mark in a quiet conversation waits one interval,
  // so a burst becomes one call with the highest mark; a mark made while a
  // call is in flight waits for it and then one more interval.
  function schedule(slot: Slot): void {
    if (closed || slot.pending === undefined || slot.timer !== undefined || slot.inflight !== undefined) {
      return;
    }
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      void sendPending(slot).then((failure) => {
        if (failure === undefined || failure.error.retryable) {
          return;
        }
        if (options.onError !== undefined) {
          options.onError(failure.error, failure.mark);
        } else {
          unreported.push(failure.error);
        }
      });
    }, intervalMs);
  }

  /**
   * Sends the slot's pending mark. Resolves with the error if it failed: a
   * retryable failure leaves the mark pending (unless a higher one came).
   */
  async function sendPending(
    slot: Slot,
  ): Promise<{ error: ReceiptsError; mark: ReadMark } | undefined> {
    const mark = slot.pending;
    if (mark === undefined) {
      return undefined;
    }
    slot.pending = undefined;
    const call = send(mark.conversationId, mark.messageId).then(
      () => {
        slot.confirmedSeq = Math.max(slot.confirmedSeq, mark.seq);
        if (slot.pending !== undefined && slot.pending.seq <= slot.confirmedSeq) {
          slot.pending = undefined; // marked meanwhile, but lower: already covered
        }
        return undefined;
      },
      (e: unknown) => {
        const error = ReceiptsError.from(e);
        if (error.retryable && (slot.pending === undefined || slot.pending.seq < mark.seq)) {
          slot.pending = mark;
        }
        return { error, mark };
      },
    );
    slot.inflight = call;
    try {
      return await call;
    } finally {
      slot.inflight = undefined;
      schedule(slot);
    }
  }

  async function flushSlot(slot: Slot): Promise<ReceiptsError | undefined> {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    await slot.inflight;
    clearTimeout(slot.timer);
    slot.timer = undefined;
    return (await sendPending(slot))?.error;
  }

  async function flush(): Promise<void> {
    const errors = await Promise.all([...slots.values()].map(flushSlot));
    const first = [...unreported.splice(0), ...errors].find((e) => e !== undefined);
    if (first !== undefined) {
      throw first;
    }
  }

  return {
    mark(conversationId, messageId, seq) {
      if (closed) {
        throw new TypeError("ReadMarker.mark: the marker is closed");
      }
      if (!Number.isSafeInteger(seq) || seq < 1) {
        throw new TypeError(`ReadMarker.mark: seq must be an integer >= 1, got ${String(seq)}`);
      }
      let slot = slots.get(conversationId);
      if (slot === undefined) {
        slot = { pending: undefined, confirmedSeq: 0, timer: undefined, inflight: undefined };
        slots.set(conversationId, slot);
      }
      if (seq <= slot.confirmedSeq || (slot.pending !== undefined && seq <= slot.pending.seq)) {
        return;
      }
      slot.pending = { conversationId, messageId, seq };
      schedule(slot);
    },
    flush,
    async close() {
      closed = true;
      await flush();
    },
  };
}
