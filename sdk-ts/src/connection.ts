// Where calls go and who makes them: the transport plus the credentials sent
// with every call. Credentials travel as per-call headers (not transport
// interceptors) so that they also apply to a transport the caller supplies.
import type { Transport } from "@connectrpc/connect";

/** Options shared by `createReceiptsClient` and `createBackendClient`. */
export interface ConnectionOptions {
  /**
   * The server's base URL, e.g. `https://receipts.example.com` or
   * `http://127.0.0.1:50051` (gRPC-web is served on the gRPC port). Required
   * unless `transport` is given.
   */
  baseUrl?: string;
  /**
   * The bearer token (a JWT), or a function returning one. A function is
   * called before every call and every reconnect, so it can refresh tokens.
   * Sent as `authorization: Bearer <token>`.
   */
  token?: string | (() => string | Promise<string>);
  /**
   * Local development only: act as this user id through the `x-receipts-user`
   * header, which a `receiptd --dev-mode` on loopback trusts without a token.
   * Exactly one of `token` and `devUserId` must be given.
   */
  devUserId?: string;
  /**
   * A Connect transport to use instead of the default (gRPC-web: over `fetch`
   * in browsers, `@connectrpc/connect-node` over HTTP/1.1 in Node).
   */
  transport?: Transport;
  /** Deadline of each unary call, in milliseconds (default 30 000). Streams have none. */
  timeoutMs?: number;
}

/** Makes the default transport for a base URL. @internal */
export type TransportFactory = (baseUrl: string) => Transport;

/** @internal */
export interface Connection {
  readonly transport: Transport;
  /** The headers of one call, with fresh credentials. */
  headers(): Promise<Headers>;
  readonly timeoutMs: number;
}

/** @internal */
export function openConnection(
  options: ConnectionOptions,
  role: "user" | "service",
  defaultTransport: TransportFactory,
  caller: string,
): Connection {
  const { token, devUserId } = options;
  if ((token === undefined) === (devUserId === undefined)) {
    throw new TypeError(
      `${caller}: pass exactly one of \`token\` and \`devUserId\` (the latter only against a receiptd in --dev-mode)`,
    );
  }
  let transport = options.transport;
  if (transport === undefined) {
    if (options.baseUrl === undefined || options.baseUrl === "") {
      throw new TypeError(`${caller}: pass \`baseUrl\` (or a \`transport\`)`);
    }
    transport = defaultTransport(options.baseUrl);
  }
  return {
    transport,
    timeoutMs: options.timeoutMs ?? 30_000,
    async headers() {
      const h = new Headers();
      if (token !== undefined) {
        const t = typeof token === "function" ? await token() : token;
        h.set("authorization", `Bearer ${t}`);
      } else if (devUserId !== undefined) {
        h.set("x-receipts-user", devUserId);
        h.set("x-receipts-role", role);
      }
      return h;
    },
  };
}
