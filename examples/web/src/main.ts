// A chat page showing live read receipts through @receipts/sdk over gRPC-web.
//
// Everyone here is simulated in one page against a receiptd in --dev-mode
// (which trusts the x-receipts-user header, on loopback only): Alice sends,
// Bob, Carol and Dave receive. The page also plays the messaging backend,
// which registers each sent message and hands it to the recipients' panes;
// in a real app that is your server, and each pane is someone's device.
//
// In the group, Alice can reply in a thread under one of her messages. A
// thread is a timeline of its own: "Mark read" reads the main timelines, a
// thread's "Read thread" reads that thread alone, and the unread badges count
// both (the conversation's) and each thread apart.
import {
  createBackendClient,
  createReceiptState,
  createReceiptsClient,
  ReceiptsError,
  type ConversationUnread,
  type DeliveredBatcher,
  type MessageReceipts,
  type MessageRef,
  type ReadMarker,
  type ReceiptsClient,
  type ReconnectOptions,
} from "@receipts/sdk";
import { LABELS, tickIcon, type RowState } from "./ticks";
import { uuidv7 } from "./uuid";

/** Where `receiptd --dev-mode` listens when given no `--listen` (gRPC-web is served on that port). */
const DEFAULT_SERVER = "http://127.0.0.1:50051";

// An empty `?server=` or VITE_RECEIPTS_URL means "not set".
const baseUrl =
  new URLSearchParams(location.search).get("server") || import.meta.env.VITE_RECEIPTS_URL || DEFAULT_SERVER;

/** Streams come back within 2 s of the server: the SDK's default waits up to 15 s between attempts. */
const reconnect: ReconnectOptions = { maxDelayMs: 2000 };

/** A send that cannot reach the server is tried this many times, waiting 0.5 s, 1 s, 2 s between, then shown as failed. */
const SEND_ATTEMPTS = 4;
const SEND_TIMEOUT_MS = 5000;

interface Person {
  name: string;
  id: string;
  client: ReceiptsClient;
}

interface Conversation {
  id: string;
  title: string;
  members: Person[];
  /** The last seq the backend assigned (it is the ordering authority). */
  lastSeq: number;
}

interface Sent {
  id: string;
  seq: number;
  text: string;
  /** The thread it replies in (its root message's id); `null` in the main timeline. */
  threadRootMessageId: string | null;
}

const person = (name: string): Person => {
  const id = crypto.randomUUID();
  return { name, id, client: createReceiptsClient({ baseUrl, devUserId: id, timeoutMs: SEND_TIMEOUT_MS }) };
};

/** Creates an element with attributes and children. */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

const describe = (e: unknown) => (e instanceof Error ? e.message : String(e));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `call`, retrying a failure that retrying may fix (server unavailable,
 * connection refused) up to SEND_ATTEMPTS times in all, with a doubling
 * delay; `onRetry` hears each retry. Safe because every Receipts write is
 * idempotent. Other failures, and the last one, reject.
 */
async function withRetries<T>(call: () => Promise<T>, onRetry: (attempt: number, e: ReceiptsError) => void): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (e) {
      const error = ReceiptsError.from(e);
      if (!error.retryable || attempt === SEND_ATTEMPTS) throw error;
      onRetry(attempt + 1, error);
      await sleep(500 * 2 ** (attempt - 1));
    }
  }
}

/**
 * Alice's pane: one section per conversation, with her messages' ticks, live.
 * In the group, "Reply" under one of her messages opens its thread: replies
 * there get ticks like any message, from the same receipt state.
 */
class SenderPane {
  readonly root = el("section", { class: "pane", id: "sender" });
  private readonly status = el("span", { class: "status", "data-status": "connecting" }, "connecting…");
  private readonly error = el("p", { class: "error", role: "alert" });
  /** Where messages are listed: per conversation (by its id) and per thread (by its root's id). */
  private readonly lists = new Map<string, HTMLOListElement>();
  private readonly rows = new Map<string, HTMLLIElement>();
  private readonly groups = new Set<string>();
  /** Alice's receipts as the server last told them; the rows repaint from it. */
  private readonly state = createReceiptState();

  constructor(
    private readonly me: Person,
    conversations: Conversation[],
    private readonly onSend: (c: Conversation, m: Sent) => Promise<void>,
  ) {
    this.root.append(el("h2", {}, `${me.name} (sender)`, this.status));
    this.state.onChange((changed) => {
      for (const id of changed) {
        const m = this.state.message(id);
        if (m !== undefined) this.apply(m);
      }
    });
    for (const c of conversations) {
      const group = c.members.length > 2;
      if (group) {
        this.groups.add(c.id);
      }
      const list = el("ol", { class: "messages outgoing" });
      this.lists.set(c.id, list);
      const others = c.members.filter((m) => m !== me).map((m) => m.name);
      this.root.append(
        el(
          "div",
          { class: "conversation", "data-conversation": c.title },
          el("h3", {}, group ? `${c.title} (${others.join(", ")})` : `Direct with ${c.title}`),
          list,
          this.composer(`Message ${c.title}`, (text) => this.post(c, text, null)),
        ),
      );
    }
    this.root.append(this.error);
  }

  /** A text field with a Send button; `onText` gets what was typed. */
  private composer(placeholder: string, onText: (text: string) => void): HTMLFormElement {
    const input = el("input", { name: "text", placeholder, autocomplete: "off" });
    const form = el("form", {}, input, el("button", { class: "primary", type: "submit" }, "Send"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      if (text !== "") {
        input.value = "";
        onText(text);
      }
    });
    return form;
  }

  /** A new message in the conversation's main timeline, or in the thread under `threadRootMessageId`. */
  private post(c: Conversation, text: string, threadRootMessageId: string | null): void {
    // Seqs are the conversation's, whichever timeline the message is in.
    const m: Sent = { id: uuidv7(), seq: ++c.lastSeq, text, threadRootMessageId };
    this.add(c, m);
    void this.send(c, m);
  }

  /** Shows a message being sent: a clock until the backend registered it. */
  private add(c: Conversation, m: Sent): void {
    const row = el("li", { "data-message-id": m.id }, el("span", { class: "text" }, m.text));
    row.append(el("span", { class: "meta" }, el("span", { class: "tick" }), el("span", { class: "tick-label" })));
    this.rows.set(m.id, row);
    this.lists.get(m.threadRootMessageId ?? c.id)!.append(row);
    this.paint(row, "pending");
  }

  /**
   * Opens the thread under `root` (a registered message of the main
   * timeline): its replies, below the root, and a field to reply.
   */
  private openThread(c: Conversation, root: Sent): void {
    let list = this.lists.get(root.id);
    if (list === undefined) {
      list = el("ol", { class: "messages replies" });
      this.lists.set(root.id, list);
      const composer = this.composer("Reply in thread", (text) => this.post(c, text, root.id));
      this.rows.get(root.id)!.after(el("li", { class: "thread", "data-thread-root": root.id }, list, composer));
    }
    list.parentElement!.querySelector("input")!.focus();
  }

  /**
   * Sends (registers, then hands to the recipients) with bounded retries
   * while the server is unreachable; after the last attempt the row says it
   * was not sent and offers to try again (same id and seq: idempotent).
   */
  private async send(c: Conversation, m: Sent): Promise<void> {
    const row = this.rows.get(m.id)!;
    row.querySelector(".retry")?.remove();
    this.paint(row, "pending");
    try {
      await withRetries(
        () => this.onSend(c, m),
        (attempt, e) => {
          this.paint(row, "pending", `retrying (${attempt}/${SEND_ATTEMPTS})…`);
          this.fail(`Sending "${m.text}": ${describe(e)}; trying again (${attempt}/${SEND_ATTEMPTS})…`);
        },
      );
    } catch (e) {
      this.paint(row, "failed");
      const retry = el("button", { class: "retry", type: "button" }, "Retry");
      retry.addEventListener("click", () => void this.send(c, m));
      row.querySelector(".meta")!.append(retry);
      const tries = e instanceof ReceiptsError && e.retryable ? ` after ${SEND_ATTEMPTS} attempts` : "";
      this.fail(`"${m.text}" was not sent${tries}: ${describe(e)}`);
    }
  }

  /**
   * The backend registered it: one tick, unless an event already said more;
   * from now on the receipt state holds it (with its seq, which ranges need).
   * A group message of the main timeline can now have a thread (a reply's
   * root must be registered first).
   */
  async registered(c: Conversation, m: Sent): Promise<void> {
    const row = this.rows.get(m.id)!;
    if (row.dataset["tick"] === "pending" || row.dataset["tick"] === "failed") {
      this.paint(row, "sent");
    }
    if (this.groups.has(c.id) && m.threadRootMessageId === null && row.querySelector(".reply") === null) {
      const reply = el("button", { class: "reply", type: "button", title: "Reply in thread" }, "Reply");
      reply.addEventListener("click", () => this.openThread(c, m));
      row.querySelector(".meta")!.prepend(reply);
    }
    this.state.track(await this.me.client.getReceipts(c.id, [m.id]));
  }

  /** Paints a message's state (from the receipt state), a thread's reply like any other. */
  private apply(state: MessageReceipts): void {
    const row = this.rows.get(state.messageId);
    if (row === undefined) {
      return; // sent before this page was opened
    }
    this.paint(row, state.tick);
    if (this.groups.has(state.conversationId)) {
      const meta = row.querySelector(".meta")!;
      const count =
        meta.querySelector<HTMLElement>(".count") ??
        meta.insertBefore(el("span", { class: "count" }), meta.querySelector(".tick"));
      count.textContent = `${state.readCount} of ${state.recipientsTotal} read`;
      row.title = `${state.deliveredCount} of ${state.recipientsTotal} delivered`;
    }
  }

  private paint(row: HTMLLIElement, state: RowState, label = LABELS[state]): void {
    row.dataset["tick"] = state;
    const tick = row.querySelector<HTMLElement>(".tick")!;
    tick.replaceChildren(tickIcon(state));
    tick.setAttribute("aria-label", LABELS[state]);
    row.querySelector(".tick-label")!.textContent = label;
  }

  private setStatus(status: "live" | "reconnecting" | "connecting", text: string): void {
    this.status.dataset["status"] = status;
    this.status.textContent = text;
  }

  fail(e: unknown): void {
    this.error.textContent = describe(e);
  }

  /**
   * Follows the sender's receipts for as long as the page lives: every event
   * goes to the receipt state (ranges, resets and all), which repaints the
   * rows that changed; the stream's own status is shown here, and an error
   * shown earlier goes once the stream is live again.
   */
  async follow(): Promise<void> {
    try {
      for await (const event of this.me.client.subscribe({ acceptRanges: true, reconnect })) {
        this.state.apply(event);
        switch (event.type) {
          case "live":
            this.setStatus("live", "live");
            this.error.textContent = "";
            break;
          case "reconnecting":
            this.setStatus("reconnecting", `reconnecting (attempt ${event.attempt})…`);
            break;
          default:
            break;
        }
      }
    } catch (e) {
      this.setStatus("connecting", "disconnected");
      this.fail(e);
    }
  }
}

/** A key for a timeline: a conversation's main timeline, or one of its threads. */
const timelineKey = (conversationId: string, threadRootMessageId: string | null) =>
  JSON.stringify([conversationId, threadRootMessageId]);

/**
 * One timeline a recipient reads: a conversation's main timeline, or one
 * thread in it. Each has its own read position, so the page keeps them apart
 * (seqs are the conversation's: a thread's position says nothing of the main
 * timeline's, nor the other way round).
 */
interface Timeline {
  conversationId: string;
  /** The thread's root message; `null` for the main timeline. */
  threadRootMessageId: string | null;
  /** The newest message received in it. */
  newest: Sent;
  /** The newest message its user has read here (ahead of the server while offline). */
  read: Sent | undefined;
}

/**
 * A recipient's device: shows what it received (a thread's replies under
 * their root) and what its user has read, acknowledges delivery, and marks
 * read: "Mark read" in the main timelines, "Read thread" in one thread. With
 * "Device offline" ticked its receipts client sends nothing (the sender's
 * message stays at one tick); unticking sends what was held: delivered
 * first, then the read positions.
 */
class RecipientPane {
  readonly root: HTMLElement;
  private readonly list = el("ol", { class: "messages incoming" });
  private readonly badges = el("p", { class: "badges" });
  private readonly status = el("p", { class: "device" });
  private readonly error = el("p", { class: "error", role: "alert" });
  private readonly delivered: DeliveredBatcher;
  private readonly reads: ReadMarker;
  /** This user's read positions as the server confirmed them (from any device), via its stream. */
  private readonly state = createReceiptState();
  /** What each conversation's badge is called: the group's title, or the other person in a direct chat. */
  private readonly titles = new Map<string, string>();
  /** By `timelineKey`. */
  private readonly timelines = new Map<string, Timeline>();
  /** Every message received, by id, with its row. */
  private readonly received = new Map<string, { conversationId: string; message: Sent; row: HTMLLIElement }>();
  /** Each thread's replies, by root message id. */
  private readonly threads = new Map<string, HTMLOListElement>();
  /** Received while offline: acknowledged when back online. */
  private heldDeliveries: MessageRef[] = [];
  private offline = false;
  /** Counts unread-count requests, so that only the latest answer is shown. */
  private unreadAsked = 0;

  constructor(private readonly me: Person) {
    this.delivered = me.client.deliveredBatcher({ maxDelayMs: 100, onError: (e) => this.fail(e) });
    this.reads = me.client.readMarker({ intervalMs: 250, onError: (e) => this.fail(e) });
    const read = el("button", { class: "primary mark-read", type: "button" }, "Mark read");
    read.addEventListener("click", () => this.markRead((t) => t.threadRootMessageId === null));
    const toggle = el("input", { type: "checkbox", name: "offline" });
    toggle.addEventListener("change", () => void this.setOffline(toggle.checked));
    this.root = el(
      "section",
      { class: "pane", id: me.name.toLowerCase(), "data-device": "online" },
      el("h2", {}, me.name),
      this.badges,
      el("label", { class: "offline-toggle" }, toggle, "Device offline"),
      this.status,
      this.list,
      read,
      this.error,
    );
    this.root.dataset["user"] = me.name;
    this.state.onChange(() => this.paintReads());
    this.showDevice();
  }

  /** The messaging backend hands this device a message: show it, and acknowledge it unless offline. */
  receive(c: Conversation, from: Person, m: Sent): void {
    const group = c.members.length > 2;
    this.titles.set(c.id, group ? c.title : from.name);
    const row = el(
      "li",
      { "data-message-id": m.id },
      el("span", { class: "conv" }, group && m.threadRootMessageId === null ? `${c.title} · ${from.name}` : from.name),
      el("span", { class: "text" }, m.text),
      el("span", { class: "read-state" }),
    );
    this.received.set(m.id, { conversationId: c.id, message: m, row });
    (m.threadRootMessageId === null ? this.list : this.replies(m.threadRootMessageId)).append(row);
    const key = timelineKey(c.id, m.threadRootMessageId);
    const timeline = this.timelines.get(key);
    if (timeline === undefined) {
      const { threadRootMessageId } = m;
      this.timelines.set(key, { conversationId: c.id, threadRootMessageId, newest: m, read: undefined });
    } else if (timeline.newest.seq < m.seq) {
      timeline.newest = m;
    }
    this.paintReads();
    // Named with its conversation: the server finds it there, with no lookup by id alone.
    const delivered = { conversationId: c.id, messageId: m.id };
    if (this.offline) {
      this.heldDeliveries.push(delivered);
      this.showDevice();
      return;
    }
    this.delivered.add(delivered);
    void this.refreshUnread();
  }

  /** The list of a thread's replies, below its root, with the thread's own "Read thread". */
  private replies(rootId: string): HTMLOListElement {
    let list = this.threads.get(rootId);
    if (list === undefined) {
      list = el("ol", { class: "messages replies" });
      this.threads.set(rootId, list);
      const read = el("button", { class: "read-thread", type: "button" }, "Read thread");
      read.addEventListener("click", () => this.markRead((t) => t.threadRootMessageId === rootId));
      const thread = el("li", { class: "thread", "data-thread-root": rootId }, list, read);
      const root = this.received.get(rootId)?.row;
      if (root !== undefined) root.after(thread);
      else this.list.append(thread); // a root from before this device joined
    }
    return list;
  }

  /** The user has seen the timelines `which` keeps: read up to the newest message of each. */
  private markRead(which: (t: Timeline) => boolean): void {
    for (const t of this.timelines.values()) {
      if (!which(t)) continue;
      t.read = t.newest;
      if (!this.offline) this.sendRead(t);
    }
    this.paintReads();
    this.showDevice();
  }

  /** Tells the server where the user has read up to in `t` (the marker sends one call per timeline and interval). */
  private sendRead(t: Timeline): void {
    if (t.read !== undefined) {
      this.reads.mark(t.conversationId, t.read.id, t.read.seq, { threadRootMessageId: t.threadRootMessageId });
    }
  }

  private async setOffline(offline: boolean): Promise<void> {
    this.offline = offline;
    this.root.dataset["device"] = offline ? "offline" : "online";
    this.showDevice();
    if (offline) {
      return;
    }
    // Back online: what it received is delivered, then what its user read is read.
    try {
      const held = this.heldDeliveries.splice(0);
      if (held.length > 0) {
        this.delivered.add(...held);
        await this.delivered.flush();
      }
      for (const t of this.timelines.values()) {
        this.sendRead(t); // the marker skips what the server already confirmed
      }
      await this.reads.flush();
      await this.refreshUnread();
    } catch (e) {
      this.fail(e);
    } finally {
      this.showDevice();
    }
  }

  /** The server's read position in `t`, as this user's stream last told it. */
  private confirmedSeq(t: Timeline): number {
    return this.state.watermark(t.conversationId, t.threadRootMessageId)?.readUpToSeq ?? 0;
  }

  /** Marks each row read or unread: up to the user's position in its timeline or the server's, whichever is further. */
  private paintReads(): void {
    for (const { conversationId, message, row } of this.received.values()) {
      const t = this.timelines.get(timelineKey(conversationId, message.threadRootMessageId))!;
      const read = message.seq <= Math.max(t.read?.seq ?? 0, this.confirmedSeq(t));
      row.dataset["read"] = String(read);
      row.querySelector(".read-state")!.textContent = read ? "read" : "new";
    }
  }

  /** Says whether the device is online, and what it holds back while offline. */
  private showDevice(): void {
    if (!this.offline) {
      this.status.textContent = "Online: acknowledges what arrives, marks what you read";
      return;
    }
    const unsentReads = [...this.timelines.values()].some((t) => (t.read?.seq ?? 0) > this.confirmedSeq(t));
    const held = [
      `${this.heldDeliveries.length} delivery receipt${this.heldDeliveries.length === 1 ? "" : "s"}`,
      ...(unsentReads ? ["your read position"] : []),
    ];
    this.status.textContent = `Offline: holding ${held.join(" and ")}`;
  }

  private async refreshUnread(): Promise<void> {
    const asked = ++this.unreadAsked;
    try {
      const counts = await this.me.client.getUnreadCounts([...this.titles.keys()]);
      if (asked === this.unreadAsked) {
        this.showUnread(counts); // an earlier request may answer after a later one: show the latest
      }
    } catch (e) {
      this.fail(e);
    }
  }

  /**
   * A badge per conversation with unread messages (its main timeline plus
   * every thread), each followed by a badge per thread with unread replies.
   */
  private showUnread(counts: ConversationUnread[]): void {
    const badge = (label: string, count: number, attrs: Record<string, string>) =>
      el("span", { class: "badge", ...attrs }, label, " ", el("b", { class: "count" }, String(count)));
    this.badges.replaceChildren(
      ...counts
        .filter((c) => c.unreadCount > 0)
        .flatMap((c) => {
          const title = this.titles.get(c.conversationId) ?? "";
          return [
            badge(title, c.unreadCount, {
              "data-conversation": title,
              title: `${c.mainUnreadCount} in the main timeline, ${c.unreadCount - c.mainUnreadCount} in threads`,
            }),
            ...c.threads.map((t) => {
              const root = this.received.get(t.threadRootMessageId)?.message.text ?? "a thread";
              return badge(`↳ ${root}`, t.unreadCount, {
                class: "badge thread",
                "data-thread-root": t.threadRootMessageId,
                title: `Thread: ${root}`,
              });
            }),
          ];
        }),
    );
  }

  /**
   * Follows this user's stream: its read positions (from any device, in any
   * timeline) go to the receipt state, which repaints the rows, and the
   * unread badges follow; an error shown earlier goes once the stream is
   * live again.
   */
  async follow(): Promise<void> {
    try {
      for await (const event of this.me.client.subscribe({ reconnect })) {
        this.state.apply(event);
        if (event.type === "live") {
          this.error.textContent = "";
        } else if (event.type === "watermark" && !this.offline) {
          await this.refreshUnread();
        }
      }
    } catch (e) {
      this.fail(e);
    }
  }

  fail(e: unknown): void {
    this.error.textContent = describe(e);
  }
}

async function main(): Promise<void> {
  document.querySelector("#server")!.textContent = `Server: ${baseUrl}`;
  document.querySelector("#legend")!.replaceChildren(
    ...(["sent", "delivered", "read"] as const).map((t) =>
      el("span", { class: `legend-item`, "data-tick": t }, el("span", { class: "tick" }, tickIcon(t)), LABELS[t]),
    ),
  );
  const app = document.querySelector<HTMLElement>("#app")!;
  const [alice, bob, carol, dave] = ["Alice", "Bob", "Carol", "Dave"].map(person) as [Person, Person, Person, Person];
  const backend = createBackendClient({ baseUrl, devUserId: crypto.randomUUID(), timeoutMs: SEND_TIMEOUT_MS });
  const conversations: Conversation[] = [
    { id: crypto.randomUUID(), title: "Bob", members: [alice, bob], lastSeq: 0 },
    { id: crypto.randomUUID(), title: "Team", members: [alice, bob, carol, dave], lastSeq: 0 },
  ];
  await Promise.all(conversations.map((c) => backend.createConversation(c.id, c.members.map((m) => m.id))));

  const recipients = new Map([bob, carol, dave].map((p) => [p.id, new RecipientPane(p)]));
  const sender = new SenderPane(alice, conversations, async (c, m) => {
    await backend.registerMessages([
      {
        messageId: m.id,
        conversationId: c.id,
        seq: m.seq,
        senderId: alice.id,
        // A reply names its thread's root (registered before it, in the main timeline).
        threadRootMessageId: m.threadRootMessageId,
      },
    ]);
    // Held by the receipt state before any recipient can acknowledge it.
    await sender.registered(c, m);
    for (const member of c.members) {
      recipients.get(member.id)?.receive(c, alice, m);
    }
  });
  app.replaceChildren(sender.root, ...[...recipients.values()].map((r) => r.root));
  void sender.follow();
  for (const r of recipients.values()) {
    void r.follow();
  }
}

main().catch((e: unknown) => {
  const hint =
    e instanceof ReceiptsError && e.retryable
      ? `\nIs receiptd running there in dev mode? \`cargo run --bin receiptd -- --dev-mode\` serves ${DEFAULT_SERVER}; for another server, open this page with ?server=<its URL>.`
      : "";
  document.querySelector("#app")!.replaceChildren(
    el("p", { class: "error", id: "boot" }, `Cannot start the demo against ${baseUrl}: ${describe(e)}${hint}`),
  );
});
