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
  }

  /**
   * True if retrying with the same input may succeed: the server was
   * unavailable or overloaded, or the connection broke before the server
   * answered. Subscriptions resume on these; writes are idempotent, so
   * retrying them is safe too.
   */
  get retryable(): boolean {
    return RESUMABLE_CODES.has(this.code) || isConnectionFailure(this);
  }

  /** Converts anything thrown by a call into a `ReceiptsError` (the one place errors are decoded). */
  static from(reason: unknown): ReceiptsError {
    if (reason instanceof ReceiptsError) {
      return reason;
    }
    const e = ConnectError.from(reason);
    return new ReceiptsError(e.code, e.rawMessage, {
      cause: reason,
      metadata: e.metadata,
    });
  }
}

/**
 * True if the call failed before the server answered with a status: the
 * connection was refused, reset or closed under the request (for example a
 * kept-alive connection the server had closed). @internal
 */
export function isConnectionFailure(e: ReceiptsError): boolean {
  return TRANSPORT_CODES.has(e.code) && !e.metadata.has("grpc-status");
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
