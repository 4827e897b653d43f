import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Codes whose server messages have the form `<field>: <reason>`, naming the
 * request field at fault (docs/semantics.md, "Errors").
 */
const FIELD_CODES: ReadonlySet<Code> = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.PermissionDenied,
  Code.AlreadyExists,
  Code.FailedPrecondition,
]);

/** A request field path such as `message_ids[2]` or `members[0].from_seq`. */
const FIELD_PATH = /^[a-z_][a-z0-9_]*(\[\d+\])?(\.[a-z_][a-z0-9_]*(\[\d+\])?)*$/;

/** Statuses the server ends a stream with when the client should resume. */
const RESUMABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.ResourceExhausted,
]);

/** Statuses that, without a `grpc-status` from the server, mean the connection broke. */
const TRANSPORT_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.Unknown,
  Code.Internal,
  Code.Aborted,
]);

/**
 * A TLS handshake that failed over a certificate: the server's, which the
 * client does not trust, or the client's, which the server refused.
 */
export interface TlsFailure {
  /** Node's error code, e.g. `UNABLE_TO_VERIFY_LEAF_SIGNATURE` or `ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`. */
  code: string;
  /** What failed, in OpenSSL's or Node's words (`certificate has expired`, `tlsv13 alert certificate required`). */
  reason: string;
}

/**
 * The one error type of the SDK: every failed call rejects with it.
 *
 * The message starts with the gRPC code (`[invalid_argument] message_ids[0]:
 * "x" is not a valid UUID`); the underlying error (usually a `ConnectError`)
 * is kept in `cause`.
 */
export class ReceiptsError extends Error {
  override readonly name = "ReceiptsError";
  /** The gRPC status code (`Code.InvalidArgument` is 3, as on the wire). */
  readonly code: Code;
  /** The server's message without the code prefix. */
  readonly rawMessage: string;
  /**
   * The request field the server named (`message_ids[0]`, `members[0].from_seq`),
   * for INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ALREADY_EXISTS and
   * FAILED_PRECONDITION; `undefined` when the message names none.
   */
  readonly field: string | undefined;
  /** Response headers and trailers of the failed call (empty if none arrived). */
  readonly metadata: Headers;
  /**
   * Set when a call of the Node entry failed in the TLS handshake over a
   * certificate (a browser's `fetch` does not say why a connection failed,
   * so the browser entry never sets it). The code stays what the transport
   * reported (`Code.Internal`: no status arrived); the error is not `retryable`.
   */
  readonly tlsFailure: TlsFailure | undefined;

  constructor(
    code: Code,
    rawMessage: string,
    options: { cause?: unknown; metadata?: HeadersInit; tlsFailure?: TlsFailure } = {},
  ) {
    super(`[${codeName(code)}] ${rawMessage}`, { cause: options.cause });
    this.code = code;
    this.rawMessage = rawMessage;
    this.metadata = new Headers(options.metadata);
    this.field = FIELD_CODES.has(code) ? fieldOf(rawMessage) : undefined;
    this.tlsFailure = options.tlsFailure;
  }

  /**
   * True if retrying with the same input may succeed: the server was
   * unavailable or overloaded, or the connection broke before the server
   * answered. Subscriptions resume on these; writes are idempotent, so
   * retrying them is safe too. Never for a `tlsFailure`: the certificate
   * or the trust settings must change first.
   */
  get retryable(): boolean {
    return this.tlsFailure === undefined && (RESUMABLE_CODES.has(this.code) || isConnectionFailure(this));
  }

  /** Converts anything thrown by a call into a `ReceiptsError` (the one place errors are decoded). */
  static from(reason: unknown): ReceiptsError {
    return decodeError(reason, {});
  }
}

/**
 * Finds a certificate failure in what a call threw. Only the Node entry has
 * one (src/tls-failure.ts), so browser bundles do not carry Node's codes. @internal
 */
export type TlsFailureOf = (reason: unknown) => TlsFailure | undefined;

/**
 * `ReceiptsError.from` for a connection's call: with the connection's
 * `tlsFailureOf`, a certificate failure becomes `tlsFailure`, with a message
 * that names `baseUrl` (where known). @internal
 */
export function decodeError(
  reason: unknown,
  connection: { baseUrl?: string | undefined; tlsFailureOf?: TlsFailureOf | undefined },
): ReceiptsError {
  if (reason instanceof ReceiptsError) {
    return reason;
  }
  const e = ConnectError.from(reason);
  const tls = connection.tlsFailureOf?.(reason);
  const { baseUrl } = connection;
  const rawMessage =
    tls === undefined
      ? e.rawMessage
      : `TLS handshake${baseUrl === undefined ? "" : ` with ${baseUrl}`} failed: ${tls.reason} (${tls.code}; ` +
        "the certificate or the trust settings are wrong, retrying cannot help)";
  return new ReceiptsError(e.code, rawMessage, { cause: reason, metadata: e.metadata, tlsFailure: tls });
}

/**
 * True if the call failed before the server answered with a status: the
 * connection was refused, reset or closed under the request (for example a
 * kept-alive connection the server had closed). Not a TLS failure: that
 * connection will fail the same way again. @internal
 */
export function isConnectionFailure(e: ReceiptsError): boolean {
  return TRANSPORT_CODES.has(e.code) && !e.metadata.has("grpc-status") && e.tlsFailure === undefined;
}

/** The text before the first colon, if it is a field path. */
function fieldOf(message: string): string | undefined {
  const colon = message.indexOf(":");
  if (colon <= 0) {
    return undefined;
  }
  const candidate = message.slice(0, colon).trim();
  return FIELD_PATH.test(candidate) ? candidate : undefined;
}

/** `Code.InvalidArgument` → `invalid_argument`, as Connect and gRPC spell it. */
function codeName(code: Code): string {
  const name = Code[code] as string | undefined;
  if (name === undefined) {
    return `code_${String(code)}`;
  }
  return name.replace(/[A-Z]/g, (c, i: number) => (i === 0 ? "" : "_") + c.toLowerCase());
}
