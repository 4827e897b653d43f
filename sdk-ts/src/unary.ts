// How every unary call of both services runs: fresh credentials and trace
// context, the deadline, one immediate retry after a broken connection (not
// after a TLS certificate failure), and every failure as a `ReceiptsError`.
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { Connection } from "./connection.js";
import { decodeError, isConnectionFailure } from "./errors.js";

/** Per-call options of unary methods. */
export interface RequestOptions {
  /** Cancels the call (it rejects with CANCELED). */
  signal?: AbortSignal;
  /** Overrides the client's deadline for this call, in ms. */
  timeoutMs?: number;
}

/**
 * Calls `method` with `input` over the connection's transport and returns
 * the response message.
 *
 * A call whose connection broke before the server answered is sent once more
 * at once: every method of both services is idempotent, and the usual cause is
 * a kept-alive HTTP/1.1 connection the server had already closed. @internal
 */
export async function unary<I extends DescMessage, O extends DescMessage>(
  connection: Connection,
  method: DescMethodUnary<I, O>,
  input: MessageInitShape<I>,
  options: RequestOptions | undefined,
): Promise<MessageShape<O>> {
  for (let attempt = 1; ; attempt++) {
    try {
      const res = await connection.transport.unary(
        method,
        options?.signal,
        options?.timeoutMs ?? connection.timeoutMs,
        await connection.headers(),
        input,
      );
      return res.message;
    } catch (e) {
      const error = decodeError(e, connection);
      if (attempt === 1 && isConnectionFailure(error) && options?.signal?.aborted !== true) {
        continue;
      }
      throw error;
    }
  }
}
