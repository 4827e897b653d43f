// The Node entry's `tls` option against a real receiptd over TLS and mutual
// TLS, with certificates made for the run (test/certs.ts); certificate
// failures as permanent errors (no retry, no reconnect); and the option's
// checks in both entries.
import { createServer, connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import * as web from "../src/index.js";
import {
  Code,
  createBackendClient,
  createReceiptsClient,
  ReceiptsError,
  type ReceiptEvent,
  type ReceiptSubscription,
  type ReceiptsClient,
  type TlsOptions,
} from "../src/node.js";
import { createCa, removePemFiles, writePemFiles, type Ca } from "./certs.js";
import { mintToken, startReceiptd, type Receiptd } from "./receiptd.js";
import { rejection } from "./rejection.js";
import { EventLog, is, uuid } from "./world.js";

/** receiptd's certificate: for 127.0.0.1 and localhost, issued by `ca`. */
function serverFiles(ca: Ca) {
  const server = ca.issue({ commonName: "receiptd", usage: "serverAuth", ips: ["127.0.0.1"], dnsNames: ["localhost"] });
  return writePemFiles({ cert: server.cert, key: server.key });
}

/** A user's client of `server` with these TLS settings (and a short deadline: failures are expected). */
function user(server: Receiptd, tls: TlsOptions | undefined, userId = uuid()): ReceiptsClient {
  return createReceiptsClient({ baseUrl: server.baseUrl, tls, token: mintToken(userId, "user"), timeoutMs: 5000 });
}

/** A TCP proxy in front of `port` that counts the connections made through it (each one a TLS handshake). */
interface CountingProxy {
  baseUrl: string;
  readonly connections: number;
  close(): void;
}

async function countingProxy(port: number): Promise<CountingProxy> {
  let connections = 0;
  const sockets = new Set<Socket>();
  const proxy = createServer((client) => {
    connections += 1;
    const upstream = connect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => s.destroy()).on("close", () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const { port: own } = proxy.address() as { port: number };
  return {
    baseUrl: `https://127.0.0.1:${own}`,
    get connections() {
      return connections;
    },
    close() {
      proxy.close();
      sockets.forEach((s) => s.destroy());
    },
  };
}

/**
 * Iterates `sub` until it ends or `withinMs` passed (then closes it): the
 * events it yielded and what it threw. A subscription that keeps reconnecting
 * ends with `error` undefined and `reconnecting` events.
 */
async function endOf(sub: ReceiptSubscription, withinMs: number): Promise<{ events: ReceiptEvent[]; error: unknown }> {
  const timer = setTimeout(() => sub.close(), withinMs);
  const events: ReceiptEvent[] = [];
  try {
    for await (const e of sub) {
      events.push(e);
    }
    return { events, error: undefined };
  } catch (error) {
    return { events, error };
  } finally {
    clearTimeout(timer);
  }
}

/** Reconnect at once and often: an SDK that retried certificate failures would show it within `endOf`'s window. */
const eagerReconnect = { reconnect: { initialDelayMs: 10, maxDelayMs: 50 } };

/** Node's failure for a server certificate from a CA the client does not trust. */
const untrusted = { code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE", reason: "unable to verify the first certificate" };

/** The message of a certificate failure with `baseUrl`. */
function tlsMessage(baseUrl: string, reason: string, code: string): string {
  return (
    `[internal] TLS handshake with ${baseUrl} failed: ${reason} ` +
    `(${code}; the certificate or the trust settings are wrong, retrying cannot help)`
  );
}

afterAll(removePemFiles);

describe("TLS", () => {
  const ca = createCa("receipts-sdk-ts test server CA");
  let server: Receiptd;

  beforeAll(async () => {
    const files = serverFiles(ca);
    server = await startReceiptd({ args: ["--tls-cert", files.cert, "--tls-key", files.key], tls: { ca: ca.cert } });
  });
  afterAll(() => server?.stop());

  it("trusts a private CA: registers a message, marks it delivered and pushes the event", async () => {
    expect(server.baseUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const tls = { ca: ca.cert };
    const [alice, bob] = [uuid(), uuid()];
    const conversationId = uuid();
    const messageId = uuid();
    const backend = createBackendClient({ baseUrl: server.baseUrl, tls, token: mintToken(uuid(), "service") });
    await backend.createConversation(conversationId, [alice, bob]);
    await backend.registerMessages([{ messageId, conversationId, seq: 1, senderId: alice }]);

    const log = new EventLog(user(server, tls, alice).subscribe());
    await log.waitFor(is("live"));
    // The CA as bytes (a plain Uint8Array) works as PEM text does.
    const bobClient = user(server, { ca: new TextEncoder().encode(ca.cert) }, bob);
    expect(await bobClient.markDelivered([messageId])).toMatchObject([{ messageId, outcome: "recorded" }]);
    const event = await log.waitFor(is("receipts", (e) => e.messages.some((m) => m.tick === "delivered")));
    expect(event.conversationId).toBe(conversationId);
    expect(event.messages[0]).toMatchObject({ messageId, deliveredCount: 1, recipientsTotal: 1 });
    await log.close();
  });

  it("checks the server's certificate against `servername` when given", async () => {
    await user(server, { ca: ca.cert, servername: "localhost" }).getPrivacySettings();
    const e = await rejection(user(server, { ca: ca.cert, servername: "elsewhere.example" }).getPrivacySettings());
    expect(e.message).toMatch(/elsewhere\.example\. is not in the cert's altnames/);
    expect(e.tlsFailure?.code).toBe("ERR_TLS_CERT_ALTNAME_INVALID");
    expect(e.retryable).toBe(false);
  });

  it("fails without the CA (Node's default trust store does not know it), as a TLS failure", async () => {
    const e = await rejection(user(server, undefined).getPrivacySettings());
    // Node's own TLS error, as connect-node reports it (no gRPC status), is the cause.
    expect(e.code).toBe(Code.Internal);
    expect(e.message).toMatch(/unable to verify the first certificate/);
    expect(e.tlsFailure).toEqual(untrusted);
  });

  it("the browser entry does not classify TLS failures: a browser's fetch cannot say why it failed", async () => {
    // Node's fetch would say (its error's cause has the code); the entry
    // behaves as in a browser regardless, where a failed fetch stays retryable.
    const client = web.createReceiptsClient({ baseUrl: server.baseUrl, token: mintToken(uuid(), "user") });
    const e = await rejection(client.getPrivacySettings());
    expect(e.tlsFailure).toBeUndefined();
    expect(e.retryable).toBe(true);
  });

  describe("trusting another CA", () => {
    const other = { ca: createCa("another CA").cert };
    let proxy: CountingProxy;
    beforeAll(async () => {
      proxy = await countingProxy(server.port);
    });
    afterAll(() => proxy?.close());
    const client = () => createReceiptsClient({ baseUrl: proxy.baseUrl, tls: other, token: mintToken(uuid(), "user") });

    it("a call fails at once with the TLS failure, not retried", async () => {
      const before = proxy.connections;
      const e = await rejection(client().getPrivacySettings());
      expect(proxy.connections - before).toBe(1);
      expect(e.code).toBe(Code.Internal);
      expect(e.tlsFailure).toEqual(untrusted);
      expect(e.retryable).toBe(false);
      expect(e.message).toBe(
        tlsMessage(proxy.baseUrl, "unable to verify the first certificate", "UNABLE_TO_VERIFY_LEAF_SIGNATURE"),
      );
    });

    it("a subscription ends with the TLS failure instead of reconnecting", async () => {
      const before = proxy.connections;
      const started = Date.now();
      const { events, error } = await endOf(client().subscribe(eagerReconnect), 3000);
      expect(events).toEqual([]);
      expect(error).toBeInstanceOf(ReceiptsError);
      expect((error as ReceiptsError).tlsFailure?.code).toBe("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
      expect(Date.now() - started).toBeLessThan(2000);
      expect(proxy.connections - before).toBe(1);
    });

    it("the delivered batcher reports the TLS failure to onError instead of resending", async () => {
      const before = proxy.connections;
      const messageId = uuid();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const reported = new Promise<[ReceiptsError, string[]]>((resolve, reject) => {
        // A batch that failed retryably would be sent again every second, and never reported.
        timer = setTimeout(() => reject(new Error("onError not called within 3 s")), 3000);
        client()
          .deliveredBatcher({ maxDelayMs: 0, onError: (e, ids) => resolve([e, ids]) })
          .add(messageId);
      });
      const [e, ids] = await reported.finally(() => clearTimeout(timer));
      expect(e.tlsFailure?.code).toBe("UNABLE_TO_VERIFY_LEAF_SIGNATURE");
      expect(ids).toEqual([messageId]);
      expect(proxy.connections - before).toBe(1);
    });
  });
});

describe("mutual TLS", () => {
  const serverCa = createCa("receipts-sdk-ts test server CA");
  const clientCa = createCa("receipts-sdk-ts test client CA");
  const otherCa = createCa("receipts-sdk-ts test other CA");
  const identity = clientCa.issue({ commonName: "backend", usage: "clientAuth" });
  let server: Receiptd;

  beforeAll(async () => {
    const files = { ...serverFiles(serverCa), ...writePemFiles({ clientCa: clientCa.cert }) };
    server = await startReceiptd({
      args: ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-client-ca", files.clientCa],
      tls: { ca: serverCa.cert, cert: identity.cert, key: identity.key },
    });
  });
  afterAll(() => server?.stop());

  it("works with a client certificate from the client CA", async () => {
    const tls = { ca: serverCa.cert, cert: identity.cert, key: identity.key };
    const [alice, bob] = [uuid(), uuid()];
    const conversationId = uuid();
    const messageId = uuid();
    const backend = createBackendClient({ baseUrl: server.baseUrl, tls, token: mintToken(uuid(), "service") });
    await backend.createConversation(conversationId, [alice, bob]);
    await backend.registerMessages([{ messageId, conversationId, seq: 1, senderId: alice }]);
    // A list of CAs, and the identity as Buffers.
    const bytes = { ca: [serverCa.cert], cert: Buffer.from(identity.cert), key: Buffer.from(identity.key) };
    expect(await user(server, bytes, bob).markDelivered([messageId])).toMatchObject([{ messageId, outcome: "recorded" }]);
    const [state] = await user(server, tls, alice).getReceipts(conversationId, [messageId]);
    expect(state!.tick).toBe("delivered");
  });

  it("fails without a client certificate, at once and not retried", async () => {
    // TLS 1.3: the server checks the client after the client's side of the
    // handshake is done, so the call fails on the server's alert.
    const proxy = await countingProxy(server.port);
    try {
      const tls = { ca: serverCa.cert };
      const client = createReceiptsClient({ baseUrl: proxy.baseUrl, tls, token: mintToken(uuid(), "user") });
      const e = await rejection(client.getPrivacySettings());
      expect(proxy.connections).toBe(1);
      expect(e.message).toBe(
        tlsMessage(proxy.baseUrl, "tlsv13 alert certificate required", "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"),
      );
      expect(e.tlsFailure).toEqual({
        code: "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED",
        reason: "tlsv13 alert certificate required",
      });
      expect(e.retryable).toBe(false);
    } finally {
      proxy.close();
    }
  });

  it("a subscription without a client certificate ends with the TLS failure instead of reconnecting", async () => {
    const proxy = await countingProxy(server.port);
    try {
      const tls = { ca: serverCa.cert };
      const client = createReceiptsClient({ baseUrl: proxy.baseUrl, tls, token: mintToken(uuid(), "user") });
      const { events, error } = await endOf(client.subscribe(eagerReconnect), 3000);
      expect(events).toEqual([]);
      expect(error).toBeInstanceOf(ReceiptsError);
      expect((error as ReceiptsError).tlsFailure?.code).toBe("ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED");
      expect(proxy.connections).toBe(1);
    } finally {
      proxy.close();
    }
  });

  it("fails with a client certificate from another CA", async () => {
    const other = otherCa.issue({ commonName: "intruder", usage: "clientAuth" });
    const e = await rejection(user(server, { ca: serverCa.cert, cert: other.cert, key: other.key }).getPrivacySettings());
    expect(e.message).toMatch(/alert unknown ca/);
    expect(e.tlsFailure).toEqual({ code: "ERR_SSL_TLSV1_ALERT_UNKNOWN_CA", reason: "tlsv1 alert unknown ca" });
    expect(e.retryable).toBe(false);
  });
});

describe("the tls option", () => {
  const tls = { ca: "-----BEGIN CERTIFICATE-----\n" };
  const token = "t";

  it("is refused by the browser entry, where the browser decides trust", () => {
    expect(() => web.createReceiptsClient({ baseUrl: "https://receipts.example", token, tls })).toThrow(
      /^createReceiptsClient: `tls` is for Node only/,
    );
    expect(() => web.createBackendClient({ baseUrl: "https://receipts.example", token, tls })).toThrow(
      /^createBackendClient: `tls` is for Node only/,
    );
    expect(() => web.createReceiptsClient({ baseUrl: "https://receipts.example", token })).not.toThrow();
  });

  it("needs an https:// URL and the default transport", () => {
    expect(() => createReceiptsClient({ baseUrl: "http://127.0.0.1:1", token, tls })).toThrow(
      /^createReceiptsClient: `tls` needs an https:\/\/ `baseUrl`/,
    );
    const transport = createGrpcWebTransport({ baseUrl: "https://127.0.0.1:1", httpVersion: "2" });
    expect(() => createBackendClient({ transport, token, tls })).toThrow(
      /^createBackendClient: `tls` configures the default transport/,
    );
  });
});
