// The messaging backend's client: conversations, membership and sent
// messages, over ReceiptBackendService (a token with the `service` role).
import { Code } from "@connectrpc/connect";
import type { Connection, ConnectionOptions } from "./connection.js";
import { ReceiptsError } from "./errors.js";
import { ReceiptBackendService } from "./gen/receipts/v1/backend_pb.js";
import { unary, type RequestOptions } from "./unary.js";

/** Options of `createBackendClient` (`devUserId` is the backend's own id, sent with `x-receipts-role: service`). */
export type BackendClientOptions = ConnectionOptions;

/** A change of one member, from a seq on. */
export interface MembershipChange {
  userId: string;
  /** The first seq the change applies to (≥ 1). */
  fromSeq: number;
}

/** A sent message to register (one tick). */
export interface MessageRegistration {
  /** A UUIDv7 is expected; any UUID is accepted. */
  messageId: string;
  conversationId: string;
  /** Its position in the conversation (≥ 1, unique within it). */
  seq: number;
  /** Must be a member of the conversation at `seq`. */
  senderId: string;
  /** When it was sent (a Date or ms since the epoch); default: the server's "now". */
  sentAt?: Date | number;
  /**
   * The thread the message belongs to, named by its root: a message of the
   * same conversation's main timeline with a lower seq, registered before
   * this one or earlier in the same call. Omitted (or `null`): the main
   * timeline. Threads do not nest. Part of the message's identity:
   * registering it again in another thread is `ALREADY_EXISTS`.
   */
  threadRootMessageId?: string | null;
}

/**
 * A client of `ReceiptBackendService`. Every call is idempotent: repeating it
 * with the same content succeeds and changes nothing.
 */
export interface BackendClient {
  /** Creates a conversation whose members are members from seq 1 on; `created` is false if it already existed with the same members. */
  createConversation(
    conversationId: string,
    memberIds: string[],
    options?: RequestOptions,
  ): Promise<{ created: boolean }>;
  addMembers(
    conversationId: string,
    members: MembershipChange[],
    options?: RequestOptions,
  ): Promise<{ added: number; memberCount: number }>;
  removeMembers(
    conversationId: string,
    members: MembershipChange[],
    options?: RequestOptions,
  ): Promise<{ removed: number; memberCount: number }>;
  /** Registers up to 1000 sent messages, all or nothing; `registered` counts the new ones. */
  registerMessages(
    messages: MessageRegistration[],
    options?: RequestOptions,
  ): Promise<{ registered: number }>;
}

/** An int64 field from a JS number, refusing what the wire cannot carry. */
function int64(field: string, value: number): bigint {
  if (!Number.isSafeInteger(value)) {
    throw new ReceiptsError(Code.InvalidArgument, `${field}: must be an integer, got ${String(value)}`);
  }
  return BigInt(value);
}

const members = (changes: MembershipChange[]) =>
  changes.map((m, i) => ({ userId: m.userId, fromSeq: int64(`members[${i}].from_seq`, m.fromSeq) }));

/** A backend client over `connection` (made with the `service` role). @internal */
export function backendClient(connection: Connection): BackendClient {
  const { method } = ReceiptBackendService;
  return {
    async createConversation(conversationId, memberIds, o) {
      const res = await unary(connection, method.createConversation, { conversationId, memberIds }, o);
      return { created: res.created };
    },
    async addMembers(conversationId, changes, o) {
      const res = await unary(connection, method.addMembers, { conversationId, members: members(changes) }, o);
      return { added: Number(res.added), memberCount: Number(res.memberCount) };
    },
    async removeMembers(conversationId, changes, o) {
      const res = await unary(connection, method.removeMembers, { conversationId, members: members(changes) }, o);
      return { removed: Number(res.removed), memberCount: Number(res.memberCount) };
    },
    async registerMessages(messages, o) {
      const res = await unary(
        connection,
        method.registerMessages,
        {
          messages: messages.map((m, i) => ({
            messageId: m.messageId,
            conversationId: m.conversationId,
            seq: int64(`messages[${i}].seq`, m.seq),
            senderId: m.senderId,
            sentAtMs: int64(
              `messages[${i}].sent_at_ms`,
              m.sentAt === undefined ? 0 : typeof m.sentAt === "number" ? m.sentAt : m.sentAt.getTime(),
            ),
            threadRootMessageId: m.threadRootMessageId ?? "",
          })),
        },
        o,
      );
      return { registered: Number(res.registered) };
    },
  };
}
