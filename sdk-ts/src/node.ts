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
import type { TransportFactory } from "./connection.js";

/** connect-node's options of `http2.connect()`. */
type Http2Options = Extract<Parameters<typeof createGrpcWebTransport>[0], { httpVersion: "2" }>["nodeOptions"];

// `tls` becomes the options of connect-node's `http2.connect()`: the secure
// context's ca, cert and key, and the servername. They pass as they are: Node
// takes PEM text or any Uint8Array where its types say Buffer (and the build
// keeps Node's types out of src/, so there is no Buffer to convert to).
const nodeTransport: TransportFactory = (baseUrl, tls, caller) => {
  if (tls === undefined) {
    return createGrpcWebTransport({ baseUrl, httpVersion: "2" });
  }
  if (!/^https:/i.test(baseUrl)) {
    throw new TypeError(`${caller}: \`tls\` needs an https:// \`baseUrl\`, got ${JSON.stringify(baseUrl)}`);
  }
  const { ca, cert, key, servername } = tls;
  const nodeOptions = {
    ...(ca !== undefined && { ca }),
    ...(cert !== undefined && { cert }),
    ...(key !== undefined && { key }),
    ...(servername !== undefined && { servername }),
  } as Http2Options;
  return createGrpcWebTransport({ baseUrl, httpVersion: "2", nodeOptions });
};

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
