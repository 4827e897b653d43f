// The Node entry's `tls` option against a real receiptd over TLS and mutual
// TLS, with certificates made for the run (test/certs.ts); and the option's
// checks in both entries.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import * as web from "../src/index.js";
import {
  Code,
  createBackendClient,
  createReceiptsClient,
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
  });

  it("fails without the CA (Node's default trust store does not know it)", async () => {
    const e = await rejection(user(server, undefined).getPrivacySettings());
    // Node's own TLS error, as connect-node reports it (no gRPC status).
    expect(e.code).toBe(Code.Internal);
    expect(e.message).toMatch(/unable to verify the first certificate/);
  });

  it("fails when trusting another CA", async () => {
    const e = await rejection(user(server, { ca: createCa("another CA").cert }).getPrivacySettings());
    expect(e.message).toMatch(/unable to verify the first certificate/);
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

  it("fails without a client certificate", async () => {
    // TLS 1.3: the server checks the client after the client's side of the
    // handshake is done, so the call fails on the server's alert.
    const e = await rejection(user(server, { ca: serverCa.cert }).getPrivacySettings());
    expect(e.message).toMatch(/alert certificate required/);
  });

  it("fails with a client certificate from another CA", async () => {
    const other = otherCa.issue({ commonName: "intruder", usage: "clientAuth" });
    const e = await rejection(user(server, { ca: serverCa.cert, cert: other.cert, key: other.key }).getPrivacySettings());
    expect(e.message).toMatch(/alert unknown ca/);
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
