// "Read by" lists a page at a time against a real receiptd: listRecipients
// with page tokens and filters, allRecipients, and getReceipts' first page.
import { describe, expect, it } from "vitest";
import { RecipientFilter as PbRecipientFilter, type ListRecipientsRequest } from "../src/gen/receipts/v1/receipts_pb.js";
import {
  Code,
  allRecipients,
  createReceiptsClient,
  createReceiptsConnection,
  listRecipients,
  type ReceiptsClient,
  type RecipientFilter,
  type RecipientPage,
} from "../src/node.js";
import { mintToken } from "./receiptd.js";
import { rejection } from "./rejection.js";
import { baseUrl, chat, countingTransport, uuid } from "./world.js";

/**
 * `n` new user ids in the server's list order: by their 16 bytes, which for
 * crypto.randomUUID()'s lowercase text is the order of the strings.
 */
const ordered = (n: number): string[] => Array.from({ length: n }, uuid).sort();

/** Every page of a listing, from the first until `nextPageToken` is undefined (at most 100 pages). */
async function pages(
  client: ReceiptsClient,
  conversationId: string,
  messageId: string,
  options: { filter?: RecipientFilter; pageSize?: number; pageToken?: string } = {},
): Promise<RecipientPage[]> {
  const all: RecipientPage[] = [];
  let pageToken = options.pageToken;
  do {
    const page = await client.listRecipients(conversationId, messageId, { ...options, pageToken });
    all.push(page);
    pageToken = page.nextPageToken;
  } while (pageToken !== undefined && all.length < 100);
  expect(pageToken, "the listing ends").toBeUndefined();
  return all;
}

const ids = (ps: RecipientPage[]) => ps.flatMap((p) => p.recipients.map((r) => r.userId));

describe("listRecipients", () => {
  it("pages through a group larger than a page in user-id order, each recipient once", async () => {
    const users = ordered(8);
    const c = await chat(users);
    // The sender in the middle of the order: a member the listing skips.
    const [m] = await c.send(1, 3);
    const recipients = users.filter((_, i) => i !== 3);

    const first = await c.clients[3]!.listRecipients(c.conversationId, m!.id, { pageSize: 2 });
    expect(first.recipients.length).toBeLessThanOrEqual(2);
    expect(first.nextPageToken).toEqual(expect.any(String));

    const all = await pages(c.clients[3]!, c.conversationId, m!.id, { pageSize: 2 });
    expect(all.length).toBeGreaterThanOrEqual(4); // 7 recipients, at most 2 a page
    for (const p of all) expect(p.recipients.length).toBeLessThanOrEqual(2);
    expect(ids(all)).toEqual(recipients);
    expect(all.flatMap((p) => p.recipients)).toEqual(
      recipients.map((userId) => ({ userId, state: "none", deliveredAt: null, readAt: null })),
    );
    // Any member may list, and the default page (50) holds everyone here.
    const whole = await c.clients[0]!.listRecipients(c.conversationId, m!.id);
    expect(whole.nextPageToken).toBeUndefined();
    expect(whole.recipients.map((r) => r.userId)).toEqual(recipients);
  });

  it("filters by state as the caller may see it, a page at a time", async () => {
    const users = ordered(8);
    const c = await chat(users);
    const [m] = await c.send(1, 7); // the sender last: recipients are users[0..6]
    const sender = c.clients[7]!;
    await c.clients[0]!.markDelivered([{ conversationId: c.conversationId, messageId: m!.id }]);
    // users[5] reads with read receipts turned off: delivered to others, read to itself.
    await c.clients[5]!.updatePrivacySettings({ sendReadReceipts: false });
    for (const i of [1, 3, 5]) await c.clients[i]!.markReadUpTo(c.conversationId, m!.id);

    const listed = async (filter: RecipientFilter, client = sender) => {
      const ps = await pages(client, c.conversationId, m!.id, { filter, pageSize: 2 });
      for (const p of ps) expect(p.recipients.length).toBeLessThanOrEqual(2);
      return ps;
    };
    const of = (...is: number[]) => is.map((i) => users[i]!);

    const read = await listed("read");
    expect(ids(read)).toEqual(of(1, 3));
    for (const r of read.flatMap((p) => p.recipients)) {
      expect(r.state).toBe("read");
      expect(r.readAt).toBeInstanceOf(Date);
      expect(r.deliveredAt).toBeInstanceOf(Date);
    }
    const deliveredOnly = await listed("delivered_only");
    expect(ids(deliveredOnly)).toEqual(of(0, 5));
    expect(deliveredOnly.flatMap((p) => p.recipients).map((r) => [r.state, r.readAt])).toEqual([
      ["delivered", null],
      ["delivered", null],
    ]);
    expect(ids(await listed("not_delivered"))).toEqual(of(2, 4, 6));
    const all = (await listed("all")).flatMap((p) => p.recipients);
    expect(all.map((r) => [r.userId, r.state])).toEqual(
      (["delivered", "read", "none", "read", "none", "delivered", "none"] as const).map((s, i) => [users[i], s]),
    );
    // users[5] sees its own read.
    expect(ids(await listed("read", c.clients[5]!))).toEqual(of(1, 3, 5));
  });

  it("rejects a token used with another filter or message, and a negative page size, as INVALID_ARGUMENT", async () => {
    const users = ordered(6);
    const c = await chat(users);
    const [m1, m2] = await c.send(2, 5);
    const sender = c.clients[5]!;
    const first = await sender.listRecipients(c.conversationId, m1!.id, { pageSize: 2 });
    const pageToken = first.nextPageToken!;
    expect(pageToken).toEqual(expect.any(String));

    for (const [messageId, filter] of [
      [m1!.id, "read"],
      [m1!.id, "not_delivered"],
      [m2!.id, "all"],
    ] as const) {
      const e = await rejection(sender.listRecipients(c.conversationId, messageId, { filter, pageToken }));
      expect(e.code).toBe(Code.InvalidArgument);
      expect(e.field).toBe("page_token");
      expect(e.retryable).toBe(false);
    }
    const garbled = await rejection(sender.listRecipients(c.conversationId, m1!.id, { pageToken: "not-a-token" }));
    expect([garbled.code, garbled.field]).toEqual([Code.InvalidArgument, "page_token"]);
    const negative = await rejection(sender.listRecipients(c.conversationId, m1!.id, { pageSize: -1 }));
    expect([negative.code, negative.field]).toEqual([Code.InvalidArgument, "page_size"]);

    // With its own message and filter the token still continues the listing.
    const rest = await pages(sender, c.conversationId, m1!.id, { pageSize: 2, pageToken });
    expect([...first.recipients.map((r) => r.userId), ...ids(rest)]).toEqual(users.slice(0, 5));
  });
});

describe("allRecipients", () => {
  it("returns everyone the filter keeps, in 500-entry pages unless told otherwise", async () => {
    const users = ordered(9);
    const c = await chat(users);
    const [m] = await c.send(1, 4);
    await c.clients[0]!.markReadUpTo(c.conversationId, m!.id);
    await c.clients[8]!.markReadUpTo(c.conversationId, m!.id);
    const recipients = users.filter((_, i) => i !== 4);
    const t = countingTransport();
    const sender = createReceiptsClient({ transport: t.transport, token: mintToken(users[4]!, "user") });
    const sent = () =>
      t.calls.filter((x) => x.method === "ListRecipients").map((x) => x.message as ListRecipientsRequest);

    const everyone = await sender.allRecipients(c.conversationId, m!.id);
    expect(everyone.map((r) => r.userId)).toEqual(recipients);
    expect(everyone.filter((r) => r.state === "read").map((r) => r.userId)).toEqual([users[0], users[8]]);
    expect(sent().map((r) => [r.pageSize, r.pageToken, r.filter])).toEqual([[500, "", PbRecipientFilter.UNSPECIFIED]]);

    // Smaller pages: several calls, each continuing the last, the same list.
    t.calls.length = 0;
    expect(await sender.allRecipients(c.conversationId, m!.id, { pageSize: 2 })).toEqual(everyone);
    const small = sent();
    expect(small.length).toBeGreaterThanOrEqual(4);
    expect(small[0]!.pageToken).toBe("");
    expect(small.slice(1).every((r) => r.pageToken !== "" && r.pageSize === 2)).toBe(true);

    t.calls.length = 0;
    const readers = await sender.allRecipients(c.conversationId, m!.id, { filter: "read", pageSize: 1 });
    expect(readers.map((r) => r.userId)).toEqual([users[0], users[8]]);
    expect(sent().every((r) => r.filter === PbRecipientFilter.READ)).toBe(true);
  });
});

describe("getReceipts with includeRecipients", () => {
  it("returns the first 50 recipients of a larger group and a token that listRecipients continues", async () => {
    const users = ordered(60);
    const c = await chat(users);
    // The sender last in the order, so the first 50 members are all recipients.
    const [m] = await c.send(1, 59);
    const recipients = users.slice(0, 59);
    const connection = createReceiptsConnection({ baseUrl: baseUrl(), token: mintToken(users[59]!, "user") });

    const [state] = await c.clients[59]!.getReceipts(c.conversationId, [m!.id], { includeRecipients: true });
    expect(state!.recipientsTotal).toBe(59);
    expect(state!.recipients.map((r) => r.userId)).toEqual(recipients.slice(0, 50));
    const pageToken = state!.recipientsNextPageToken!;
    expect(pageToken).toEqual(expect.any(String));

    // The rest, through the standalone function, with no filter.
    const rest: string[] = [];
    let next: string | undefined = pageToken;
    while (next !== undefined && rest.length <= 59) {
      const page = await listRecipients(connection, c.conversationId, m!.id, { pageToken: next });
      rest.push(...page.recipients.map((r) => r.userId));
      next = page.nextPageToken;
    }
    expect(next).toBeUndefined();
    expect(rest).toEqual(recipients.slice(50));
    expect((await allRecipients(connection, c.conversationId, m!.id)).map((r) => r.userId)).toEqual(recipients);
    // The token is for the unfiltered list only.
    const e = await rejection(listRecipients(connection, c.conversationId, m!.id, { filter: "read", pageToken }));
    expect([e.code, e.field]).toEqual([Code.InvalidArgument, "page_token"]);

    // Without recipients, or with a list that fits, there is no token.
    const [plain] = await c.clients[59]!.getReceipts(c.conversationId, [m!.id]);
    expect(plain!.recipients).toEqual([]);
    expect(plain!.recipientsNextPageToken).toBeUndefined();
    const small = await chat(3);
    const [s] = await small.send(1);
    const [whole] = await small.clients[0]!.getReceipts(small.conversationId, [s!.id], { includeRecipients: true });
    expect(whole!.recipients).toHaveLength(2);
    expect(whole!.recipientsNextPageToken).toBeUndefined();
  });
});
