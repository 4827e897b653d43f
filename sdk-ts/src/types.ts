// Domain types: plain ids, numbers, Dates and readable string states instead
// of protobuf messages, bigints and numeric enums, converted from the
// generated types in exactly one place (here).
import type * as pb from "./gen/receipts/v1/receipts_pb.js";
import type { ReceiptsError } from "./errors.js";

/** The sender's aggregate tick: `"sent"` (✓), `"delivered"` (✓✓, every recipient has it), `"read"` (blue ✓✓, every recipient read it). */
export type Tick = "sent" | "delivered" | "read";
/** One recipient's state: no device has it, one of its devices has it, or read (as the caller may see it). */
export type RecipientState = "none" | "delivered" | "read";
/** What `markDelivered` did with one message. */
export type DeliveryOutcome = "recorded" | "already_delivered" | "not_a_recipient";
/** Per conversation in bulk calls: `"ok"`, or why the other fields are 0. */
export type ConversationOutcome = "ok" | "not_found" | "permission_denied";
/** Why a subscription was reset (`"unknown"`: a reason this SDK does not know yet). */
export type ResetReason = "cursor_expired" | "epoch_changed" | "cursor_invalid" | "replay_too_large" | "unknown";
/**
 * Which recipients `listRecipients` lists, by their state as the caller may
 * see it: everyone, those who read it, those who have it and have not read it
 * (a recipient with read receipts turned off is listed here), or those none
 * of whose devices has it yet.
 */
export type RecipientFilter = "all" | "read" | "delivered_only" | "not_delivered";

// The generated enums' numbers (proto/receipts/v1/receipts.proto). A value
// this SDK does not know (a newer server) reads as the state that claims the
// least, so a tick never shows more than is known.
const TICKS: Record<number, Tick> = { 1: "sent", 2: "delivered", 3: "read" };
const RECIPIENT_STATES: Record<number, RecipientState> = { 1: "none", 2: "delivered", 3: "read" };
const DELIVERY_OUTCOMES: Record<number, DeliveryOutcome> = {
  1: "recorded",
  2: "already_delivered",
  3: "not_a_recipient",
};
const CONVERSATION_OUTCOMES: Record<number, ConversationOutcome> = {
  1: "ok",
  2: "not_found",
  3: "permission_denied",
};
const RESET_REASONS: Record<number, ResetReason> = {
  1: "cursor_expired",
  2: "epoch_changed",
  3: "cursor_invalid",
  4: "replay_too_large",
};

/** @internal */
export const tick = (v: number): Tick => TICKS[v] ?? "sent";
/** @internal */
export const recipientState = (v: number): RecipientState => RECIPIENT_STATES[v] ?? "none";
/** @internal */
export const deliveryOutcome = (v: number): DeliveryOutcome => DELIVERY_OUTCOMES[v] ?? "already_delivered";
/** @internal */
export const conversationOutcome = (v: number): ConversationOutcome => CONVERSATION_OUTCOMES[v] ?? "ok";
/** @internal */
export const resetReason = (v: number): ResetReason => RESET_REASONS[v] ?? "unknown";

// The other way, for requests: every filter has its number.
const RECIPIENT_FILTERS: Record<RecipientFilter, pb.RecipientFilter> = {
  all: 0,
  read: 1,
  delivered_only: 2,
  not_delivered: 3,
};

/**
 * The generated enum's number of a filter. A string that is not a
 * `RecipientFilter` (from untyped code) throws a `TypeError` rather than
 * listing everyone. @internal
 */
export function recipientFilter(filter: RecipientFilter, caller: string): pb.RecipientFilter {
  const v = Object.hasOwn(RECIPIENT_FILTERS, filter) ? RECIPIENT_FILTERS[filter] : undefined;
  if (v === undefined) {
    throw new TypeError(
      `${caller}: \`filter\` must be "all", "read", "delivered_only" or "not_delivered", got ${JSON.stringify(filter)}`,
    );
  }
  return v;
}

/** The receipt state of one message, as the caller may see it. */
export interface MessageReceipts {
  messageId: string;
  conversationId: string;
  /** Its position in the conversation (≥ 1). */
  seq: number;
  senderId: string;
  /** When it was sent (registered, or the time the backend supplied). */
  sentAt: Date;
  /** The sender's aggregate tick: sent, delivered (every recipient has it) or read (every recipient read it). */
  tick: Tick;
  /** Recipients that have it on at least one device (read implies delivered). */
  deliveredCount: number;
  /** Recipients that have read it, as the caller may see it ("2 of 3 read"). */
  readCount: number;
  /** Members at the message's seq, minus its sender. */
  recipientsTotal: number;
  /** When the last recipient got it; `null` until every recipient has it. */
  deliveredAt: Date | null;
  /** When the last recipient read it; `null` until every recipient has (as the caller sees it). */
  readAt: Date | null;
  /**
   * Per-recipient states, in user-id order: filled by `getReceipts(…, {
   * includeRecipients: true })`, where it is the first page of the list (at
   * most 50; see `recipientsNextPageToken`), and in direct-chat events.
   */
  recipients: RecipientReceipt[];
  /**
   * Set when the list may go on past `recipients` (a group of more than one
   * page): pass it as `pageToken` to `listRecipients` (this message, no
   * filter) for the rest, which may turn out empty. `undefined` when
   * `recipients` is complete.
   */
  recipientsNextPageToken?: string;
}

/** One recipient's state for one message. */
export interface RecipientReceipt {
  userId: string;
  state: RecipientState;
  /** When one of the recipient's devices first had it; `null` if none yet. */
  deliveredAt: Date | null;
  /** When the first read covering it was made; `null` if unread or hidden by the recipient's privacy settings. */
  readAt: Date | null;
}

/** One page of a message's recipients (`listRecipients`). */
export interface RecipientPage {
  /** The recipients the filter keeps, in user-id order; possibly fewer than the page size (even none) while more follow, with a filter or without. */
  recipients: RecipientReceipt[];
  /**
   * Pass as `pageToken`, with the same message and filter, for the next
   * page; `undefined` when the list is complete.
   */
  nextPageToken?: string;
}

/**
 * A message named with the conversation it belongs to, for `markDelivered`
 * and `DeliveredBatcher.add` (a `MessageReceipts` is one too). Preferred over
 * the id alone: the server then finds the message in its conversation instead
 * of first looking up which conversation it is in.
 */
export interface MessageRef {
  conversationId: string;
  messageId: string;
}

/** The outcome of acknowledging one message with `markDelivered`. */
export interface DeliveryResult {
  messageId: string;
  outcome: DeliveryOutcome;
  /** When the caller's delivery first became true; `null` for `"not_a_recipient"`. */
  deliveredAt: Date | null;
}

/**
 * The caller's read position after `markReadUpTo`, in the timeline the
 * message belongs to: the conversation's main timeline, or one thread.
 */
export interface ReadUpToResult {
  /** The caller's read watermark (a seq) in the timeline that was read. */
  readUpToSeq: number;
  /** True if the call moved the watermark forward (false for a late or duplicate call). */
  advanced: boolean;
  /** The caller's unread count in the timeline that was read (the main timeline, or the thread) after the call. */
  unreadCount: number;
  /** The thread that was read (its root message's id); `null` for the main timeline. */
  threadRootMessageId: string | null;
  /** The caller's unread count in the whole conversation after the call (the main timeline plus every thread): its badge. */
  conversationUnreadCount: number;
}

/**
 * The caller's read watermark and unread count in one timeline of a
 * conversation: its main timeline (`threadRootMessageId` is `null`) or one
 * thread.
 */
export interface Watermark {
  conversationId: string;
  /** The thread (its root message's id); `null` for the main timeline. */
  threadRootMessageId: string | null;
  /** The caller's read watermark (a seq) in the timeline. */
  readUpToSeq: number;
  /** The caller's unread count in the timeline. */
  unreadCount: number;
  /**
   * The caller's unread count in the whole conversation (the main timeline
   * plus every thread): the conversation's badge. For an event the server
   * logged before it had threads, `unreadCount` (then the same thing).
   */
  conversationUnreadCount: number;
}

/** The unread count of one thread (`ConversationUnread.threads`). */
export interface ThreadUnread {
  /** The thread's root message. */
  threadRootMessageId: string;
  /** Messages of the thread others sent after the caller's position in it. */
  unreadCount: number;
  /** The caller's read position in the thread (a seq; 0 before any read). */
  readUpToSeq: number;
  /** The highest seq registered in the thread. */
  lastSeq: number;
}

/** The unread badge of one conversation (`getUnreadCounts`). */
export interface ConversationUnread {
  conversationId: string;
  /** `OK`, or why the other fields are 0 (`NOT_FOUND`, `PERMISSION_DENIED`). */
  outcome: ConversationOutcome;
  /**
   * Messages others sent after the caller's read position in their timeline,
   * while the caller was a member: the main timeline plus every thread (the
   * conversation's badge).
   */
  unreadCount: number;
  /** The caller's read watermark (a seq) in the main timeline. */
  readUpToSeq: number;
  /** The highest seq registered in the conversation (in any timeline). */
  lastSeq: number;
  /** The unread messages of the main timeline alone. */
  mainUnreadCount: number;
  /**
   * The threads with unread messages, highest root first (at most 100;
   * their counts are in `unreadCount` whether listed or not).
   */
  threads: ThreadUnread[];
}

/** One thread of a conversation, named by its root message (`markConversationsRead`'s `threads`). */
export interface ThreadRef {
  conversationId: string;
  threadRootMessageId: string;
}

/** The result of marking one conversation, or one thread, read (`markConversationsRead`). */
export interface ConversationReadResult {
  conversationId: string;
  /** The thread, for a result of `threads`; `null` for a conversation. */
  threadRootMessageId: string | null;
  outcome: ConversationOutcome;
  /** The caller's read watermark after the call (in the main timeline, or in the thread). */
  readUpToSeq: number;
  /** True if the call moved a watermark forward (for a conversation: its main timeline's or any of its threads'). */
  advanced: boolean;
}

/** A user's privacy settings. */
export interface PrivacySettings {
  /** Whether others may see when this user read their messages (default true). */
  sendReadReceipts: boolean;
}

/** What a client needs to repaint after a reset: replace local state with it. */
export interface ReceiptsSnapshot {
  /** The caller's most recently sent messages (up to 200), newest first, without per-recipient entries. */
  recentMessages: MessageReceipts[];
  /**
   * The caller's watermark and unread count in each of its conversations (up
   * to 500): per conversation its main timeline (`threadRootMessageId` is
   * `null`), followed by the threads in which it has read anything (up to
   * 100 per conversation).
   */
  watermarks: Watermark[];
}

/**
 * One event of a subscription. Every event carries `cursor`, the position to
 * resume from after it (opaque; store it as is).
 */
export type ReceiptEvent =
  | ReceiptsEvent
  | WatermarkEvent
  | ResetEvent
  | LiveEvent
  | ReconnectingEvent;

/** Absolute states of messages the caller sent in one conversation changed. */
export interface ReceiptsEvent {
  type: "receipts";
  cursor: string;
  conversationId: string;
  /** Group updates are aggregated over a short window; direct ones arrive at once. */
  group: boolean;
  /** Absolute states: applying an older or repeated update again is harmless. Applied after `ranges`. */
  messages: MessageReceipts[];
  /**
   * States shared by runs of the caller's messages, by seq: only on a
   * subscription opened with `acceptRanges: true` (empty otherwise). Apply
   * each to the messages you hold with `applyRange`.
   */
  ranges: ReceiptRange[];
}

/**
 * One state for every message the caller sent in one conversation with
 * `fromSeq <= seq <= toSeq` (the fields of `MessageReceipts` that are not the
 * message's own).
 */
export interface ReceiptRange {
  fromSeq: number;
  /** Inclusive. */
  toSeq: number;
  tick: Tick;
  deliveredCount: number;
  readCount: number;
  recipientsTotal: number;
  deliveredAt: Date | null;
  readAt: Date | null;
  /** Per-recipient states (direct chats). */
  recipients: RecipientReceipt[];
}

/**
 * `message` with the state of `range` if the range covers its seq, else
 * `message` itself (the same object, so a UI can tell nothing changed). The
 * range must come from an event of the message's conversation. The range's
 * recipients replace the message's, so a `recipientsNextPageToken` (which
 * continued the replaced list) is dropped.
 */
export function applyRange(message: MessageReceipts, range: ReceiptRange): MessageReceipts {
  if (message.seq < range.fromSeq || message.seq > range.toSeq) {
    return message;
  }
  const { recipientsNextPageToken: _continued, ...rest } = message;
  return {
    ...rest,
    tick: range.tick,
    deliveredCount: range.deliveredCount,
    readCount: range.readCount,
    recipientsTotal: range.recipientsTotal,
    deliveredAt: range.deliveredAt,
    readAt: range.readAt,
    recipients: range.recipients,
  };
}

/** The caller's own read watermark moved (on any of its devices), in the main timeline or in a thread. */
export interface WatermarkEvent extends Watermark {
  type: "watermark";
  cursor: string;
}

/** The stream could not resume from the cursor: replace local state with `snapshot`, then continue. */
export interface ResetEvent {
  type: "reset";
  cursor: string;
  reason: ResetReason;
  snapshot: ReceiptsSnapshot;
}

/** Replay is complete: what follows is live. Sent once per connection. */
export interface LiveEvent {
  type: "live";
  cursor: string;
  /** How many events were replayed on this connection before it. */
  replayed: number;
}

/**
 * The connection was lost; the subscription reconnects after `delayMs` and
 * resumes from `cursor` (the last one it yielded). Informational: nothing to
 * apply. A `live` event follows once it has caught up.
 */
export interface ReconnectingEvent {
  type: "reconnecting";
  cursor: string;
  /** 1 for the first retry after a loss, growing while retries fail. */
  attempt: number;
  delayMs: number;
  /** Why the connection ended. */
  error: ReceiptsError;
}

const int = (v: bigint): number => Number(v);
const time = (ms: bigint): Date | null => (ms === 0n ? null : new Date(Number(ms)));
/** A thread root from the wire: empty names the main timeline. */
const threadRoot = (id: string): string | null => (id === "" ? null : id);
/**
 * The conversation's unread count next to a timeline's: 0 from a server (or
 * an event logged) before threads, where the timeline's count is the
 * conversation's. A real count is never below the timeline's, so a 0 with
 * unread messages in the timeline can only mean "not sent".
 */
const conversationCount = (conversation: bigint, timeline: bigint): number =>
  int(conversation === 0n ? timeline : conversation);

/** @internal */
export function messageReceipts(m: pb.MessageReceipts): MessageReceipts {
  return {
    messageId: m.messageId,
    conversationId: m.conversationId,
    seq: int(m.seq),
    senderId: m.senderId,
    sentAt: new Date(Number(m.sentAtMs)),
    tick: tick(m.tick),
    deliveredCount: int(m.deliveredCount),
    readCount: int(m.readCount),
    recipientsTotal: int(m.recipientsTotal),
    deliveredAt: time(m.deliveredAtMs),
    readAt: time(m.readAtMs),
    recipients: m.recipients.map(recipientReceipt),
    ...(m.recipientsNextPageToken !== "" && { recipientsNextPageToken: m.recipientsNextPageToken }),
  };
}

function recipientReceipt(r: pb.RecipientReceipt): RecipientReceipt {
  return {
    userId: r.userId,
    state: recipientState(r.state),
    deliveredAt: time(r.deliveredAtMs),
    readAt: time(r.readAtMs),
  };
}

/** @internal */
export function recipientPage(r: pb.ListRecipientsResponse): RecipientPage {
  return {
    recipients: r.recipients.map(recipientReceipt),
    ...(r.nextPageToken !== "" && { nextPageToken: r.nextPageToken }),
  };
}

/** @internal */
export function receiptRange(r: pb.ReceiptRange): ReceiptRange {
  return {
    fromSeq: int(r.fromSeq),
    toSeq: int(r.toSeq),
    tick: tick(r.tick),
    deliveredCount: int(r.deliveredCount),
    readCount: int(r.readCount),
    recipientsTotal: int(r.recipientsTotal),
    deliveredAt: time(r.deliveredAtMs),
    readAt: time(r.readAtMs),
    recipients: r.recipients.map(recipientReceipt),
  };
}

/** @internal */
export function deliveryResult(r: pb.DeliveryResult): DeliveryResult {
  return {
    messageId: r.messageId,
    outcome: deliveryOutcome(r.outcome),
    deliveredAt: time(r.deliveredAtMs),
  };
}

/** @internal */
export function watermark(w: pb.WatermarkSync): Watermark {
  return {
    conversationId: w.conversationId,
    threadRootMessageId: threadRoot(w.threadRootMessageId),
    readUpToSeq: int(w.readUpToSeq),
    unreadCount: int(w.unreadCount),
    conversationUnreadCount: conversationCount(w.conversationUnreadCount, w.unreadCount),
  };
}

/** @internal */
export function readUpToResult(r: pb.MarkReadUpToResponse): ReadUpToResult {
  return {
    readUpToSeq: int(r.readUpToSeq),
    advanced: r.advanced,
    unreadCount: int(r.unreadCount),
    threadRootMessageId: threadRoot(r.threadRootMessageId),
    conversationUnreadCount: conversationCount(r.conversationUnreadCount, r.unreadCount),
  };
}

/** @internal */
export function conversationUnread(c: pb.ConversationUnread): ConversationUnread {
  const threads = c.threads.map(threadUnread);
  return {
    conversationId: c.conversationId,
    outcome: conversationOutcome(c.outcome),
    unreadCount: int(c.unreadCount),
    readUpToSeq: int(c.readUpToSeq),
    lastSeq: int(c.lastSeq),
    // A server before threads sends neither: its whole count is the main
    // timeline's. (From a server with threads, a 0 with no thread listed
    // means nothing is unread, as every thread with unread messages is
    // listed up to 100.)
    mainUnreadCount: int(c.mainUnreadCount === 0n && threads.length === 0 ? c.unreadCount : c.mainUnreadCount),
    threads,
  };
}

function threadUnread(t: pb.ThreadUnread): ThreadUnread {
  return {
    threadRootMessageId: t.threadRootMessageId,
    unreadCount: int(t.unreadCount),
    readUpToSeq: int(t.readUpToSeq),
    lastSeq: int(t.lastSeq),
  };
}

/** @internal */
export function conversationReadResult(r: pb.ConversationReadResult): ConversationReadResult {
  return {
    conversationId: r.conversationId,
    threadRootMessageId: threadRoot(r.threadRootMessageId),
    outcome: conversationOutcome(r.outcome),
    readUpToSeq: int(r.readUpToSeq),
    advanced: r.advanced,
  };
}

/**
 * Converts one stream message; `undefined` for an event kind this SDK does not
 * know yet (a newer server), whose cursor the subscription still advances past.
 *
 * @internal
 */
export function receiptEvent(
  res: pb.SubscribeReceiptsResponse,
): Exclude<ReceiptEvent, ReconnectingEvent> | undefined {
  const cursor = res.cursor;
  const e = res.event;
  switch (e.case) {
    case "receipts":
      return {
        type: "receipts",
        cursor,
        conversationId: e.value.conversationId,
        group: e.value.group,
        messages: e.value.messages.map(messageReceipts),
        ranges: e.value.ranges.map(receiptRange),
      };
    case "watermark":
      return { type: "watermark", cursor, ...watermark(e.value) };
    case "reset":
      return {
        type: "reset",
        cursor,
        reason: resetReason(e.value.reason),
        snapshot: {
          recentMessages: e.value.recentMessages.map(messageReceipts),
          watermarks: e.value.watermarks.map(watermark),
        },
      };
    case "live":
      return { type: "live", cursor, replayed: int(e.value.replayed) };
    default:
      return undefined;
  }
}
