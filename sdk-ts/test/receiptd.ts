// Starts the real receiptd (target/debug/receiptd at the repo root) for tests:
// on a port the OS picks (read back from its log) or a given one, polled until
// it answers a call, and stopped with SIGTERM like a deployment would.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHmac } from "node:crypto";
import { createReceiptsClient, type TlsOptions } from "../src/node.js";

/** The repository root (sdk-ts/..). */
export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/** HS256 secret every test server is started with. */
export const JWT_SECRET = "receipts-sdk-ts-test-secret";

/** The binary under test: `$RECEIPTD`, else target/debug/receiptd at the repo root. */
export function receiptdPath(): string {
  const path = process.env["RECEIPTD"] ?? join(repoRoot, "target/debug/receiptd");
  if (!existsSync(path)) {
    throw new Error(
      `receiptd not found at ${path}: build it with \`cargo build -p receipts-server --bin receiptd\``,
    );
  }
  return path;
}

export interface Receiptd {
  readonly baseUrl: string;
  readonly port: number;
  readonly dataDir: string;
  /** Everything the process printed so far (for failure messages). */
  log(): string;
  /** SIGTERM, then waits for a clean exit (rejects on a non-zero exit or a hang). */
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Default: one the OS picks. */
  port?: number;
  /** Default: a new temporary directory. */
  dataDir?: string;
  args?: string[];
  /**
   * For a server given `--tls-cert`/`--tls-key` (and maybe `--tls-client-ca`)
   * in `args`: `baseUrl` is then https://, and the readiness probe connects
   * with these client settings. Default: plain http://.
   */
  tls?: TlsOptions;
}

/** Starts receiptd and resolves once it answers a gRPC-web call. */
export async function startReceiptd(options: StartOptions = {}): Promise<Receiptd> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "receipts-sdk-ts-"));
  const child = spawn(
    receiptdPath(),
    [
      "--listen", `127.0.0.1:${options.port ?? 0}`,
      "--data-dir", dataDir,
      "--jwt-secret", JWT_SECRET,
      "--dev-mode",
      "--group-window-ms", "100",
      "--shutdown-grace-ms", "3000",
      "--log-json",
      ...(options.args ?? []),
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "info" } },
  );
  // Log lines (JSON, on stderr) are kept for failure messages and scanned
  // for the bound address.
  let output = "";
  const seen = new EventTarget();
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding("utf8").on("data", (s: string) => {
      output += s;
      seen.dispatchEvent(new Event("output"));
    });
  }
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const fail = (why: string) => {
    child.kill("SIGKILL");
    return new Error(`receiptd did not start: ${why}\n--- its output ---\n${output}`);
  };

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(fail("no `listening` line within 15 s")), 15_000);
    const onOutput = () => {
      const m = /"listening[^"]*".*?"addr":"127\.0\.0\.1:(\d+)"/.exec(output);
      if (m?.[1] !== undefined) {
        clearTimeout(timer);
        seen.removeEventListener("output", onOutput);
        resolve(Number(m[1]));
      }
    };
    seen.addEventListener("output", onOutput);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(fail(`exited with code ${String(code)}`));
    });
  });
  const baseUrl = `${options.tls === undefined ? "http" : "https"}://127.0.0.1:${port}`;
  await waitUntilAnswering(baseUrl, options.tls, child, () => output);
  return {
    baseUrl,
    port,
    dataDir,
    log: () => output,
    stop: () => stop(child, exited, () => output),
  };
}

/** Polls a cheap call until the server answers it (no fixed sleep). */
async function waitUntilAnswering(
  baseUrl: string,
  tls: TlsOptions | undefined,
  child: ChildProcess,
  output: () => string,
) {
  const probe = createReceiptsClient({ baseUrl, tls, devUserId: crypto.randomUUID(), timeoutMs: 1000 });
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await probe.getPrivacySettings();
      return;
    } catch (e) {
      if (child.exitCode !== null || Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`receiptd did not answer on ${baseUrl}: ${String(e)}\n--- its output ---\n${output()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function stop(child: ChildProcess, exited: Promise<number | null>, output: () => string) {
  if (child.exitCode !== null) {
    return;
  }
  child.kill("SIGTERM");
  const timeout = new Promise<"hung">((r) => setTimeout(() => r("hung"), 10_000).unref());
  const code = await Promise.race([exited, timeout]);
  if (code === "hung") {
    child.kill("SIGKILL");
    throw new Error(`receiptd did not stop within 10 s of SIGTERM\n${output()}`);
  }
  if (code !== 0) {
    throw new Error(`receiptd exited with ${String(code)} on SIGTERM\n${output()}`);
  }
}

/** Mints an HS256 JWT as `receiptd token` does. */
export function mintToken(sub: string, role: "user" | "service", ttlSeconds = 3600, secret = JWT_SECRET): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, role, exp: now + ttlSeconds, iat: now })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}
