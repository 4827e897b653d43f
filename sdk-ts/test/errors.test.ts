// Every error the server maps, decoded into ReceiptsError through both
// transports: gRPC-web errors arrive "trailers-only" (status in the HTTP
// headers, no body), which each transport must read right.
import { ConnectError } from "@connectrpc/connect";
import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import * as web from "../src/index.js";
import * as node from "../src/node.js";
import { Code, ReceiptsError } from "../src/node.js";
import { decodeError } from "../src/errors.js";
import { tlsFailureOf } from "../src/tls-failure.js";
import { mintToken } from "./receiptd.js";
import { baseUrl, chat, uuid } from "./world.js";
import { rejection } from "./rejection.js";

/** A loopback port nothing listens on (bound by the OS, then released). */
function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

describe.each([
  ["node (connect-node, HTTP/2)", node],
  ["web (connect-web, fetch, HTTP/1.1)", web],
])("errors over %s", (_, sdk) => {
  const user = (id = uuid()) => sdk.createReceiptsClient({ baseUrl: baseUrl(), token: mintToken(id, "user") });
  const service = () => sdk.createBackendClient({ baseUrl: baseUrl(), token: mintToken(uuid(), "service") });

  it("INVALID_ARGUMENT names the field, and the message starts with the code", async () => {
    const e = await rejection(user().markDelivered(["x"]));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.field).toBe("message_ids[0]");
    expect(e.rawMessage).toBe('message_ids[0]: "x" is not a valid UUID');
    expect(e.message).toBe('[invalid_argument] message_ids[0]: "x" is not a valid UUID');
    expect(e.cause).toBeInstanceOf(ConnectError);
    expect(e.metadata.get("grpc-status")).toBe("3");
    expect(e.retryable).toBe(false);
  });

  it("INVALID_ARGUMENT for an empty batch names the repeated field", async () => {
    const e = await rejection(user().getUnreadCounts([]));
    expect([e.code, e.field]).toEqual([Code.InvalidArgument, "conversation_ids"]);
  });

  it("INVALID_ARGUMENT names nested fields of the backend API", async () => {
    const e = await rejection(service().addMembers(uuid(), [{ userId: uuid(), fromSeq: 0 }]));
    expect([e.code, e.field]).toEqual([Code.InvalidArgument, "members[0].from_seq"]);
  });

  it("NOT_FOUND for an unknown message", async () => {
    const id = uuid();
    const e = await rejection(user().markDelivered([id]));
    expect(e.code).toBe(Code.NotFound);
    expect(e.field).toBe("message_ids");
    expect(e.rawMessage).toContain(id);
  });

  it("PERMISSION_DENIED for a non-member, and for the wrong role", async () => {
    const c = await chat(2);
    const [m] = await c.send(1);
    const e = await rejection(user().markReadUpTo(c.conversationId, m!.id));
    expect(e.code).toBe(Code.PermissionDenied);
    expect(e.field).toBe("conversation_id");

    const asUser = sdk.createBackendClient({ baseUrl: baseUrl(), token: mintToken(uuid(), "user") });
    const role = await rejection(asUser.createConversation(uuid(), [uuid(), uuid()]));
    expect(role.code).toBe(Code.PermissionDenied);
    expect(role.field).toBeUndefined();
  });

  it("UNAUTHENTICATED for a forged or expired token", async () => {
    const forged = sdk.createReceiptsClient({
      baseUrl: baseUrl(),
      token: mintToken(uuid(), "user", 3600, "another-secret-of-16-bytes"),
    });
    const e = await rejection(forged.getPrivacySettings());
    expect(e.code).toBe(Code.Unauthenticated);
    expect(e.rawMessage).toBe("authorization: bad signature");
    expect(e.field).toBeUndefined();

    const expired = sdk.createReceiptsClient({ baseUrl: baseUrl(), token: mintToken(uuid(), "user", -60) });
    expect((await rejection(expired.getPrivacySettings())).rawMessage).toBe("authorization: token expired");
  });

  it("calls right after rejected ones succeed", async () => {
    for (let i = 0; i < 5; i++) {
      const forged = sdk.createReceiptsClient({ baseUrl: baseUrl(), token: "not-a-jwt" });
      expect((await rejection(forged.getPrivacySettings())).code).toBe(Code.Unauthenticated);
      expect(await user().getPrivacySettings()).toEqual({ sendReadReceipts: true });
    }
  });

  it("ALREADY_EXISTS for a conversation with other members", async () => {
    const b = service();
    const id = uuid();
    await b.createConversation(id, [uuid(), uuid()]);
    const e = await rejection(b.createConversation(id, [uuid(), uuid()]));
    expect(e.code).toBe(Code.AlreadyExists);
    expect(e.field).toBe("conversation_id");
  });

  it("FAILED_PRECONDITION for a sender who is not a member at the seq", async () => {
    const c = await chat(2);
    const e = await rejection(
      service().registerMessages([{ messageId: uuid(), conversationId: c.conversationId, seq: 1, senderId: uuid() }]),
    );
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.field).toBe("messages[0].sender_id");
  });

  it("a stream's error is thrown by the iterator, not retried", async () => {
    const asService = sdk.createReceiptsClient({ baseUrl: baseUrl(), token: mintToken(uuid(), "service") });
    const sub = asService.subscribe();
    const e = await rejection(
      (async () => {
        for await (const _ of sub) {
          // unreachable: the stream fails before its first event
        }
      })(),
    );
    expect(e.code).toBe(Code.PermissionDenied);
  });

  it("an unreachable server is UNAVAILABLE-like and retryable", async () => {
    const client = sdk.createReceiptsClient({ baseUrl: `http://127.0.0.1:${await closedPort()}`, devUserId: uuid() });
    const e = await rejection(client.getPrivacySettings());
    expect(e.retryable).toBe(true);
  });
});

describe("ReceiptsError", () => {
  it("keeps a non-Connect cause and reads no field from free text", () => {
    const cause = new TypeError("boom");
    const e = ReceiptsError.from(cause);
    expect(e.code).toBe(Code.Unknown);
    expect(e.cause).toBe(cause);
    expect(e.message).toBe("[unknown] boom");
    expect(new ReceiptsError(Code.InvalidArgument, "missing credentials: send a token").field).toBeUndefined();
    expect(new ReceiptsError(Code.Unauthenticated, "authorization: bad signature").field).toBeUndefined();
    expect(ReceiptsError.from(e)).toBe(e);
  });

  it("is retryable for UNAVAILABLE and RESOURCE_EXHAUSTED, and for a broken connection only without a status", () => {
    expect(new ReceiptsError(Code.Unavailable, "x").retryable).toBe(true);
    expect(new ReceiptsError(Code.ResourceExhausted, "x").retryable).toBe(true);
    expect(new ReceiptsError(Code.Internal, "missing trailer").retryable).toBe(true);
    expect(new ReceiptsError(Code.Aborted, "write EPIPE").retryable).toBe(true);
    expect(new ReceiptsError(Code.Internal, "x", { metadata: { "grpc-status": "13" } }).retryable).toBe(false);
    expect(new ReceiptsError(Code.PermissionDenied, "x").retryable).toBe(false);
  });
});

describe("ReceiptsError.tlsFailure", () => {
  /** A Node-style error with a string `code`, as Node's TLS layer throws them. */
  const nodeError = (code: string, message: string, extra: object = {}) =>
    Object.assign(new Error(message), { code }, extra);

  const expired = nodeError("CERT_HAS_EXPIRED", "certificate has expired");
  const node = { tlsFailureOf };

  it("is found in the cause chain by the Node entry, and such an error is not retryable nor a broken connection", () => {
    const e = decodeError(new ConnectError("certificate has expired", Code.Internal, undefined, undefined, expired), node);
    expect(e.tlsFailure).toEqual({ code: "CERT_HAS_EXPIRED", reason: "certificate has expired" });
    expect(e.code).toBe(Code.Internal);
    expect(e.retryable).toBe(false);
    // Without a baseUrl (a caller's transport), the message names no server.
    expect(e.rawMessage).toBe(
      "TLS handshake failed: certificate has expired (CERT_HAS_EXPIRED; " +
        "the certificate or the trust settings are wrong, retrying cannot help)",
    );
    // Nested deeper, as Node's fetch reports it.
    expect(tlsFailureOf(new TypeError("fetch failed", { cause: expired }))?.code).toBe("CERT_HAS_EXPIRED");
  });

  it("is never set by ReceiptsError.from, which both entries share", () => {
    const e = ReceiptsError.from(new ConnectError("certificate has expired", Code.Internal, undefined, undefined, expired));
    expect(e.tlsFailure).toBeUndefined();
    expect(e.rawMessage).toBe("certificate has expired");
    expect(e.retryable).toBe(true);
  });

  it("takes an OpenSSL alert's reason rather than its whole error line", () => {
    const alert = nodeError(
      "ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE",
      "80:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:rec_layer_s3.c:1601:SSL alert number 42\n",
      { reason: "sslv3 alert bad certificate" },
    );
    expect(tlsFailureOf(alert)).toEqual({ code: "ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE", reason: "sslv3 alert bad certificate" });
  });

  it("is undefined for other connection failures, which stay retryable", () => {
    for (const code of ["ECONNREFUSED", "ECONNRESET", "ERR_SSL_WRONG_VERSION_NUMBER"]) {
      const e = decodeError(nodeError(code, "boom"), node);
      expect(e.tlsFailure).toBeUndefined();
    }
    const refused = decodeError(new ConnectError("connect ECONNREFUSED", Code.Unavailable), node);
    expect(refused.retryable).toBe(true);
  });

  it("survives a cyclic cause chain", () => {
    const a: { cause?: unknown } = {};
    a.cause = { cause: a };
    expect(tlsFailureOf(a)).toBeUndefined();
  });
});

describe("package entries", () => {
  it("the browser and Node entries export the same names", () => {
    expect(Object.keys(web).sort()).toEqual(Object.keys(node).sort());
  });
});
