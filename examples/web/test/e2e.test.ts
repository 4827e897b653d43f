// End to end in a real browser: headless Chromium (Debian's /usr/bin/chromium)
// opens the built page, served by `vite preview`, against a real receiptd.
// Alice sends; the recipients' panes acknowledge delivery; "Mark read" in
// their panes turns Alice's ticks blue, live over gRPC-web. A recipient's
// "Device offline" holds a message at one tick; Alice's replies in a thread
// turn blue only once the others read the thread, and the recipients' badges
// count the thread apart; stopping receiptd makes a send fail visibly, and
// restarting it lets it through. Each tick state is kept as a screenshot in
// test-results/ (gitignored).
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

const conversation = (title: string) => `#sender .conversation[data-conversation="${title}"]`;
/** Alice's row of a message, in the main timeline or in a thread. */
const row = (title: string, text: string) =>
  page.locator(`${conversation(title)} li[data-message-id]`, { hasText: text });
/** A recipient's row of a message. */
const received = (who: string, text: string) => page.locator(`#${who} li[data-message-id]`, { hasText: text });

/** Sends in the conversation's main timeline. */
async function send(title: string, text: string): Promise<void> {
  await page.fill(`${conversation(title)} > form input[name=text]`, text);
  await page.click(`${conversation(title)} > form button[type=submit]`);
}

/** Replies in the thread under `rootId`, opened in Alice's pane. */
async function reply(rootId: string, text: string): Promise<void> {
  const thread = `#sender li.thread[data-thread-root="${rootId}"]`;
  await page.fill(`${thread} input[name=text]`, text);
  await page.click(`${thread} button[type=submit]`);
}

/** The count on a recipient's unread badge (`which` selects it); "" while there is none. */
const badge = async (who: string, which: string) =>
  (await page.locator(`#${who} .badge${which} .count`).allTextContents()).join();

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
  await expect.poll(() => received("bob", "Hello Bob").count()).toBe(1); // Bob's device has it
  await staysAt(hello, "sent");
  expect(await hello.locator(".tick path").count()).toBe(1);
  expect(await page.locator("#bob .device").textContent()).toBe("Offline: holding 1 delivery receipt");
  await keep("tick-sent.png");

  await offline("bob").uncheck();
  await expect.poll(() => tickOf(hello), { timeout: 10_000 }).toBe("delivered");
  expect(await hello.locator(".tick path").count()).toBe(2);
  expect(await received("bob", "Hello Bob").getAttribute("data-read")).toBe("false");
  await keep("tick-delivered.png");

  await page.click("#bob button.mark-read");
  await expect.poll(() => tickOf(hello), { timeout: 10_000 }).toBe("read");
  const blue = await hello.locator(".tick").evaluate((e) => getComputedStyle(e).color);
  expect(blue).toBe("rgb(52, 183, 241)");
  expect(await received("bob", "Hello Bob").getAttribute("data-read")).toBe("true");
  await keep("tick-read.png");
  expect(pageErrors).toEqual([]);
});

it("counts 2 of 3 read in a group; an offline device's read reaches the sender when it is back", async () => {
  await offline("dave").check();
  await send("Team", "Lunch at noon?");
  const lunch = row("Team", "Lunch at noon?");
  await expect.poll(() => lunch.locator(".count").textContent(), { timeout: 10_000 }).toBe("0 of 3 read");
  await page.click("#bob button.mark-read");
  await page.click("#carol button.mark-read");
  await expect.poll(() => lunch.locator(".count").textContent(), { timeout: 10_000 }).toBe("2 of 3 read");
  await staysAt(lunch, "sent"); // Dave's device has not acknowledged it

  // Dave reads while offline: his pane shows it read, Alice still sees two of three.
  await page.click("#dave button.mark-read");
  expect(await received("dave", "Lunch").getAttribute("data-read")).toBe("true");
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
  await expect.poll(() => badge("carol", `[data-conversation="Team"]`), { timeout: 10_000 }).toBe("1");
  expect(pageErrors).toEqual([]);
});

it("a thread reply turns blue when the others read the thread, not when they read the main timeline", async () => {
  await send("Team", "Friday offsite?");
  const root = row("Team", "Friday offsite?");
  await expect.poll(() => tickOf(root), { timeout: 10_000 }).toBe("delivered");
  const rootId = (await root.getAttribute("data-message-id"))!;
  await root.locator("button.reply").click();
  await reply(rootId, "Bring a jacket");
  await reply(rootId, "Bus leaves at 9");
  const replies = [row("Team", "Bring a jacket"), row("Team", "Bus leaves at 9")];
  for (const r of replies) {
    await expect.poll(() => tickOf(r), { timeout: 10_000 }).toBe("delivered");
  }
  // In the main timeline, above the replies' seqs: reading up to it must still leave them unread.
  await send("Team", "Meet at the station");
  const after = row("Team", "Meet at the station");
  await expect.poll(() => tickOf(after), { timeout: 10_000 }).toBe("delivered");
  // Bob's device lists the replies under their root.
  expect(await page.locator(`#bob li.thread[data-thread-root="${rootId}"] li`).allTextContents()).toEqual([
    expect.stringContaining("Bring a jacket"),
    expect.stringContaining("Bus leaves at 9"),
  ]);

  // The conversation's badge counts the main timeline ("Bring umbrellas", unread since the
  // last test, the root and "Meet at the station") and the thread; the thread's, its replies.
  const team = `[data-conversation="Team"]`;
  const thread = `[data-thread-root="${rootId}"]`;
  for (const who of ["bob", "carol", "dave"]) {
    await expect.poll(() => badge(who, team), { timeout: 10_000 }).toBe("5");
    expect(await badge(who, thread)).toBe("2");
  }
  expect(await page.locator(`#bob .badge${team}`).getAttribute("title")).toBe("3 in the main timeline, 2 in threads");
  expect(await page.locator(`#bob .badge${thread}`).textContent()).toBe("↳ Friday offsite? 2");

  // Everyone reads the main timeline only: the root and the message after the replies turn
  // blue, the replies stay at two grey ticks, read by no one, and only the thread is unread.
  for (const who of ["bob", "carol", "dave"]) {
    await page.click(`#${who} button.mark-read`);
  }
  await expect.poll(() => tickOf(after), { timeout: 10_000 }).toBe("read");
  await expect.poll(() => tickOf(root), { timeout: 10_000 }).toBe("read");
  await staysAt(replies[0]!, "delivered");
  for (const r of replies) {
    expect(await tickOf(r)).toBe("delivered");
    expect(await r.locator(".count").textContent()).toBe("0 of 3 read");
  }
  expect(await received("bob", "Bring a jacket").getAttribute("data-read")).toBe("false");
  expect(await received("bob", "Meet at the station").getAttribute("data-read")).toBe("true");
  await expect.poll(() => badge("bob", team), { timeout: 10_000 }).toBe("2");
  expect(await badge("bob", thread)).toBe("2");
  await keep("thread-main-read.png");

  // Bob reads the thread: one of three read it, and his badges are gone; Carol's thread is still unread.
  await page.click(`#bob li.thread[data-thread-root="${rootId}"] button.read-thread`);
  for (const r of replies) {
    await expect.poll(() => r.locator(".count").textContent(), { timeout: 10_000 }).toBe("1 of 3 read");
    expect(await tickOf(r)).toBe("delivered");
  }
  await expect.poll(() => page.locator("#bob .badge").count(), { timeout: 10_000 }).toBe(0);
  expect(await received("bob", "Bus leaves at 9").getAttribute("data-read")).toBe("true");
  expect(await badge("carol", thread)).toBe("2");

  // Carol and Dave read it too: blue.
  await page.click(`#carol li.thread[data-thread-root="${rootId}"] button.read-thread`);
  await page.click(`#dave li.thread[data-thread-root="${rootId}"] button.read-thread`);
  for (const r of replies) {
    await expect.poll(() => tickOf(r), { timeout: 10_000 }).toBe("read");
    expect(await r.locator(".count").textContent()).toBe("3 of 3 read");
    expect(await r.locator(".tick").evaluate((e) => getComputedStyle(e).color)).toBe("rgb(52, 183, 241)");
  }
  await expect.poll(() => page.locator("#carol .badge, #dave .badge").count(), { timeout: 10_000 }).toBe(0);
  await keep("thread-read.png");
  // A read marked in the wrong timeline would be reported in the pane (INVALID_ARGUMENT).
  expect((await page.locator(".pane .error").allTextContents()).join("")).toBe("");
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
