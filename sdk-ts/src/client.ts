// The user-facing client: typed methods over ReceiptService with plain ids,
// numbers and Dates, plus the subscription, read marker and delivered batcher.
// Each method is one of the standalone functions of src/calls.ts.
import {
  allRecipients,
  deliveredBatcher,
  getPrivacySettings,
  getReceipts,
  getUnreadCounts,
  listRecipients,
  markConversationsRead,
  markDelivered,
  markReadUpTo,
  readMarker,
  subscribe,
  updatePrivacySettings,
} from "./calls.js";
import type { Connection, ConnectionOptions } from "./connection.js";
import type { DeliveredBatcher, DeliveredBatcherOptions } from "./delivered-batcher.js";
import type { ReadMarker, ReadMarkerOptions } from "./read-marker.js";
import type { ReceiptSubscription, SubscribeOptions } from "./subscription.js";
import type {
  ConversationReadResult,
  ConversationUnread,
  DeliveryResult,
  MessageReceipts,
  MessageRef,
  PrivacySettings,
  ReadUpToResult,
  RecipientFilter,
  RecipientPage,
  RecipientReceipt,
  ThreadRef,
} from "./types.js";
import type { RequestOptions } from "./unary.js";

/** Options of `createReceiptsClient`. */
export type ReceiptsClientOptions = ConnectionOptions;

/**
 * A client of `ReceiptService` acting as one user. Cheap to keep for the
 * page's or process's lifetime; every method rejects with `ReceiptsError`.
 * Writes are idempotent, so retrying one is always safe.
 */
export interface ReceiptsClient {
  /**
   * Acknowledges that one of the caller's devices has these messages (≤ 1000
   * ids): each named with its conversation (`{ conversationId, messageId }`,
   * preferred) or by its id alone, mixed as you like. One result per distinct
   * message id, in the order given.
   */
  markDelivered(messages: readonly (MessageRef | string)[], options?: RequestOptions): Promise<DeliveryResult[]>;
  /**
   * Moves the caller's read watermark in a conversation up to a message (one
   * write however many messages it covers), in the message's timeline only: a
   * thread's message moves the caller's position in that thread, any other
   * message the one in the main timeline. The result names the timeline
   * (`threadRootMessageId`) and carries the conversation's whole unread count.
   */
  markReadUpTo(conversationId: string, messageId: string, options?: RequestOptions): Promise<ReadUpToResult>;
  /**
   * The receipt state of up to 100 messages of one conversation, as the caller
   * may see it. With `includeRecipients`, each message's `recipients` is the
   * first page of its list (at most 50), and `recipientsNextPageToken` continues
   * it in `listRecipients`.
   */
  getReceipts(
    conversationId: string,
    messageIds: string[],
    options?: RequestOptions & { includeRecipients?: boolean },
  ): Promise<MessageReceipts[]>;
  /**
   * One page of a message's recipients with their states ("read by",
   * "delivered to"), in user-id order, as the caller may see them: `filter`
   * (default `"all"`) keeps some, `pageSize` (default 50, at most 500) bounds
   * the page, and `pageToken` (a page's `nextPageToken`, or a
   * `recipientsNextPageToken` with no filter) continues a listing of the same
   * message with the same filter. A page may hold fewer entries than
   * `pageSize`, even none, while more follow (each call examines a bounded
   * number of members, recipients or not), with a filter or without: page
   * until `nextPageToken` is `undefined`.
   */
  listRecipients(
    conversationId: string,
    messageId: string,
    options?: RequestOptions & { filter?: RecipientFilter; pageSize?: number; pageToken?: string },
  ): Promise<RecipientPage>;
  /**
   * Every recipient of a message that `filter` (default `"all"`) keeps, in
   * user-id order: `listRecipients` page after page (`pageSize` default 500,
   * the largest) until the list is complete. `timeoutMs` applies to each
   * page's call. For a very large group, or to show the first entries at once,
   * page with `listRecipients` instead.
   */
  allRecipients(
    conversationId: string,
    messageId: string,
    options?: RequestOptions & { filter?: RecipientFilter; pageSize?: number },
  ): Promise<RecipientReceipt[]>;
  /**
   * The caller's receipt stream: changes to messages it sent, and its own
   * watermark moves. Reconnects by itself and resumes from its last cursor.
   */
  subscribe(options?: SubscribeOptions): ReceiptSubscription;
  /**
   * Unread badges for up to 500 conversations, one per distinct id, in order:
   * the whole conversation's count, the main timeline's, and the threads'.
   */
  getUnreadCounts(conversationIds: string[], options?: RequestOptions): Promise<ConversationUnread[]>;
  /**
   * Marks up to 500 conversations (each in its main timeline and every
   * thread) and up to 500 single threads (`threads`) read up to their latest
   * message. One result per distinct conversation, in order, then one per
   * distinct thread (with `threadRootMessageId` set), in order.
   */
  markConversationsRead(
    conversationIds: readonly string[],
    options?: RequestOptions & { threads?: readonly ThreadRef[] },
  ): Promise<ConversationReadResult[]>;
  getPrivacySettings(options?: RequestOptions): Promise<PrivacySettings>;
  /** Replaces the caller's privacy settings; turning read receipts off takes effect at once. */
  updatePrivacySettings(settings: PrivacySettings, options?: RequestOptions): Promise<PrivacySettings>;
  /**
   * A debounced read marker: at most one MarkReadUpTo per timeline (a
   * conversation's main timeline, or one thread) per interval, with the
   * highest mark.
   */
  readMarker(options?: ReadMarkerOptions): ReadMarker;
  /** A delivered batcher: MarkDelivered calls bounded in size and delay. */
  deliveredBatcher(options?: DeliveredBatcherOptions): DeliveredBatcher;
}

/**
 * A client over `connection`: each method is the standalone function of the
 * same name (src/calls.ts) bound to it. @internal
 */
export function receiptsClient(connection: Connection): ReceiptsClient {
  return {
    markDelivered: (messages, o) => markDelivered(connection, messages, o),
    markReadUpTo: (conversationId, messageId, o) => markReadUpTo(connection, conversationId, messageId, o),
    getReceipts: (conversationId, messageIds, o) => getReceipts(connection, conversationId, messageIds, o),
    listRecipients: (conversationId, messageId, o) => listRecipients(connection, conversationId, messageId, o),
    allRecipients: (conversationId, messageId, o) => allRecipients(connection, conversationId, messageId, o),
    subscribe: (o) => subscribe(connection, o),
    getUnreadCounts: (conversationIds, o) => getUnreadCounts(connection, conversationIds, o),
    markConversationsRead: (conversationIds, o) => markConversationsRead(connection, conversationIds, o),
    getPrivacySettings: (o) => getPrivacySettings(connection, o),
    updatePrivacySettings: (settings, o) => updatePrivacySettings(connection, settings, o),
    readMarker: (o) => readMarker(connection, o),
    deliveredBatcher: (o) => deliveredBatcher(connection, o),
  };
}
