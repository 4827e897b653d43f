// @receipts/sdk, Node entry (package.json `exports` picks it under the `node`
// condition): the default transport is @connectrpc/connect-node's gRPC-web
// over HTTP/2 (h2c for http:// URLs; receiptd serves HTTP/1.1 and HTTP/2 on
// one port). Not HTTP/1.1: connect-node sends a request's headers before its
// body, and receiptd answers auth failures before reading the body and then
// closes the connection, so the body write can fail with EPIPE and hide the
// real status (see sdk-ts/README.md). src/index.ts is the same API for
// browsers; keep both export lists identical (a test checks it).
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { backendClientFactory } from "./backend.js";
import { receiptsClientFactory } from "./client.js";

const nodeTransport = (baseUrl: string) => createGrpcWebTransport({ baseUrl, httpVersion: "2" });

/**
 * Creates a client acting as one user.
 *
 * ```ts
 * const client = createReceiptsClient({ baseUrl: "https://receipts.example.com", token: getJwt });
 * await client.markReadUpTo(conversationId, messageId);
 * ```
 */
export const createReceiptsClient = receiptsClientFactory(nodeTransport);

/**
 * Creates a client of the messaging backend (a token with the `service` role).
 *
 * ```ts
 * const backend = createBackendClient({ baseUrl, token: serviceJwt });
 * await backend.registerMessages([{ messageId, conversationId, seq: 1, senderId }]);
 * ```
 */
export const createBackendClient = backendClientFactory(nodeTransport);

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
export type { ConnectionOptions, TraceContext } from "./connection.js";
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
