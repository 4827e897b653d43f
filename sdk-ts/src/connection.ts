// Where calls go and who makes them: the transport plus the credentials (and
// the caller's W3C trace context) sent with every call. Both travel as
// per-call headers (not transport interceptors) so that they also apply to a
// transport the caller supplies.
import { Code, type Transport } from "@connectrpc/connect";
import { ReceiptsError, type TlsFailureOf } from "./errors.js";

/**
 * A W3C Trace Context (https://www.w3.org/TR/trace-context/): the values of
 * the `traceparent` and `tracestate` headers.
 */
export interface TraceContext {
  /**
   * `version-traceid-spanid-flags` in lowercase hex, e.g.
   * `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. The version
   * must not be `ff`, and neither id may be all zeros.
   */
  traceparent: string;
  /** Vendor entries, e.g. `congo=t61rcWkgMzE`; omitted or `""` sends none. */
  tracestate?: string | undefined;
}

/**
 * TLS settings of the default Node transport (the `tls` option): PEM text, or
 * its bytes (a `Buffer` or any `Uint8Array`), as Node's `tls.connect` takes them.
 */
export interface TlsOptions {
  /**
   * The CA certificates to trust for the server's certificate, e.g. a private
   * CA's. They replace Node's default trust store for this client; without
   * `ca` the default store applies (plus `NODE_EXTRA_CA_CERTS`).
   */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /**
   * The client certificate chain to present, for a server that requires
   * mutual TLS (`receiptd --tls-client-ca`). Needs `key`.
   */
  cert?: string | Uint8Array;
  /** The private key of `cert`. */
  key?: string | Uint8Array;
  /**
   * The name to send as SNI and to check the server's certificate against,
   * when it differs from the host of `baseUrl` (e.g. an IP address).
   */
  servername?: string;
}

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
   * in browsers, `@connectrpc/connect-node` over HTTP/2 in Node).
   */
  transport?: Transport;
  /**
   * Node only: TLS settings of the default transport for an `https://`
   * `baseUrl` — a private CA to trust, a client certificate for mutual TLS,
   * the name to check. Without it, Node's default trust store applies (plus
   * `NODE_EXTRA_CA_CERTS`). Browsers decide trust and client certificates
   * themselves, so the browser entry throws a `TypeError` when it is given;
   * so do both entries with a `transport` (configure TLS on that) or an
   * `http://` `baseUrl`.
   */
  tls?: TlsOptions;
  /** Deadline of each unary call, in milliseconds (default 30 000). Streams have none. */
  timeoutMs?: number;
  /**
   * The caller's current trace, sent as the W3C `traceparent` (and
   * `tracestate`) headers so that the server's spans join it. Called before
   * every call, every retry and every (re)connect of a subscription, so each
   * carries the span current at that moment; returning `undefined` sends
   * neither header. Calls that `readMarker()` and `deliveredBatcher()` make
   * run from timers, so they carry whatever context is current there.
   *
   * An invalid value is not sent: the call rejects (a subscription throws)
   * with a `ReceiptsError` of code `InvalidArgument` whose `field` is
   * `traceparent` or `tracestate`, before anything goes on the wire — as the
   * SDK reports other bad input of a call. It is not retryable. Valid means
   * lowercase `^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`, a version
   * other than `ff`, and a trace id and span id that are not all zeros; a
   * `tracestate` must be printable ASCII.
   *
   * With OpenTelemetry (whose SDKs register the W3C propagator by default),
   * without the SDK depending on it:
   *
   * ```ts
   * import { context, propagation } from "@opentelemetry/api";
   *
   * const client = createReceiptsClient({
   *   baseUrl,
   *   token: getJwt,
   *   traceContext: () => {
   *     const carrier: { traceparent?: string; tracestate?: string } = {};
   *     propagation.inject(context.active(), carrier);
   *     const { traceparent, tracestate } = carrier;
   *     return traceparent === undefined ? undefined : { traceparent, tracestate };
   *   },
   * });
   * ```
   */
  traceContext?: () => TraceContext | undefined | Promise<TraceContext | undefined>;
}

/**
 * Makes the default transport for a base URL and `tls` option, or throws a
 * `TypeError` starting with `caller` for a `tls` it cannot apply. @internal
 */
export type TransportFactory = (baseUrl: string, tls: TlsOptions | undefined, caller: string) => Transport;

/** @internal */
export interface Connection {
  readonly transport: Transport;
  /** The default transport's base URL, named in TLS errors; `undefined` with the caller's transport. */
  readonly baseUrl: string | undefined;
  /** How the entry finds a TLS certificate failure (Node's only), for `decodeError`. */
  readonly tlsFailureOf: TlsFailureOf | undefined;
  /** The headers of one call, with fresh credentials and trace context. */
  headers(): Promise<Headers>;
  readonly timeoutMs: number;
}

/** @internal */
export function openConnection(
  options: ConnectionOptions,
  role: "user" | "service",
  defaultTransport: TransportFactory,
  caller: string,
  tlsFailureOf?: TlsFailureOf,
): Connection {
  const { token, devUserId, traceContext, tls } = options;
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
    transport = defaultTransport(options.baseUrl, tls, caller);
  } else if (tls !== undefined) {
    throw new TypeError(`${caller}: \`tls\` configures the default transport; with a \`transport\`, set TLS on it`);
  }
  return {
    transport,
    baseUrl: options.transport === undefined ? options.baseUrl : undefined,
    tlsFailureOf,
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
      if (traceContext !== undefined) {
        const trace = await traceContext();
        if (trace !== undefined) {
          h.set("traceparent", checkTraceparent(trace.traceparent));
          const state = checkTracestate(trace.tracestate);
          if (state !== undefined) {
            h.set("tracestate", state);
          }
        }
      }
      return h;
    },
  };
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;

/** Printable ASCII and spaces, as the W3C grammar allows: safe as a header value everywhere. */
const TRACESTATE = /^[\x20-\x7e]*$/;

/** Bad trace context of a call, reported like other bad input of a call. */
function invalid(field: string, reason: string): ReceiptsError {
  return new ReceiptsError(Code.InvalidArgument, `${field}: ${reason}`);
}

/** A quoted value for an error message, cut short if long. */
function quote(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
}

/** The `traceparent` to send, or throws `ReceiptsError` (InvalidArgument) saying why not. */
function checkTraceparent(value: unknown): string {
  if (typeof value !== "string") {
    throw invalid("traceparent", `must be a string, got ${typeof value}`);
  }
  const m = TRACEPARENT.exec(value);
  if (m === null) {
    throw invalid(
      "traceparent",
      `${quote(value)} is not a W3C traceparent (version-traceid-spanid-flags: 2, 32, 16 and 2 lowercase hex digits)`,
    );
  }
  if (m[1] === "ff") {
    throw invalid("traceparent", `${quote(value)} has the invalid version ff`);
  }
  if (/^0+$/.test(m[2]!)) {
    throw invalid("traceparent", `${quote(value)} has an all-zero trace id`);
  }
  if (/^0+$/.test(m[3]!)) {
    throw invalid("traceparent", `${quote(value)} has an all-zero span id`);
  }
  return value;
}

/** The `tracestate` to send (`undefined` for none), or throws `ReceiptsError` (InvalidArgument). */
function checkTracestate(value: unknown): string | undefined {
  if (value === undefined || value === "") {
    return undefined;
  }
  if (typeof value !== "string") {
    throw invalid("tracestate", `must be a string, got ${typeof value}`);
  }
  if (!TRACESTATE.test(value)) {
    throw invalid("tracestate", `${quote(value)} is not a W3C tracestate (printable ASCII only)`);
  }
  return value;
}
