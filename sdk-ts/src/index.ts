// @receipts/sdk, browser entry (and any runtime with streaming `fetch`): the
// default transport is gRPC-web over fetch (@connectrpc/connect-web).
// src/node.ts is the same API with Node's own HTTP stack: both define the
// factories with their transport and export everything else from src/api.ts
// (a test checks that the export lists are identical).
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { backendClient, type BackendClient, type BackendClientOptions } from "./backend.js";
import type { ReceiptsConnection } from "./calls.js";
import { receiptsClient, type ReceiptsClient, type ReceiptsClientOptions } from "./client.js";
import { openConnection, type ConnectionOptions, type TlsOptions } from "./connection.js";

// A browser decides which servers to trust and which client certificate to
// present, so `tls` (the Node entry's TLS settings) is refused.
function webTransport(baseUrl: string, tls: TlsOptions | undefined, caller: string): Transport {
  if (tls !== undefined) {
    throw new TypeError(
      `${caller}: \`tls\` is for Node only; in a browser, the browser decides which servers to trust and which client certificate to present`,
    );
  }
  return createGrpcWebTransport({ baseUrl });
}

/**
 * Creates a client acting as one user.
 *
 * ```ts
 * const client = createReceiptsClient({ baseUrl: "https://receipts.example.com", token: getJwt });
 * await client.markReadUpTo(conversationId, messageId);
 * ```
 */
export function createReceiptsClient(options: ReceiptsClientOptions): ReceiptsClient {
  return receiptsClient(openConnection(options, "user", webTransport, "createReceiptsClient"));
}

/**
 * The connection of one user, for the standalone functions (`markDelivered`,
 * `markReadUpTo`, …: every method of `ReceiptsClient`, taking the connection
 * first). A page that imports only the functions it calls ships only those.
 *
 * ```ts
 * const connection = createReceiptsConnection({ baseUrl, token: getJwt });
 * await markDelivered(connection, [{ conversationId, messageId }]);
 * ```
 */
export function createReceiptsConnection(options: ConnectionOptions): ReceiptsConnection {
  return openConnection(options, "user", webTransport, "createReceiptsConnection");
}

/**
 * Creates a client of the messaging backend (a token with the `service` role).
 *
 * ```ts
 * const backend = createBackendClient({ baseUrl, token: serviceJwt });
 * await backend.registerMessages([{ messageId, conversationId, seq: 1, senderId }]);
 * ```
 */
export function createBackendClient(options: BackendClientOptions): BackendClient {
  return backendClient(openConnection(options, "service", webTransport, "createBackendClient"));
}

export * from "./api.js";
