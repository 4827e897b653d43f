// A helper for tests of calls that must fail with a ReceiptsError.
import { expect } from "vitest";
import { ReceiptsError } from "../src/node.js";

/** Runs `call` and returns its ReceiptsError (failing if it resolves or rejects otherwise). */
export async function rejection(call: Promise<unknown>): Promise<ReceiptsError> {
  const e: unknown = await call.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ReceiptsError);
  return e as ReceiptsError;
}
