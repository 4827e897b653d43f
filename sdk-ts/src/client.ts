// The user-facing client: typed methods over ReceiptService with plain ids,
// numbers and Dates, plus the subscription, read marker and delivered batcher.
import { createClient } from "@connectrpc/connect";
import { openConnection, type Connection, type ConnectionOptions, type TransportFactory } from "./connection.js";
import { createDeliveredBatcher, type DeliveredBatcher, type DeliveredBatcherOptions } from "./delivered-batcher.js";
import { isConnectionFailure, ReceiptsError } from "./errors.js";
import { ReceiptService } from "./gen/receipts/v1/receipts_pb.js";
import { createReadMarker, type ReadMarker, type ReadMarkerOptions } from "./read-marker.js";
import { openSubscription, type ReceiptSubscription, type SubscribeOptions } from "./subscription.js";
import {
  conversationReadResult,
  conversationUnread,
  deliveryResult,
  messageReceipts,
  type ConversationReadResult,
  type ConversationUnread,
  type DeliveryResult,
  type MessageReceipts,
  type PrivacySettings,
  type ReadUpToResult,
} from "./types.js";

/** Options of `createReceiptsClient`. */
export type ReceiptsClientOptions = ConnectionOptions;

/** Per-call options of unary methods. */
export interface RequestOptions {
  /** Cancels the call (it rejects with CANCELED). */
  signal?: AbortSignal;
  /** Overrides the client's deadline for this call, in ms. */
  timeoutMs?: number;
}

/**
 * A client of `ReceiptService` acting as one user. Cheap to keep for the
 * page's or process's lifetime; every method rejects with `ReceiptsError`.
 * Writes are idempotent, so retrying one is always safe.
 */
export interface ReceiptsClient {
  /** Acknowledges that one of the caller's devices has these messages (≤ 1000 ids); one result per distinct id, in order. */
  markDelivered(messageIds: string[], options?: RequestOptions): Promise<DeliveryResult[]>;
  /** Moves the caller's read watermark in a conversation up to a message (one write however many messages it covers). */
  markReadUpTo(conversationId: string, messageId: string, options?: RequestOptions): Promise<ReadUpToResult>;
  /** The receipt state of up to 100 messages of one conversation, as the caller may see it. */
  getReceipts(
    conversationId: string,
    messageIds: string[],
    options?: RequestOptions & { includeRecipients?: boolean },
  ): Promise<MessageReceipts[]>;
  /**
   * The caller's receipt stream: changes to messages it sent, and its own
   * watermark moves. Reconnects by itself and resumes from its last cursor.
   */
  subscribe(options?: SubscribeOptions): ReceiptSubscription;
  /** Unread badges for up to 500 conversations, one per distinct id, in order. */
  getUnreadCounts(conversationIds: string[], options?: RequestOptions): Promise<ConversationUnread[]>;
  /** Marks up to 500 conversations read up to their latest message, with a result each. */
  markConversationsRead(conversationIds: string[], options?: RequestOptions): Promise<ConversationReadResult[]>;
  getPrivacySettings(options?: RequestOptions): Promise<PrivacySettings>;
  /** Replaces the caller's privacy settings; turning read receipts off takes effect at once. */
  updatePrivacySettings(settings: PrivacySettings, options?: RequestOptions): Promise<PrivacySettings>;
  /** A debounced read marker: at most one MarkReadUpTo per conversation per interval, with the highest mark. */
  readMarker(options?: ReadMarkerOptions): ReadMarker;
  /** A delivered batcher: MarkDelivered calls bounded in size and delay. */
  deliveredBatcher(options?: DeliveredBatcherOptions): DeliveredBatcher;
}

/** @internal */
export function receiptsClientFactory(defaultTransport: TransportFactory) {
  return function createReceiptsClient(options: ReceiptsClientOptions): ReceiptsClient {
    const connection = openConnection(options, "user", defaultTransport, "createReceiptsClient");
    const rpc = createClient(ReceiptService, connection.transport);
    const call = unaryCaller(connection);
    const client: ReceiptsClient = {
      async markDelivered(messageIds, o) {
        const res = await call(o, (opts) => rpc.markDelivered({ messageIds }, opts));
        return res.results.map(deliveryResult);
      },
      async markReadUpTo(conversationId, messageId, o) {
        const res = await call(o, (opts) => rpc.markReadUpTo({ conversationId, messageId }, opts));
        return {
          readUpToSeq: Number(res.readUpToSeq),
          advanced: res.advanced,
          unreadCount: Number(res.unreadCount),
        };
      },
      async getReceipts(conversationId, messageIds, o) {
        const includeRecipients = o?.includeRecipients ?? false;
        const res = await call(o, (opts) =>
          rpc.getReceipts({ conversationId, messageIds, includeRecipients }, opts),
        );
        return res.messages.map(messageReceipts);
      },
      subscribe(o) {
        return openSubscription(rpc, connection, o);
      },
      async getUnreadCounts(conversationIds, o) {
        const res = await call(o, (opts) => rpc.getUnreadCounts({ conversationIds }, opts));
        return res.conversations.map(conversationUnread);
      },
      async markConversationsRead(conversationIds, o) {
        const res = await call(o, (opts) => rpc.markConversationsRead({ conversationIds }, opts));
        return res.results.map(conversationReadResult);
      },
      async getPrivacySettings(o) {
        const res = await call(o, (opts) => rpc.getPrivacySettings({}, opts));
        return { sendReadReceipts: res.settings?.sendReadReceipts ?? true };
      },
      async updatePrivacySettings(settings, o) {
        const res = await call(o, (opts) =>
          rpc.updatePrivacySettings({ settings: { sendReadReceipts: settings.sendReadReceipts } }, opts),
        );
        return { sendReadReceipts: res.settings?.sendReadReceipts ?? true };
      },
      readMarker(o) {
        return createReadMarker((c, m) => client.markReadUpTo(c, m), o);
      },
      deliveredBatcher(o) {
        return createDeliveredBatcher((ids) => client.markDelivered(ids), o);
      },
    };
    return client;
  };
}

/** What a unary call gets from the Connect client. */
interface CallOpts {
  headers: Headers;
  signal: AbortSignal | undefined;
  timeoutMs: number;
}

/**
 * Runs unary calls with fresh credentials and the deadline, and turns every
 * failure into a `ReceiptsError`.
 *
 * A call whose connection broke before the server answered is sent once more
 * at once: every method of both services is idempotent, and the usual cause is
 * a kept-alive HTTP/1.1 connection the server had already closed. @internal
 */
export function unaryCaller(connection: Connection) {
  return async function call<T>(
    options: RequestOptions | undefined,
    run: (opts: CallOpts) => Promise<T>,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await run({
          headers: await connection.headers(),
          signal: options?.signal,
          timeoutMs: options?.timeoutMs ?? connection.timeoutMs,
        });
      } catch (e) {
        const error = ReceiptsError.from(e);
        if (attempt === 1 && isConnectionFailure(error) && options?.signal?.aborted !== true) {
          continue;
        }
        throw error;
      }
    }
  };
}
