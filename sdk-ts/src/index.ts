// @receipts/sdk, browser entry (and any runtime with streaming `fetch`): the
// default transport is gRPC-web over fetch (@connectrpc/connect-web).
// src/node.ts is the same API with Node's own HTTP stack; keep both export
// lists identical (a test checks it).
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { backendClientFactory } from "./backend.js";
import { receiptsClientFactory } from "./client.js";
import type { TransportFactory } from "./connection.js";

// A browser decides which servers to trust and which client certificate to
// present, so `tls` (the Node entry's TLS settings) is refused.
const webTransport: TransportFactory = (baseUrl, tls, caller) => {
  if (tls !== undefined) {
    throw new TypeError(
      `${caller}: \`tls\` is for Node only; in a browser, the browser decides which servers to trust and which client certificate to present`,
    );
  }
  return createGrpcWebTransport({ baseUrl });
};

/**
 * Creates a client acting as one user.
 *
 * ```ts
 * const client = createReceiptsClient({ baseUrl: "https://receipts.example.com", token: getJwt });
 * await client.markReadUpTo(conversationId, messageId);
 * ```
 */
export const createReceiptsClient = receiptsClientFactory(webTransport);

/**
 * Creates a client of the messaging backend (a token with the `service` role).
 *
 * ```ts
 * const backend = createBackendClient({ baseUrl, token: serviceJwt });
 * await backend.registerMessages([{ messageId, conversationId, seq: 1, senderId }]);
 * ```
 */
export const createBackendClient = backendClientFactory(webTransport);

export { ReceiptsError } from "./errors.js";
export { applyRange } from "./types.js";
export { createReceiptState } from "./state.js";
export type { ReceiptState } from "./state.js";
export { Code } from "@connectrpc/connect";
export { ReceiptService } from "./gen/receipts/v1/receipts_pb.js";
export { ReceiptBackendService } from "./gen/receipts/v1/backend_pb.js";
export type { Transport } from "@connectrpc/connect";
export type { BackendClient, BackendClientOptions, MembershipChange, MessageRegistration } from "./backend.js";
export type { ReceiptsClient, ReceiptsClientOptions, RequestOptions } from "./client.js";
export type { ConnectionOptions, TlsOptions, TraceContext } from "./connection.js";
export type { DeliveredBatcher, DeliveredBatcherOptions } from "./delivered-batcher.js";
export type { ReadMark, ReadMarker, ReadMarkerOptions } from "./read-marker.js";
export type { ReceiptSubscription, ReconnectOptions, SubscribeOptions } from "./subscription.js";
export type {
  ConversationOutcome,
  ConversationReadResult,
  ConversationUnread,
  DeliveryOutcome,
  DeliveryResult,
  LiveEvent,
  MessageReceipts,
  PrivacySettings,
  ReadUpToResult,
  ReceiptEvent,
  ReceiptRange,
  ReceiptsEvent,
  ReceiptsSnapshot,
  RecipientReceipt,
  RecipientState,
  ReconnectingEvent,
  ResetEvent,
  ResetReason,
  Tick,
  Watermark,
  WatermarkEvent,
} from "./types.js";
