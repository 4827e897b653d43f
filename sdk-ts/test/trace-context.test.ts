// The `traceContext` option: W3C `traceparent`/`tracestate` on every call,
// checked on the wire. Each entry talks to a local server of its own that
// records the headers of every request and answers trailers-only UNAVAILABLE:
// HTTP/1.1 (node:http) for the browser entry (fetch), h2c (node:http2) for the
// Node entry (connect-node over HTTP/2). No receiptd is involved.
import { createServer as createHttp1Server, type IncomingHttpHeaders } from "node:http";
import { createServer as createHttp2Server, type Http2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import * as web from "../src/index.js";
import * as node from "../src/node.js";
import { Code, ReceiptsError, type ReceiptEvent, type TraceContext } from "../src/node.js";
import { rejection } from "./rejection.js";

const TP1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

const uuid = (): string => crypto.randomUUID();

interface Request {
  path: string;
  headers: IncomingHttpHeaders;
}

interface Recorder {
  readonly baseUrl: string;
  /** Every request received, in arrival order. */
  readonly requests: Request[];
  close(): Promise<void>;
}

/** What both servers' compatibility APIs offer. */
interface Req {
  url?: string | undefined;
  headers: IncomingHttpHeaders;
  resume(): unknown;
  once(event: "end", listener: () => void): unknown;
}
interface Res {
  writeHead(status: number, headers: Record<string, string>): unknown;
  end(): unknown;
}

/** A server that records each request's headers and answers gRPC-web trailers-only UNAVAILABLE "test". */
async function startRecorder(http: "1.1" | "2"): Promise<Recorder> {
  const requests: Request[] = [];
  const handle = (req: Req, res: Res) => {
    requests.push({ path: req.url ?? "", headers: req.headers });
    req.resume();
    req.once("end", () => {
      res.writeHead(200, {
        "content-type": "application/grpc-web+proto",
        "grpc-status": "14",
        "grpc-message": "test",
      });
      res.end();
    });
  };
  let close: () => Promise<void>;
  let port: number;
  if (http === "1.1") {
    const server = createHttp1Server(handle);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;
    close = () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
  } else {
    const server = createHttp2Server(handle);
    const sessions = new Set<Http2Session>();
    server.on("session", (s: Http2Session) => {
      sessions.add(s);
      s.once("close", () => sessions.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;
    close = () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        for (const s of sessions) {
          s.destroy();
        }
      });
  }
  return { baseUrl: `http://127.0.0.1:${port}`, requests, close };
}

/** A trace context function that returns `values` in turn, counting its calls. */
function sequence(...values: (TraceContext | undefined)[]) {
  const fn = Object.assign(
    async () => {
      fn.calls += 1;
      if (values.length === 0) {
        throw new Error("traceContext called more often than the test expects");
      }
      return values.shift();
    },
    { calls: 0 },
  );
  return fn;
}

describe.each([
  ["node (connect-node, HTTP/2)", node, "2"],
  ["web (connect-web, fetch, HTTP/1.1)", web, "1.1"],
] as const)("traceContext over %s", (_, sdk, http) => {
  let server: Recorder;
  beforeAll(async () => {
    server = await startRecorder(http);
  });
  afterAll(async () => {
    await server.close();
  });
  beforeEach(() => {
    server.requests.length = 0;
  });

  const user = (traceContext?: node.ConnectionOptions["traceContext"]) =>
    sdk.createReceiptsClient({ baseUrl: server.baseUrl, devUserId: uuid(), traceContext });

  it("a unary call carries the traceparent and tracestate the function returns, next to the credentials", async () => {
    const client = user(() => ({ traceparent: TP1, tracestate: TRACESTATE }));
    const e = await rejection(client.getReceipts(uuid(), [uuid()]));
    // The server answered (so the request did reach it).
    expect([e.code, e.rawMessage]).toEqual([Code.Unavailable, "test"]);
    expect(server.requests).toHaveLength(1);
    const [req] = server.requests;
    expect(req!.path).toBe("/receipts.v1.ReceiptService/GetReceipts");
    expect(req!.headers["traceparent"]).toBe(TP1);
    expect(req!.headers["tracestate"]).toBe(TRACESTATE);
    expect(req!.headers["x-receipts-user"]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("the function is called before each call, so each call carries its own trace", async () => {
    const trace = sequence({ traceparent: TP1 }, { traceparent: TP2, tracestate: TRACESTATE });
    const client = user(trace);
    await rejection(client.markDelivered([uuid()]));
    await rejection(client.markDelivered([uuid()]));
    expect(trace.calls).toBe(2);
    expect(server.requests.map((r) => [r.path, r.headers["traceparent"], r.headers["tracestate"]])).toEqual([
      ["/receipts.v1.ReceiptService/MarkDelivered", TP1, undefined],
      ["/receipts.v1.ReceiptService/MarkDelivered", TP2, TRACESTATE],
    ]);
  });

  it("a subscription sends it on connect and again, freshly asked, on every reconnect", async () => {
    const trace = sequence({ traceparent: TP1, tracestate: TRACESTATE }, { traceparent: TP2 });
    const subscription = user(trace).subscribe({ reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
    const events: ReceiptEvent[] = [];
    for await (const e of subscription) {
      events.push(e);
      if (events.length === 2) {
        break;
      }
    }
    expect(events.map((e) => e.type)).toEqual(["reconnecting", "reconnecting"]);
    expect(trace.calls).toBe(2);
    expect(server.requests.map((r) => [r.path, r.headers["traceparent"], r.headers["tracestate"]])).toEqual([
      ["/receipts.v1.ReceiptService/SubscribeReceipts", TP1, TRACESTATE],
      ["/receipts.v1.ReceiptService/SubscribeReceipts", TP2, undefined],
    ]);
  });

  it("the backend client sends it too", async () => {
    const backend = sdk.createBackendClient({
      baseUrl: server.baseUrl,
      devUserId: uuid(),
      traceContext: () => ({ traceparent: TP2 }),
    });
    await rejection(backend.createConversation(uuid(), [uuid(), uuid()]));
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]!.path).toBe("/receipts.v1.ReceiptBackendService/CreateConversation");
    expect(server.requests[0]!.headers["traceparent"]).toBe(TP2);
    expect(server.requests[0]!.headers["x-receipts-role"]).toBe("service");
  });

  it("nothing is sent when the function returns undefined, or without the option", async () => {
    const trace = sequence(undefined);
    await rejection(user(trace).getPrivacySettings());
    await rejection(user().getPrivacySettings());
    // An empty tracestate is no tracestate.
    await rejection(user(() => ({ traceparent: TP1, tracestate: "" })).getPrivacySettings());
    expect(trace.calls).toBe(1);
    expect(server.requests).toHaveLength(3);
    for (const r of server.requests.slice(0, 2)) {
      expect(r.headers["x-receipts-user"]).toBeDefined();
      expect(r.headers).not.toHaveProperty("traceparent");
      expect(r.headers).not.toHaveProperty("tracestate");
    }
    expect(server.requests[2]!.headers["traceparent"]).toBe(TP1);
    expect(server.requests[2]!.headers).not.toHaveProperty("tracestate");
  });

  it.each([
    ["not a traceparent", "not-a-traceparent", "is not a W3C traceparent"],
    ["uppercase hex", TP1.toUpperCase(), "is not a W3C traceparent"],
    ["extra fields", `${TP1}-00`, "is not a W3C traceparent"],
    ["a trailing newline", `${TP1}\n`, "is not a W3C traceparent"],
    ["version ff", `ff${TP1.slice(2)}`, "has the invalid version ff"],
    ["an all-zero trace id", `00-${"0".repeat(32)}-00f067aa0ba902b7-01`, "has an all-zero trace id"],
    ["an all-zero span id", `00-4bf92f3577b34da6a3ce929d0e0e4736-${"0".repeat(16)}-01`, "has an all-zero span id"],
  ])("a traceparent with %s rejects the call with INVALID_ARGUMENT and sends nothing", async (_, traceparent, reason) => {
    const trace = sequence({ traceparent });
    const e = await rejection(user(trace).markDelivered([uuid()]));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.field).toBe("traceparent");
    expect(e.rawMessage).toContain(reason);
    expect(e.retryable).toBe(false);
    expect(trace.calls).toBe(1); // not retried
    expect(server.requests).toHaveLength(0);
  });

  it("a tracestate that is not printable ASCII rejects the call with INVALID_ARGUMENT and sends nothing", async () => {
    for (const tracestate of ["congo=t61rcWkgMzE\r\nx-evil: 1", "congo=é"]) {
      const e = await rejection(user(() => ({ traceparent: TP1, tracestate })).getPrivacySettings());
      expect([e.code, e.field]).toEqual([Code.InvalidArgument, "tracestate"]);
    }
    expect(server.requests).toHaveLength(0);
  });

  it("a subscription with an invalid traceparent throws INVALID_ARGUMENT instead of reconnecting", async () => {
    const trace = sequence({ traceparent: `00-${"0".repeat(32)}-00f067aa0ba902b7-01` });
    const subscription = user(trace).subscribe({ reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
    const e = await rejection(subscription[Symbol.asyncIterator]().next());
    expect([e.code, e.field]).toEqual([Code.InvalidArgument, "traceparent"]);
    expect(trace.calls).toBe(1);
    expect(server.requests).toHaveLength(0);
  });
});
