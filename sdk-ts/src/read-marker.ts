// Debounced read marking: a chat UI marks "read" on every scroll, but the
// server only needs the highest position per timeline (a conversation's main
// timeline, or one thread) now and then.
import { Code } from "@connectrpc/connect";
import { ReceiptsError } from "./errors.js";
import type { ReadUpToResult } from "./types.js";

/** Options of `client.readMarker()`. */
export interface ReadMarkerOptions {
  /** At most one MarkReadUpTo per timeline (main or thread) per this many ms (default 1000). */
  intervalMs?: number;
  /**
   * Called when a background send is rejected for good (e.g. PERMISSION_DENIED
   * after leaving the conversation). Without it, the error is kept and the next
   * `flush()` or `close()` rejects with it. Retryable failures (server
   * unavailable) are not reported: the mark is kept and sent again.
   */
  onError?: (error: ReceiptsError, mark: ReadMark) => void;
}

/** One "read up to" position in one timeline. */
export interface ReadMark {
  conversationId: string;
  /** The thread (its root message's id) the mark is in; `null` for the main timeline. */
  threadRootMessageId: string | null;
  /** The newest message read; everything up to its seq in its timeline becomes read. */
  messageId: string;
  /** That message's seq, used to keep the highest mark per timeline. */
  seq: number;
}

/** Where a mark is: `ReadMarker.mark`'s last argument. */
export interface ReadMarkOptions {
  /**
   * The thread the message belongs to, named by its root message's id, as
   * the app registered it; omitted, `null` or `""` for the main timeline
   * (where a thread's root itself belongs).
   */
  threadRootMessageId?: string | null;
}

/**
 * Collects read positions and sends, per timeline (a conversation's main
 * timeline, or one thread), at most one MarkReadUpTo per interval with the
 * highest position marked there. Nothing is lost: `flush()` sends what is
 * pending at once, `close()` flushes and stops.
 *
 * Each (conversation, thread) keeps its own position, so a read in a thread
 * never advances or suppresses the main timeline's mark, nor the other way
 * round (seqs are shared by the whole conversation). The marker cannot tell a
 * message's thread from its id: name it with `threadRootMessageId` when the
 * message is a thread's. A mark the server finds in another timeline than
 * the one named still takes effect there, and is reported (`onError`, or the
 * next `flush()`) as `INVALID_ARGUMENT` on `thread_root_message_id`.
 */
export interface ReadMarker {
  /**
   * Records that the user has read up to `messageId` (at `seq`) in
   * `conversationId`'s main timeline, or in the thread `threadRootMessageId`.
   * Lower or equal positions than one already marked in the same timeline
   * are ignored.
   */
  mark(conversationId: string, messageId: string, seq: number, options?: ReadMarkOptions): void;
  /** Sends every pending mark now and waits for the answers; rejects with a `ReceiptsError` if a send failed. */
  flush(): Promise<void>;
  /** Flushes, then refuses further marks. */
  close(): Promise<void>;
}

type Send = (conversationId: string, messageId: string) => Promise<ReadUpToResult>;

/** Per-timeline state: one per (conversation, thread). */
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
  // Keyed by (conversation, thread root or null), as JSON: unambiguous for any strings.
  const slots = new Map<string, Slot>();
  const slotOf = (conversationId: string, threadRootMessageId: string | null): Slot => {
    const key = JSON.stringify([conversationId, threadRootMessageId]);
    let slot = slots.get(key);
    if (slot === undefined) {
      slot = { pending: undefined, confirmedSeq: 0, timer: undefined, inflight: undefined };
      slots.set(key, slot);
    }
    return slot;
  };
  const confirm = (slot: Slot, seq: number) => {
    slot.confirmedSeq = Math.max(slot.confirmedSeq, seq);
    if (slot.pending !== undefined && slot.pending.seq <= slot.confirmedSeq) {
      slot.pending = undefined; // marked meanwhile, but lower: already covered
    }
  };
  const unreported: ReceiptsError[] = [];
  let closed = false;

  // Trailing edge: the first mark in a quiet timeline waits one interval,
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
      (result) => {
        if (result.threadRootMessageId === mark.threadRootMessageId) {
          confirm(slot, mark.seq);
          return undefined;
        }
        // The server moved another timeline than the one named: confirm
        // there (a wrong confirmation here would suppress later marks), and
        // tell the caller, whose thread roots are wrong.
        confirm(slotOf(mark.conversationId, result.threadRootMessageId), mark.seq);
        return { error: wrongTimeline(mark, result.threadRootMessageId), mark };
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
    mark(conversationId, messageId, seq, markOptions = {}) {
      if (closed) {
        throw new TypeError("ReadMarker.mark: the marker is closed");
      }
      if (!Number.isSafeInteger(seq) || seq < 1) {
        throw new TypeError(`ReadMarker.mark: seq must be an integer >= 1, got ${String(seq)}`);
      }
      // "" names the main timeline, as on the wire.
      const threadRootMessageId = markOptions.threadRootMessageId || null;
      const slot = slotOf(conversationId, threadRootMessageId);
      if (seq <= slot.confirmedSeq || (slot.pending !== undefined && seq <= slot.pending.seq)) {
        return;
      }
      slot.pending = { conversationId, threadRootMessageId, messageId, seq };
      schedule(slot);
    },
    flush,
    async close() {
      closed = true;
      await flush();
    },
  };
}

/** The error of a mark the server found in another timeline than the one named. */
function wrongTimeline(mark: ReadMark, actual: string | null): ReceiptsError {
  const where = (root: string | null) => (root === null ? "the main timeline" : `thread ${root}`);
  return new ReceiptsError(
    Code.InvalidArgument,
    `thread_root_message_id: message ${mark.messageId} is in ${where(actual)}, but ReadMarker.mark named ` +
      `${where(mark.threadRootMessageId)}; the read was recorded in ${where(actual)}`,
  );
}
