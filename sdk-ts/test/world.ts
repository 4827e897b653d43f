// Test fixtures: users with their own clients, and conversations with
// registered messages, created through the SDK's backend client.
import { inject } from "vitest";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  createBackendClient,
  createReceiptsClient,
  type ReceiptEvent,
  type ReceiptState,
  type ReceiptSubscription,
  type ReceiptsClient,
} from "../src/node.js";
import { mintToken } from "./receiptd.js";

export const uuid = (): string => crypto.randomUUID();

export interface Message {
  id: string;
  seq: number;
}

export interface Chat {
  conversationId: string;
  /** Member ids; `users[0]` sends unless told otherwise. */
  users: string[];
  /** One client per member, acting as that member (JWT). */
  clients: ReceiptsClient[];
  /**
   * Registers `count` messages from `users[from]`, with the next seqs, in the
   * main timeline or in the thread of `threadRootMessageId`.
   */
  send(count?: number, from?: number, threadRootMessageId?: string): Promise<Message[]>;
}

export function baseUrl(): string {
  return inject("baseUrl");
}

export function backend(url = baseUrl()) {
  return createBackendClient({ baseUrl: url, token: mintToken(uuid(), "service") });
}

export function userClient(userId: string, url = baseUrl()): ReceiptsClient {
  return createReceiptsClient({ baseUrl: url, token: mintToken(userId, "user") });
}

/**
 * A conversation of `members` new users (2 = direct, more = group), or of
 * these users (another conversation of the same people).
 */
export async function chat(members: number | string[], url = baseUrl()): Promise<Chat> {
  const users = typeof members === "number" ? Array.from({ length: members }, uuid) : [...members];
  const conversationId = uuid();
  const b = backend(url);
  await b.createConversation(conversationId, users);
  let seq = 0;
  return {
    conversationId,
    users,
    clients: users.map((u) => userClient(u, url)),
    async send(count = 1, from = 0, threadRootMessageId?: string) {
      const messages = Array.from({ length: count }, () => ({ id: uuid(), seq: ++seq }));
      await b.registerMessages(
        messages.map((m) => ({
          messageId: m.id,
          conversationId,
          seq: m.seq,
          senderId: users[from]!,
          threadRootMessageId,
        })),
      );
      return messages;
    },
  };
}

/**
 * A transport that records every call (to count them) and can make the next
 * calls fail as an unavailable server would, before they reach it.
 */
export function countingTransport(url = baseUrl()) {
  const calls: { method: string; message: unknown; at: number }[] = [];
  let failing = 0;
  const record: Interceptor = (next) => async (req) => {
    calls.push({ method: req.method.name, message: req.message, at: Date.now() });
    if (failing > 0) {
      failing -= 1;
      throw new ConnectError("injected: server unavailable", Code.Unavailable);
    }
    return next(req);
  };
  return {
    transport: createGrpcWebTransport({ baseUrl: url, httpVersion: "2", interceptors: [record] }),
    calls,
    /** Makes the next `n` calls fail with UNAVAILABLE. */
    failNext(n: number) {
      failing = n;
    },
  };
}

/**
 * Reads a subscription in the background and lets a test wait for the event
 * it expects (failing after a timeout, with what it saw instead).
 */
export class EventLog {
  readonly events: ReceiptEvent[] = [];
  private error: unknown;
  private wake: (() => void) | undefined;
  readonly done: Promise<void>;

  constructor(readonly subscription: ReceiptSubscription) {
    this.done = (async () => {
      try {
        for await (const e of subscription) {
          this.events.push(e);
          this.wake?.();
        }
      } catch (e) {
        this.error = e;
      } finally {
        this.wake?.();
      }
    })();
  }

  /** Resolves with the first event at or after index `from` matching `match`. */
  async waitFor<E extends ReceiptEvent>(
    match: (e: ReceiptEvent) => e is E,
    { from = 0, timeoutMs = 5000 } = {},
  ): Promise<E> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.slice(from).find(match);
      if (found !== undefined) {
        return found;
      }
      if (this.error !== undefined) {
        throw this.error;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`event not seen within ${timeoutMs} ms; saw: ${JSON.stringify(this.events.map(summary))}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  close(): Promise<void> {
    this.subscription.close();
    return this.done;
  }
}

export const is =
  <T extends ReceiptEvent["type"]>(type: T, where: (e: Extract<ReceiptEvent, { type: T }>) => boolean = () => true) =>
  (e: ReceiptEvent): e is Extract<ReceiptEvent, { type: T }> =>
    e.type === type && where(e as Extract<ReceiptEvent, { type: T }>);

function summary(e: ReceiptEvent) {
  switch (e.type) {
    case "receipts":
      return { receipts: e.messages.map((m) => [m.seq, m.tick, m.deliveredCount, m.readCount]) };
    case "reconnecting":
      return { reconnecting: e.error.message };
    default:
      return e.type;
  }
}

/** Resolves once `ok(state)` holds, checking on every change and every 20 ms. */
export async function until(state: ReceiptState, what: string, ok: (s: ReceiptState) => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!ok(state)) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 10 s`);
    await new Promise<void>((resolve) => {
      const off = state.onChange(() => {
        off();
        resolve();
      });
      setTimeout(() => {
        off();
        resolve();
      }, 20);
    });
  }
}
