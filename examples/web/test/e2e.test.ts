// End to end in a real browser: headless Chromium (Debian's /usr/bin/chromium)
// opens the built page, served by `vite preview`, against a real receiptd.
// Alice sends; the recipients' panes acknowledge delivery; "Mark read" in
// their panes turns Alice's ticks blue, live over gRPC-web. A recipient's
// "Device offline" holds a message at one tick; stopping receiptd makes a
// send fail visibly, and restarting it lets it through. Each tick state is
// kept as a screenshot in test-results/ (gitignored).
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type BrowserContext, type Locator, type Page } from "playwright-core";
import { build, preview, type PreviewServer } from "vite";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startReceiptd, type Receiptd } from "../../../sdk-ts/test/receiptd.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const results = join(root, "test-results");
const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";

let server: Receiptd;
let site: PreviewServer;
let browser: BrowserContext;
let page: Page;
const scratch = mkdtempSync(join(tmpdir(), "receipts-web-e2e-"));
const pageErrors: string[] = [];

beforeAll(async () => {
  server = await startReceiptd();
  const outDir = join(scratch, "dist");
  await build({ root, logLevel: "warn", build: { outDir, emptyOutDir: true } });
  site = await preview({
    root,
    logLevel: "warn",
    build: { outDir },
    preview: { host: "127.0.0.1", port: 0, strictPort: true },
  });
  browser = await chromium.launchPersistentContext(join(scratch, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1200, height: 640 },
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => {
    // While receiptd is stopped, Chromium logs every refused request; the page's own errors still count.
    if (m.type() === "error" && !/net::ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) {
      pageErrors.push(m.text());
    }
  });
});

afterAll(async () => {
  await browser?.close();
  await site?.close();
  await server?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

function siteUrl(): string {
  const address = site.httpServer.address();
  if (address === null || typeof address === "string") {
    throw new Error(`vite preview has no TCP address: ${String(address)}`);
  }
  return `http://127.0.0.1:${address.port}/`;
}

const thread = (conversation: string) => `#sender .thread[data-conversation="${conversation}"]`;
const row = (conversation: string, text: string) => page.locator(`${thread(conversation)} li`, { hasText: text });

async function send(conversation: string, text: string): Promise<void> {
  await page.fill(`${thread(conversation)} input[name=text]`, text);
  await page.click(`${thread(conversation)} button[type=submit]`);
}

const tickOf = (r: Locator) => r.getAttribute("data-tick");

/** A full-page screenshot in test-results/. */
async function keep(name: string): Promise<void> {
  mkdirSync(results, { recursive: true });
  const path = join(results, name);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** Checks that `r` keeps `tick` for a while (what "held" means: no event changes it). */
async function staysAt(r: Locator, tick: string, ms = 1500): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    expect(await tickOf(r)).toBe(tick);
    await page.waitForTimeout(100);
  }
}

const offline = (who: string) => page.locator(`#${who} input[name=offline]`);

it("opens against the default server without ?server=", async () => {
  await page.goto(siteUrl());
  expect(await page.locator("#server").textContent()).toBe("Server: http://127.0.0.1:50051");
});

it("holds a message at ✓ while Bob's device is offline, then ✓✓ when it is back, and blue ✓✓ once read", async () => {
  await page.goto(`${siteUrl()}?server=${encodeURIComponent(server.baseUrl)}`);
  await expect.poll(() => page.locator("#sender .status").getAttribute("data-status"), { timeout: 15_000 }).toBe("live");

  await offline("bob").check();
  await send("Bob", "Hello Bob");
  const hello = row("Bob", "Hello Bob");
  await expect.poll(() => tickOf(hello), { timeout: 10_000 }).toBe("sent");
  await expect.poll(() => page.locator("#bob li", { hasText: "Hello Bob" }).count()).toBe(1); // Bob's device has it
  await staysAt(hello, "sent");
  expect(await hello.locator(".tick path").count()).toBe(1);
  expect(await page.locator("#bob .device").textContent()).toBe("Offline: holding 1 delivery receipt");
  await keep("tick-sent.png");

  await offline("bob").uncheck();
  await expect.poll(() => tickOf(hello), { timeout: 10_000 }).toBe("delivered");
  expect(await hello.locator(".tick path").count()).toBe(2);
  expect(await page.locator("#bob li", { hasText: "Hello Bob" }).getAttribute("data-read")).toBe("false");
  await keep("tick-delivered.png");

  await page.click("#bob button.primary");
  await expect.poll(() => tickOf(hello), { timeout: 10_000 }).toBe("read");
  const blue = await hello.locator(".tick").evaluate((e) => getComputedStyle(e).color);
  expect(blue).toBe("rgb(52, 183, 241)");
  expect(await page.locator("#bob li", { hasText: "Hello Bob" }).getAttribute("data-read")).toBe("true");
  await keep("tick-read.png");
  expect(pageErrors).toEqual([]);
});

it("counts 2 of 3 read in a group; an offline device's read reaches the sender when it is back", async () => {
  await offline("dave").check();
  await send("Team", "Lunch at noon?");
  const lunch = row("Team", "Lunch at noon?");
  await expect.poll(() => lunch.locator(".count").textContent(), { timeout: 10_000 }).toBe("0 of 3 read");
  await page.click("#bob button.primary");
  await page.click("#carol button.primary");
  await expect.poll(() => lunch.locator(".count").textContent(), { timeout: 10_000 }).toBe("2 of 3 read");
  await staysAt(lunch, "sent"); // Dave's device has not acknowledged it

  // Dave reads while offline: his pane shows it read, Alice still sees two of three.
  await page.click("#dave button.primary");
  expect(await page.locator("#dave li", { hasText: "Lunch" }).getAttribute("data-read")).toBe("true");
  expect(await page.locator("#dave .device").textContent()).toBe(
    "Offline: holding 1 delivery receipt and your read position",
  );
  await staysAt(lunch, "sent", 700);
  expect(await lunch.locator(".count").textContent()).toBe("2 of 3 read");

  // Back online: delivered, then read.
  await offline("dave").uncheck();
  await expect.poll(() => tickOf(lunch), { timeout: 10_000 }).toBe("read");
  expect(await lunch.locator(".count").textContent()).toBe("3 of 3 read");
  await keep("group-read.png");

  // Carol has not read the next one: the server's unread count says so.
  await send("Team", "Bring umbrellas");
  await expect.poll(() => tickOf(row("Team", "Bring umbrellas")), { timeout: 10_000 }).toBe("delivered");
  await expect.poll(() => page.locator("#carol .unread").textContent(), { timeout: 10_000 }).toBe("1 unread");
  expect(pageErrors).toEqual([]);
});

it("a send while receiptd is down retries, then says it failed; after a restart errors clear and Retry sends it", async () => {
  const { port, dataDir } = server;
  await server.stop();
  await expect
    .poll(() => page.locator("#sender .status").getAttribute("data-status"), { timeout: 15_000 })
    .toBe("reconnecting");

  await send("Bob", "Are you there?");
  const there = row("Bob", "Are you there?");
  expect(await tickOf(there)).toBe("pending");
  await expect.poll(() => there.locator(".tick-label").textContent(), { timeout: 5000 }).toMatch(/^retrying \(\d\/4\)…$/);
  await expect.poll(() => tickOf(there), { timeout: 20_000 }).toBe("failed");
  expect(await there.locator(".tick-label").textContent()).toBe("not sent");
  expect(await page.locator("#sender .error").textContent()).toMatch(/^"Are you there\?" was not sent after 4 attempts: \[\w+\] /);
  await keep("send-failed.png");

  server = await startReceiptd({ port, dataDir });
  await expect.poll(() => page.locator("#sender .status").getAttribute("data-status"), { timeout: 15_000 }).toBe("live");
  await expect.poll(() => page.locator("#sender .error").textContent(), { timeout: 5000 }).toBe("");
  await there.locator("button.retry").click();
  await expect.poll(() => tickOf(there), { timeout: 10_000 }).toBe("delivered");
  expect(await there.locator("button.retry").count()).toBe(0);
  expect(pageErrors).toEqual([]);
});
