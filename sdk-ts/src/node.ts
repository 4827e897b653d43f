// @receipts/sdk, Node entry (package.json `exports` picks it under the `node`
// condition): the default transport is @connectrpc/connect-node's gRPC-web
// over HTTP/2 (h2c for http:// URLs; receiptd serves HTTP/1.1 and HTTP/2 on
// one port). Not HTTP/1.1: connect-node sends a request's headers before its
// body, and receiptd answers auth failures before reading the body and then
// closes the connection, so the body write can fail with EPIPE and hide the
// real status (see sdk-ts/README.md). Calls also tell TLS certificate
// failures from broken connections (src/tls-failure.ts): Node's errors say
// which they are. src/index.ts is the same API for
// browsers; everything but the factories comes from src/api.ts (a test checks
// that the export lists are identical).
import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { backendClient, type BackendClient, type BackendClientOptions } from "./backend.js";
import type { ReceiptsConnection } from "./calls.js";
import { receiptsClient, type ReceiptsClient, type ReceiptsClientOptions } from "./client.js";
import { openConnection, type ConnectionOptions, type TlsOptions } from "./connection.js";
import { tlsFailureOf } from "./tls-failure.js";

/** connect-node's options of `http2.connect()`. */
type Http2Options = Extract<Parameters<typeof createGrpcWebTransport>[0], { httpVersion: "2" }>["nodeOptions"];

// `tls` becomes the options of connect-node's `http2.connect()`: the secure
// context's ca, cert and key, and the servername. They pass as they are: Node
// takes PEM text or any Uint8Array where its types say Buffer (and the build
// keeps Node's types out of src/, so there is no Buffer to convert to).
function nodeTransport(baseUrl: string, tls: TlsOptions | undefined, caller: string): Transport {
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
  return receiptsClient(openConnection(options, "user", nodeTransport, "createReceiptsClient", tlsFailureOf));
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
  return openConnection(options, "user", nodeTransport, "createReceiptsConnection", tlsFailureOf);
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
  return backendClient(openConnection(options, "service", nodeTransport, "createBackendClient", tlsFailureOf));
}

export * from "./api.js";
