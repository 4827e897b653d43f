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
 * Node's codes for a server certificate it does not accept: OpenSSL's
 * verification results as Node names them, and a host name the certificate
 * does not cover.
 */
const CERT_VERIFY_CODES: ReadonlySet<string> = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/**
 * OpenSSL's codes (as Node names them) for a TLS alert about a certificate:
 * mostly the server refusing ours under mutual TLS (none sent, not from a CA
 * it trusts, expired).
 */
const CERT_ALERT_CODE = new RegExp(
  "^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT_(BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|CERTIFICATE_REVOKED" +
    "|CERTIFICATE_EXPIRED|CERTIFICATE_UNKNOWN|UNKNOWN_CA|CERTIFICATE_REQUIRED)$",
);

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
   * Set when the call failed in the TLS handshake over a certificate (Node
   * only: a browser's `fetch` does not say why a connection failed). The
   * code stays what the transport reported (`Code.Internal`, as no status
   * arrived), and the error is not `retryable`.
   */
  readonly tlsFailure: TlsFailure | undefined;

  constructor(
    code: Code,
    rawMessage: string,
    options: { cause?: unknown; metadata?: HeadersInit } = {},
  ) {
    super(`[${codeName(code)}] ${rawMessage}`, { cause: options.cause });
    this.code = code;
    this.rawMessage = rawMessage;
    this.metadata = new Headers(options.metadata);
    this.field = FIELD_CODES.has(code) ? fieldOf(rawMessage) : undefined;
    this.tlsFailure = tlsFailureOf(options.cause);
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
    return decodeError(reason, undefined);
  }
}

/**
 * `ReceiptsError.from`, naming `baseUrl` (where known) in the message of a
 * TLS failure. @internal
 */
export function decodeError(reason: unknown, baseUrl: string | undefined): ReceiptsError {
  if (reason instanceof ReceiptsError) {
    return reason;
  }
  const e = ConnectError.from(reason);
  const tls = tlsFailureOf(reason);
  const rawMessage =
    tls === undefined
      ? e.rawMessage
      : `TLS handshake${baseUrl === undefined ? "" : ` with ${baseUrl}`} failed: ${tls.reason} (${tls.code}; ` +
        "the certificate or the trust settings are wrong, retrying cannot help)";
  return new ReceiptsError(e.code, rawMessage, { cause: reason, metadata: e.metadata });
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

/**
 * The certificate failure in an error's `cause` chain (connect-node keeps
 * Node's TLS error as the `ConnectError`'s cause), if there is one.
 */
function tlsFailureOf(error: unknown): TlsFailure | undefined {
  // Bounded: a cause chain may be long or even a cycle.
  for (let e = error, depth = 0; typeof e === "object" && e !== null && depth < 8; depth++) {
    const { code, message, reason } = e as { code?: unknown; message?: unknown; reason?: unknown };
    if (typeof code === "string") {
      if (CERT_VERIFY_CODES.has(code)) {
        return { code, reason: typeof message === "string" ? message : code };
      }
      if (CERT_ALERT_CODE.test(code)) {
        // OpenSSL's message is a whole error line; `reason` is its gist.
        return { code, reason: typeof reason === "string" ? reason : code };
      }
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
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
