// What both entries export besides their own factories (src/index.ts for
// browsers, src/node.ts for Node, which differ only in the default
// transport). Names are listed explicitly; nothing here runs at import.
export { ReceiptsError } from "./errors.js";
export type { TlsFailure } from "./errors.js";
export { applyRange } from "./types.js";
export { createReceiptState } from "./state.js";
export {
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
export type { ReceiptsConnection } from "./calls.js";
export type { ReceiptState } from "./state.js";
export { Code } from "@connectrpc/connect";
export { ReceiptService } from "./gen/receipts/v1/receipts_pb.js";
export { ReceiptBackendService } from "./gen/receipts/v1/backend_pb.js";
export type { Transport } from "@connectrpc/connect";
export type { BackendClient, BackendClientOptions, MembershipChange, MessageRegistration } from "./backend.js";
export type { ReceiptsClient, ReceiptsClientOptions } from "./client.js";
export type { RequestOptions } from "./unary.js";
export type { ConnectionOptions, TlsOptions, TraceContext } from "./connection.js";
export type { DeliveredBatcher, DeliveredBatcherOptions } from "./delivered-batcher.js";
export type { ReadMark, ReadMarkOptions, ReadMarker, ReadMarkerOptions } from "./read-marker.js";
export type { ReceiptSubscription, ReconnectOptions, SubscribeOptions } from "./subscription.js";
export type {
  ConversationOutcome,
  ConversationReadResult,
  ConversationUnread,
  DeliveryOutcome,
  DeliveryResult,
  LiveEvent,
  MessageReceipts,
  MessageRef,
  PrivacySettings,
  ReadUpToResult,
  ReceiptEvent,
  ReceiptRange,
  ReceiptsEvent,
  ReceiptsSnapshot,
  RecipientFilter,
  RecipientPage,
  RecipientReceipt,
  RecipientState,
  ReconnectingEvent,
  ResetEvent,
  ResetReason,
  ThreadRef,
  ThreadUnread,
  Tick,
  Watermark,
  WatermarkEvent,
} from "./types.js";
