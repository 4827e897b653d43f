// ReceiptService's calls as standalone functions of a connection. Each is
// the one implementation of its call: `ReceiptsClient`'s methods delegate to
// them, and a page that imports only `markDelivered` ships only what that
// needs (no subscription, receipt state or read marker).
import type { Connection } from "./connection.js";
import { createDeliveredBatcher, type DeliveredBatcher, type DeliveredBatcherOptions } from "./delivered-batcher.js";
import { ReceiptService } from "./gen/receipts/v1/receipts_pb.js";
import { createReadMarker, type ReadMarker, type ReadMarkerOptions } from "./read-marker.js";
import { openSubscription, type ReceiptSubscription, type SubscribeOptions } from "./subscription.js";
import {
  conversationReadResult,
  conversationUnread,
  deliveryResult,
  messageReceipts,
  readUpToResult,
  recipientFilter,
  recipientPage,
  type ConversationReadResult,
  type ConversationUnread,
  type DeliveryResult,
  type MessageReceipts,
  type MessageRef,
  type PrivacySettings,
  type ReadUpToResult,
  type RecipientFilter,
  type RecipientPage,
  type RecipientReceipt,
  type ThreadRef,
} from "./types.js";
import { unary, type RequestOptions } from "./unary.js";

/**
 * Where calls go and who makes them (the transport, credentials, trace
 * context and deadline), from `createReceiptsConnection`: the first argument
 * of the standalone functions (`markDelivered(connection, ids)`, …). Its
 * members are internal.
 */
export type ReceiptsConnection = Connection;

/**
 * Acknowledges that one of the caller's devices has these messages (≤ 1000
 * ids): each named with its conversation (`{ conversationId, messageId }`,
 * preferred) or by its id alone, mixed as you like. One result per distinct
 * message id, in the order given.
 */
export async function markDelivered(
  connection: ReceiptsConnection,
  messages: readonly (MessageRef | string)[],
  options?: RequestOptions,
): Promise<DeliveryResult[]> {
  const request = deliveredRequest(messages);
  const res = await unary(connection, ReceiptService.method.markDelivered, request, options);
  const results = res.results.map(deliveryResult);
  if (request.conversations.length === 0) {
    return results; // ids alone: the server answers in their order
  }
  // The server answers ids alone first, then conversation by conversation.
  const position = new Map<string, number>();
  messages.forEach((m, i) => {
    const id = typeof m === "string" ? m : m.messageId;
    if (!position.has(id)) {
      position.set(id, i);
    }
  });
  const at = (r: DeliveryResult) => position.get(r.messageId) ?? messages.length;
  return results.sort((a, b) => at(a) - at(b));
}

/**
 * The MarkDelivered request for `messages`: ids alone in `message_ids` as
 * given, and the others grouped by conversation (first-seen order) in
 * `conversations`. An id also given with its conversation is sent only with
 * it. Everything else (ids, limits, one conversation per message) is the
 * server's to check.
 */
function deliveredRequest(messages: readonly (MessageRef | string)[]) {
  const byConversation = new Map<string, string[]>();
  for (const m of messages) {
    if (typeof m !== "string") {
      const ids = byConversation.get(m.conversationId);
      if (ids === undefined) {
        byConversation.set(m.conversationId, [m.messageId]);
      } else {
        ids.push(m.messageId);
      }
    }
  }
  if (byConversation.size === 0) {
    return { messageIds: messages as string[], conversations: [] };
  }
  const named = new Set([...byConversation.values()].flat());
  return {
    messageIds: messages.filter((m): m is string => typeof m === "string" && !named.has(m)),
    conversations: [...byConversation].map(([conversationId, messageIds]) => ({ conversationId, messageIds })),
  };
}

/**
 * Moves the caller's read watermark in a conversation up to a message (one
 * write however many messages it covers), in the message's timeline only: a
 * thread's message moves the caller's position in that thread, any other
 * message the one in the main timeline. The result names the timeline
 * (`threadRootMessageId`) and carries the conversation's whole unread count.
 */
export async function markReadUpTo(
  connection: ReceiptsConnection,
  conversationId: string,
  messageId: string,
  options?: RequestOptions,
): Promise<ReadUpToResult> {
  const res = await unary(connection, ReceiptService.method.markReadUpTo, { conversationId, messageId }, options);
  return readUpToResult(res);
}

/**
 * The receipt state of up to 100 messages of one conversation, as the caller
 * may see it. With `includeRecipients`, each message's `recipients` is the
 * first page of its list (at most 50), and `recipientsNextPageToken` continues
 * it in `listRecipients`.
 */
export async function getReceipts(
  connection: ReceiptsConnection,
  conversationId: string,
  messageIds: string[],
  options?: RequestOptions & { includeRecipients?: boolean },
): Promise<MessageReceipts[]> {
  const includeRecipients = options?.includeRecipients ?? false;
  const res = await unary(
    connection,
    ReceiptService.method.getReceipts,
    { conversationId, messageIds, includeRecipients },
    options,
  );
  return res.messages.map(messageReceipts);
}

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
export async function listRecipients(
  connection: ReceiptsConnection,
  conversationId: string,
  messageId: string,
  options?: RequestOptions & { filter?: RecipientFilter; pageSize?: number; pageToken?: string },
): Promise<RecipientPage> {
  const filter = recipientFilter(options?.filter ?? "all", "listRecipients");
  const pageSize = options?.pageSize ?? 0;
  const pageToken = options?.pageToken ?? "";
  const res = await unary(
    connection,
    ReceiptService.method.listRecipients,
    { conversationId, messageId, filter, pageSize, pageToken },
    options,
  );
  return recipientPage(res);
}

/**
 * Every recipient of a message that `filter` (default `"all"`) keeps, in
 * user-id order: `listRecipients` page after page (`pageSize` default 500,
 * the largest) until the list is complete. `timeoutMs` applies to each
 * page's call. For a very large group, or to show the first entries at once,
 * page with `listRecipients` instead.
 */
export async function allRecipients(
  connection: ReceiptsConnection,
  conversationId: string,
  messageId: string,
  options?: RequestOptions & { filter?: RecipientFilter; pageSize?: number },
): Promise<RecipientReceipt[]> {
  const recipients: RecipientReceipt[] = [];
  let pageToken: string | undefined;
  do {
    const page = await listRecipients(connection, conversationId, messageId, {
      ...options,
      pageSize: options?.pageSize ?? 500,
      pageToken,
    });
    recipients.push(...page.recipients);
    pageToken = page.nextPageToken;
  } while (pageToken !== undefined);
  return recipients;
}

/**
 * The caller's receipt stream: changes to messages it sent, and its own
 * watermark moves. Reconnects by itself and resumes from its last cursor.
 */
export function subscribe(connection: ReceiptsConnection, options?: SubscribeOptions): ReceiptSubscription {
  return openSubscription(connection, options);
}

/**
 * Unread badges for up to 500 conversations, one per distinct id, in order:
 * the whole conversation's count, the main timeline's, and the threads'.
 */
export async function getUnreadCounts(
  connection: ReceiptsConnection,
  conversationIds: string[],
  options?: RequestOptions,
): Promise<ConversationUnread[]> {
  const res = await unary(connection, ReceiptService.method.getUnreadCounts, { conversationIds }, options);
  return res.conversations.map(conversationUnread);
}

/**
 * Marks up to 500 conversations (each in its main timeline and every thread)
 * and up to 500 single threads (`threads`) read up to their latest message.
 * One result per distinct conversation, in order, then one per distinct
 * thread (with `threadRootMessageId` set), in order.
 */
export async function markConversationsRead(
  connection: ReceiptsConnection,
  conversationIds: readonly string[],
  options?: RequestOptions & { threads?: readonly ThreadRef[] },
): Promise<ConversationReadResult[]> {
  const threads = (options?.threads ?? []).map((t) => ({
    conversationId: t.conversationId,
    threadRootMessageId: t.threadRootMessageId,
  }));
  const res = await unary(
    connection,
    ReceiptService.method.markConversationsRead,
    { conversationIds: [...conversationIds], threads },
    options,
  );
  return res.results.map(conversationReadResult);
}

/** The caller's privacy settings. */
export async function getPrivacySettings(
  connection: ReceiptsConnection,
  options?: RequestOptions,
): Promise<PrivacySettings> {
  const res = await unary(connection, ReceiptService.method.getPrivacySettings, {}, options);
  return { sendReadReceipts: res.settings?.sendReadReceipts ?? true };
}

/** Replaces the caller's privacy settings; turning read receipts off takes effect at once. */
export async function updatePrivacySettings(
  connection: ReceiptsConnection,
  settings: PrivacySettings,
  options?: RequestOptions,
): Promise<PrivacySettings> {
  const res = await unary(
    connection,
    ReceiptService.method.updatePrivacySettings,
    { settings: { sendReadReceipts: settings.sendReadReceipts } },
    options,
  );
  return { sendReadReceipts: res.settings?.sendReadReceipts ?? true };
}

/**
 * A debounced read marker: at most one MarkReadUpTo per timeline (a
 * conversation's main timeline, or one thread) per interval, with the highest
 * mark.
 */
export function readMarker(connection: ReceiptsConnection, options?: ReadMarkerOptions): ReadMarker {
  return createReadMarker((c, m) => markReadUpTo(connection, c, m), options);
}

/** A delivered batcher: MarkDelivered calls bounded in size and delay. */
export function deliveredBatcher(connection: ReceiptsConnection, options?: DeliveredBatcherOptions): DeliveredBatcher {
  return createDeliveredBatcher((messages) => markDelivered(connection, messages), options);
}
