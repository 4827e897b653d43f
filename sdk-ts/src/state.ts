// A client-side receipt state: what a UI renders, kept current by a
// subscription (the TypeScript twin of the Rust SDK's `ReceiptState`).
import type { ReceiptsClient } from "./client.js";
import { applyRange, type MessageReceipts, type ReceiptEvent, type Watermark } from "./types.js";

/**
 * The receipts of the messages the caller sent, and its read position per
 * timeline of each conversation (the main timeline and each thread, kept
 * apart) with the conversation's unread badge, as the server last told
 * them: "apply absolute states,
 * replace everything on a reset, remember each message's seq" in one place,
 * so that a UI only renders.
 *
 * Feed it with `track` (what `getReceipts` returned, e.g. when a
 * conversation opens) and `follow` (a subscription that asks for ranges and
 * applies every event), or call `apply` yourself. Read it with `message` and
 * `conversation`; `onChange` tells when to repaint.
 *
 * The rules: every state is absolute, so the latest one wins; a range applies
 * to the held messages whose seq falls in it (one not held yet gets its state
 * from `track` or a later event); a reset replaces everything with the
 * server's snapshot.
 */
export interface ReceiptState {
  /** Holds `messages`, replacing what it held for them; returns the ids whose state changed. */
  track(messages: Iterable<MessageReceipts>): string[];
  /** Applies one event; returns what changed (message ids; for a watermark, in any timeline, its conversation id). */
  apply(event: ReceiptEvent): string[];
  /**
   * Subscribes with `client` (asking for ranges) from `options.cursor`, or
   * from `cursor` when omitted, applying every event until the subscription
   * ends: resolves when it is closed (`signal`), rejects with the error that
   * ended it otherwise (reconnecting is the subscription's job).
   */
  follow(client: Pick<ReceiptsClient, "subscribe">, options?: { cursor?: string; signal?: AbortSignal }): Promise<void>;
  /** A held message's state. */
  message(messageId: string): MessageReceipts | undefined;
  /** The held messages of a conversation, in seq order. */
  conversation(conversationId: string): MessageReceipts[];
  /** A held message's seq: what `readMarker.mark` needs. */
  seq(messageId: string): number | undefined;
  /**
   * The caller's read position and unread count in a conversation's main
   * timeline, or in the thread `threadRootMessageId`, once told. A thread's
   * position never stands for the main timeline's, nor the other way round.
   */
  watermark(conversationId: string, threadRootMessageId?: string | null): Watermark | undefined;
  /** The caller's positions in the threads of a conversation it was told about, in the order first told. */
  threadWatermarks(conversationId: string): Watermark[];
  /**
   * The conversation's unread badge: the main timeline plus every thread
   * (`conversationUnreadCount` of the last watermark told for any of its
   * timelines), once told.
   */
  unreadCount(conversationId: string): number | undefined;
  /** Where `follow` resumes: the cursor of the last event it applied. Persist it to resume after a reload. */
  readonly cursor: string | undefined;
  /** Calls `listener` with what changed after every change; returns a function that removes it. */
  onChange(listener: (changed: string[]) => void): () => void;
}

/** An empty `ReceiptState`. */
export function createReceiptState(): ReceiptState {
  let messages = new Map<string, MessageReceipts>();
  // conversation -> seq -> message id: what ranges apply to.
  let bySeq = new Map<string, Map<number, string>>();
  // conversation -> thread root (null: the main timeline) -> position.
  let watermarks = new Map<string, Map<string | null, Watermark>>();
  // conversation -> its badge, from the last watermark of any of its timelines.
  let badges = new Map<string, number>();
  let cursor: string | undefined;
  const listeners = new Set<(changed: string[]) => void>();

  const notify = (changed: string[], always = false) => {
    if (changed.length > 0 || always) {
      for (const l of [...listeners]) l(changed);
    }
  };
  const put = (m: MessageReceipts): boolean => {
    let seqs = bySeq.get(m.conversationId);
    if (seqs === undefined) {
      seqs = new Map();
      bySeq.set(m.conversationId, seqs);
    }
    seqs.set(m.seq, m.messageId);
    const old = messages.get(m.messageId);
    if (old !== undefined && sameState(old, m)) {
      return false;
    }
    messages.set(m.messageId, m);
    return true;
  };

  /** Holds `w` as its timeline's position and its conversation's badge; true if either changed. */
  const putWatermark = (w: Watermark): boolean => {
    let timelines = watermarks.get(w.conversationId);
    if (timelines === undefined) {
      timelines = new Map();
      watermarks.set(w.conversationId, timelines);
    }
    const old = timelines.get(w.threadRootMessageId);
    const badge = badges.get(w.conversationId);
    badges.set(w.conversationId, w.conversationUnreadCount);
    if (
      old?.readUpToSeq === w.readUpToSeq &&
      old.unreadCount === w.unreadCount &&
      old.conversationUnreadCount === w.conversationUnreadCount &&
      badge === w.conversationUnreadCount
    ) {
      return false;
    }
    timelines.set(w.threadRootMessageId, {
      conversationId: w.conversationId,
      threadRootMessageId: w.threadRootMessageId,
      readUpToSeq: w.readUpToSeq,
      unreadCount: w.unreadCount,
      conversationUnreadCount: w.conversationUnreadCount,
    });
    return true;
  };

  const state: ReceiptState = {
    track(ms) {
      const changed: string[] = [];
      for (const m of ms) {
        if (put(m)) changed.push(m.messageId);
      }
      notify(changed);
      return changed;
    },

    apply(event) {
      const changed: string[] = [];
      switch (event.type) {
        case "receipts": {
          const seqs = bySeq.get(event.conversationId);
          for (const range of event.ranges) {
            for (const [seq, id] of seqs ?? []) {
              if (seq < range.fromSeq || seq > range.toSeq) continue;
              const old = messages.get(id);
              if (old === undefined) continue;
              const next = applyRange(old, range);
              if (!sameState(old, next)) {
                messages.set(id, next);
                changed.push(id);
              }
            }
          }
          for (const m of event.messages) {
            if (put(m)) changed.push(m.messageId);
          }
          break;
        }
        case "watermark": {
          if (putWatermark(event)) changed.push(event.conversationId);
          break;
        }
        case "reset": {
          messages = new Map();
          bySeq = new Map();
          watermarks = new Map();
          badges = new Map();
          for (const m of event.snapshot.recentMessages) {
            put(m);
            changed.push(m.messageId);
          }
          // Per conversation: the main timeline, then its threads.
          for (const w of event.snapshot.watermarks) putWatermark(w);
          // Everything was replaced, even with an empty snapshot.
          notify(changed, true);
          return changed;
        }
        default:
          break;
      }
      notify(changed);
      return changed;
    },

    async follow(client, options = {}) {
      const sub = client.subscribe({
        cursor: options.cursor ?? cursor,
        signal: options.signal,
        acceptRanges: true,
      });
      for await (const event of sub) {
        state.apply(event);
        if (event.type !== "reconnecting") cursor = event.cursor;
      }
    },

    message: (id) => messages.get(id),
    conversation(conversationId) {
      const seqs = bySeq.get(conversationId);
      if (seqs === undefined) return [];
      return [...seqs.entries()]
        .sort(([a], [b]) => a - b)
        .flatMap(([, id]) => {
          const m = messages.get(id);
          return m === undefined ? [] : [m];
        });
    },
    seq: (id) => messages.get(id)?.seq,
    watermark: (conversationId, threadRootMessageId) =>
      watermarks.get(conversationId)?.get(threadRootMessageId || null),
    threadWatermarks: (conversationId) =>
      [...(watermarks.get(conversationId)?.values() ?? [])].filter((w) => w.threadRootMessageId !== null),
    unreadCount: (conversationId) => badges.get(conversationId),
    get cursor() {
      return cursor;
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
  return state;
}

/** Whether two states of one message say the same (dates by value). */
function sameState(a: MessageReceipts, b: MessageReceipts): boolean {
  const t = (d: Date | null) => (d === null ? null : d.getTime());
  return (
    a.tick === b.tick &&
    a.deliveredCount === b.deliveredCount &&
    a.readCount === b.readCount &&
    a.recipientsTotal === b.recipientsTotal &&
    t(a.deliveredAt) === t(b.deliveredAt) &&
    t(a.readAt) === t(b.readAt) &&
    a.seq === b.seq &&
    a.recipientsNextPageToken === b.recipientsNextPageToken &&
    a.recipients.length === b.recipients.length &&
    a.recipients.every((r, i) => {
      const s = b.recipients[i]!;
      return r.userId === s.userId && r.state === s.state && t(r.deliveredAt) === t(s.deliveredAt) && t(r.readAt) === t(s.readAt);
    })
  );
}
