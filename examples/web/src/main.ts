// A chat page showing live read receipts through @receipts/sdk over gRPC-web.
//
// Everyone here is simulated in one page against a receiptd in --dev-mode
// (which trusts the x-receipts-user header, on loopback only): Alice sends,
// Bob, Carol and Dave receive. The page also plays the messaging backend,
// which registers each sent message and hands it to the recipients' panes;
// in a real app that is your server, and each pane is someone's device.
import {
  createBackendClient,
  createReceiptState,
  createReceiptsClient,
  ReceiptsError,
  type DeliveredBatcher,
  type MessageReceipts,
  type ReadMarker,
  type ReceiptsClient,
  type Tick,
} from "@receipts/sdk";
import { uuidv7 } from "./uuid";

const baseUrl =
  new URLSearchParams(location.search).get("server") ??
  import.meta.env.VITE_RECEIPTS_URL ??
  "http://127.0.0.1:50051";

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
}

const person = (name: string): Person => {
  const id = crypto.randomUUID();
  return { name, id, client: createReceiptsClient({ baseUrl, devUserId: id }) };
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

/** Alice's pane: one thread per conversation, with her messages' ticks, live. */
class SenderPane {
  readonly root = el("section", { class: "pane", id: "sender" });
  private readonly status = el("span", { class: "status", "data-status": "connecting" }, "connecting…");
  private readonly error = el("p", { class: "error" });
  private readonly lists = new Map<string, HTMLOListElement>();
  private readonly rows = new Map<string, HTMLLIElement>();
  private readonly groups = new Set<string>();
  /** Alice's receipts as the server last told them; the rows repaint from it. */
  private readonly state = createReceiptState();

  constructor(
    private readonly me: Person,
    conversations: Conversation[],
    onSend: (c: Conversation, text: string) => Promise<void>,
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
      const input = el("input", { name: "text", placeholder: `Message ${c.title}`, autocomplete: "off" });
      const form = el("form", {}, input, el("button", { class: "primary", type: "submit" }, "Send"));
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const text = input.value.trim();
        if (text !== "") {
          input.value = "";
          onSend(c, text).catch((e: unknown) => this.fail(e));
        }
      });
      const others = c.members.filter((m) => m !== me).map((m) => m.name);
      this.root.append(
        el(
          "div",
          { class: "thread", "data-conversation": c.title },
          el("h3", {}, group ? `${c.title} (${others.join(", ")})` : `Direct with ${c.title}`),
          list,
          form,
        ),
      );
    }
    this.root.append(this.error);
  }

  /** Shows a message being sent (no tick until the backend registered it). */
  add(c: Conversation, m: Sent): void {
    const row = el("li", { "data-message-id": m.id, "data-tick": "pending" }, m.text);
    row.append(el("span", { class: "meta" }, el("span", { class: "tick" }, "🕓")));
    this.rows.set(m.id, row);
    this.lists.get(c.id)!.append(row);
  }

  /**
   * The backend registered it: one tick, unless an event already said more;
   * from now on the receipt state holds it (with its seq, which ranges need).
   */
  async registered(c: Conversation, m: Sent): Promise<void> {
    const row = this.rows.get(m.id);
    if (row?.dataset["tick"] === "pending") {
      this.paintTick(row, "sent");
    }
    try {
      this.state.track(await this.me.client.getReceipts(c.id, [m.id]));
    } catch (e) {
      this.fail(e);
    }
  }

  /** Paints a message's state (from the receipt state). */
  apply(state: MessageReceipts): void {
    const row = this.rows.get(state.messageId);
    if (row === undefined) {
      return; // sent before this page was opened
    }
    this.paintTick(row, state.tick);
    if (this.groups.has(state.conversationId)) {
      const meta = row.querySelector(".meta")!;
      const count =
        meta.querySelector<HTMLElement>(".count") ?? meta.insertBefore(el("span", { class: "count" }), meta.firstChild);
      count.textContent = `${state.readCount} of ${state.recipientsTotal} read`;
      row.title = `${state.deliveredCount} of ${state.recipientsTotal} delivered`;
    }
  }

  private paintTick(row: HTMLLIElement, tick: Tick): void {
    const span = row.querySelector<HTMLElement>(".tick")!;
    row.dataset["tick"] = tick;
    span.textContent = tick === "sent" ? "✓" : "✓✓";
    span.classList.toggle("tick-read", tick === "read");
  }

  setStatus(status: "live" | "reconnecting" | "connecting", text: string): void {
    this.status.dataset["status"] = status;
    this.status.textContent = text;
  }

  fail(e: unknown): void {
    this.error.textContent = describe(e);
  }

  /**
   * Follows the sender's receipts for as long as the page lives: every event
   * goes to the receipt state (ranges, resets and all), which repaints the
   * rows that changed; the stream's own status is shown here.
   */
  async follow(): Promise<void> {
    try {
      for await (const event of this.me.client.subscribe({ acceptRanges: true })) {
        this.state.apply(event);
        switch (event.type) {
          case "live":
            this.setStatus("live", "live");
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

/** A recipient's device: shows what it received, acknowledges it, marks it read. */
class RecipientPane {
  readonly root: HTMLElement;
  private readonly list = el("ol", { class: "messages incoming" });
  private readonly unread = el("span", { class: "unread" });
  private readonly error = el("p", { class: "error" });
  private readonly delivered: DeliveredBatcher;
  private readonly reads: ReadMarker;
  /** The newest message received per conversation. */
  private readonly newest = new Map<string, Sent>();

  constructor(private readonly me: Person) {
    this.delivered = me.client.deliveredBatcher({ maxDelayMs: 100, onError: (e) => this.fail(e) });
    this.reads = me.client.readMarker({ onError: (e) => this.fail(e) });
    const read = el("button", { class: "primary", type: "button" }, "Mark read");
    read.addEventListener("click", () => this.markRead());
    this.root = el(
      "section",
      { class: "pane", id: me.name.toLowerCase() },
      el("h2", {}, me.name, this.unread),
      this.list,
      read,
      this.error,
    );
    this.root.dataset["user"] = me.name;
  }

  /** The messaging backend hands this device a message: show it and acknowledge it. */
  receive(c: Conversation, from: Person, m: Sent): void {
    const where = c.members.length > 2 ? `${c.title} · ${from.name}` : from.name;
    this.list.append(el("li", {}, el("span", { class: "conv" }, where), m.text));
    const last = this.newest.get(c.id);
    if (last === undefined || last.seq < m.seq) {
      this.newest.set(c.id, m);
    }
    this.delivered.add(m.id);
    void this.refreshUnread();
  }

  /** The user has seen everything on screen: read up to the newest message of each conversation. */
  private markRead(): void {
    for (const [conversationId, m] of this.newest) {
      this.reads.mark(conversationId, m.id, m.seq);
    }
  }

  private async refreshUnread(): Promise<void> {
    try {
      const counts = await this.me.client.getUnreadCounts([...this.newest.keys()]);
      this.showUnread(counts.reduce((n, c) => n + c.unreadCount, 0));
    } catch (e) {
      this.fail(e);
    }
  }

  private showUnread(n: number): void {
    this.unread.textContent = n === 0 ? "" : `${n} unread`;
  }

  /** Keeps the unread badge in step with this user's read position, from any device. */
  async follow(): Promise<void> {
    try {
      for await (const event of this.me.client.subscribe()) {
        if (event.type === "watermark") {
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
  const app = document.querySelector<HTMLElement>("#app")!;
  const [alice, bob, carol, dave] = ["Alice", "Bob", "Carol", "Dave"].map(person) as [Person, Person, Person, Person];
  const backend = createBackendClient({ baseUrl, devUserId: crypto.randomUUID() });
  const conversations: Conversation[] = [
    { id: crypto.randomUUID(), title: "Bob", members: [alice, bob], lastSeq: 0 },
    { id: crypto.randomUUID(), title: "Team", members: [alice, bob, carol, dave], lastSeq: 0 },
  ];
  await Promise.all(conversations.map((c) => backend.createConversation(c.id, c.members.map((m) => m.id))));

  const recipients = new Map([bob, carol, dave].map((p) => [p.id, new RecipientPane(p)]));
  const sender = new SenderPane(alice, conversations, async (c, text) => {
    const m: Sent = { id: uuidv7(), seq: ++c.lastSeq, text };
    sender.add(c, m);
    await backend.registerMessages([{ messageId: m.id, conversationId: c.id, seq: m.seq, senderId: alice.id }]);
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
      ? `\nIs receiptd running there in dev mode? cargo run --bin receiptd -- --dev-mode`
      : "";
  document.querySelector("#app")!.replaceChildren(
    el("p", { class: "error", id: "boot" }, `Cannot start the demo against ${baseUrl}: ${describe(e)}${hint}`),
  );
});
