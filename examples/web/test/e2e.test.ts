// End to end in a real browser: headless Chromium (Debian's /usr/bin/chromium)
// opens the built page, served by `vite preview`, against a real receiptd.
// Alice sends; the recipients' panes acknowledge delivery; "Mark read" in
// their panes turns Alice's ticks blue, live over gRPC-web.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { build, preview, type PreviewServer } from "vite";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startReceiptd, type Receiptd } from "../../../sdk-ts/test/receiptd.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const screenshot = join(root, "test-results", "ticks.png");
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
    if (m.type() === "error") {
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

it("shows ✓, ✓✓ and blue ✓✓ live, and 2 of 3 read in a group", async () => {
  await page.goto(`${siteUrl()}?server=${encodeURIComponent(server.baseUrl)}`);
  await expect.poll(() => page.locator("#sender .status").getAttribute("data-status"), { timeout: 15_000 }).toBe("live");

  // Direct chat with Bob: delivered at once (Bob's device acknowledges), read after "Mark read".
  await send("Bob", "Hello Bob");
  const hello = row("Bob", "Hello Bob");
  await expect.poll(() => hello.getAttribute("data-tick"), { timeout: 10_000 }).toBe("delivered");
  expect(await hello.locator(".tick").textContent()).toBe("✓✓");
  await page.click("#bob button.primary");
  await expect.poll(() => hello.getAttribute("data-tick"), { timeout: 10_000 }).toBe("read");
  const blue = await hello.locator(".tick").evaluate((e) => getComputedStyle(e).color);
  expect(blue).toBe("rgb(52, 183, 241)");

  // The group: Bob and Carol read, Dave does not: 2 of 3, still two grey ticks.
  await send("Team", "Lunch at noon?");
  const lunch = row("Team", "Lunch at noon?");
  await expect.poll(() => lunch.getAttribute("data-tick"), { timeout: 10_000 }).toBe("delivered");
  await page.click("#bob button.primary");
  await page.click("#carol button.primary");
  await expect.poll(() => lunch.locator(".count").textContent(), { timeout: 10_000 }).toBe("2 of 3 read");
  expect(await lunch.getAttribute("data-tick")).toBe("delivered");

  // Dave has not read: his badge, from the server's unread count, says so.
  expect(await page.locator("#dave .unread").textContent()).toBe("1 unread");

  mkdirSync(join(root, "test-results"), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  expect(pageErrors).toEqual([]);
});
