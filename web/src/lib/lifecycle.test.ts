// The message lifecycle in the cached view: the rules of client/src/view.rs
// (edits by version whatever the order, withdrawals final and their text
// gone from storage, hiding per message and through a point), History
// pages carrying a message's current state, and the calls' operation ids.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { test } from "node:test";
import * as pb from "../gen/timeline/v1/timeline_pb.js";
import { ConversationList } from "./conversations.js";
import { InboxCache, itemOf, MAX_REMEMBERED, type Item } from "./inbox.js";
import { Lifecycle } from "./lifecycle.js";
import { memoryStorage } from "./storage.js";
import type { TimelineClient } from "./transport.js";

const ME = 1n;
const BOB = 2n;
const CONV = 7n;

function item(init: MessageInitShape<typeof pb.EntrySchema>): Item {
  return itemOf(create(pb.EntrySchema, { conversationId: CONV, senderId: BOB, sentAtMs: 1000n, ...init }));
}
const message = (convSeq: bigint, text: string, extra = {}) =>
  item({ kind: pb.EntryKind.MESSAGE, convSeq, msgId: 100n + convSeq, text, ...extra });
const change = (kind: pb.EntryKind, convSeq: bigint, on: bigint, extra = {}) =>
  item({ kind, convSeq, target: { convSeq: on, senderId: BOB }, ...extra });
const edit = (convSeq: bigint, on: bigint, text: string) => change(pb.EntryKind.EDIT, convSeq, on, { text });
const recall = (convSeq: bigint, on: bigint) => change(pb.EntryKind.RECALL, convSeq, on);

function shown(cache: InboxCache): [bigint, string, bigint, string | undefined][] {
  return cache.entries(CONV).map((e) => [e.convSeq, e.text, e.version, e.removed?.kind]);
}

test("edits apply by version whatever the order; a recall is final", () => {
  const m = message(1n, "v0");
  const orders = [
    [m, edit(2n, 1n, "v2"), edit(3n, 1n, "v3")],
    [m, edit(3n, 1n, "v3"), edit(2n, 1n, "v2")],
    [edit(3n, 1n, "v3"), m, edit(2n, 1n, "v2"), m],
  ];
  for (const order of orders) {
    const cache = new InboxCache(memoryStorage(), "inbox", ME);
    for (const e of order) cache.apply({ ...e });
    assert.deepEqual(shown(cache), [[1n, "v3", 3n, undefined]]);
  }
  for (const order of [
    [m, edit(2n, 1n, "v2"), recall(4n, 1n), edit(3n, 1n, "v3"), m],
    [recall(4n, 1n), m, edit(3n, 1n, "v3")],
    [edit(3n, 1n, "v3"), recall(4n, 1n), m],
  ]) {
    const cache = new InboxCache(memoryStorage(), "inbox", ME);
    for (const e of order) cache.apply({ ...e });
    const [held] = cache.entries(CONV);
    assert.deepEqual([held.text, held.removed?.kind, held.removed?.by], ["", "recalled", BOB]);
  }
});

test("a recalled message's text, and its edits', leave storage", () => {
  const storage = memoryStorage();
  const cache = new InboxCache(storage, "inbox", ME);
  cache.apply(message(1n, "the secret"));
  cache.apply(edit(2n, 1n, "the edited secret"));
  // An edit of a message not cached yet is remembered until it comes.
  cache.apply(edit(4n, 3n, "another secret"));
  cache.save();
  assert.match(storage.get("inbox")!, /the edited secret/);
  assert.match(storage.get("inbox")!, /another secret/);
  cache.apply(recall(5n, 1n));
  cache.apply(recall(6n, 3n));
  cache.save();
  const stored = storage.get("inbox")!;
  assert.doesNotMatch(stored, /secret/);
  assert.equal(cache.list()[0].preview, "Recalled by user 2");
  const reloaded = new InboxCache(storage, "inbox", ME);
  assert.deepEqual(shown(reloaded), [[1n, "", 2n, "recalled"]]);
  // The recall of message 3 is remembered: its copy comes with no text.
  reloaded.apply(message(3n, "another secret"));
  assert.deepEqual(shown(reloaded)[1], [3n, "", 0n, "recalled"]);
});

test("a History page carries the current state: edited text, removed", () => {
  const cache = new InboxCache(memoryStorage(), "inbox", ME);
  cache.apply(message(1n, "typo", { seq: 11n }));
  cache.apply(message(2n, "gone", { seq: 12n }));
  cache.applyHistory(
    CONV,
    [
      message(1n, "fixed", { version: 5n, edited: true }),
      // The events themselves (conv_seq 5 and 6) are on another page.
      message(2n, "", { removed: { kind: pb.RemovalKind.DELETED, by: 0n, atMs: 2000n, convSeq: 6n } }),
    ],
    false,
  );
  assert.deepEqual(shown(cache), [
    [1n, "fixed", 5n, undefined],
    [2n, "", 0n, "deleted"],
  ]);
  assert.equal(cache.entries(CONV)[0].seq, 11n, "the inbox seq stays");
  // An older copy (the inbox's, as sent) does not undo it.
  cache.apply(message(1n, "typo", { seq: 11n }));
  assert.equal(cache.entries(CONV)[0].text, "fixed");
  assert.equal(cache.list()[0].preview, "Message deleted");
});

test("delete for me hides one message, clear history everything through a point, for good", () => {
  const storage = memoryStorage();
  const cache = new InboxCache(storage, "inbox", ME);
  for (let c = 1n; c <= 5n; c++) cache.apply(message(c, `m${c}`));
  cache.apply(change(pb.EntryKind.DELETE_FOR_ME, 6n, 4n, { senderId: ME }));
  cache.apply(change(pb.EntryKind.CLEAR_HISTORY, 7n, 2n, { senderId: ME }));
  assert.deepEqual(cache.entries(CONV).map((e) => e.convSeq), [3n, 5n]);
  cache.save();
  assert.doesNotMatch(storage.get("inbox")!, /"m4"|"m1"/);
  const reloaded = new InboxCache(storage, "inbox", ME);
  // A History page read before the change, or an inbox repeat, brings nothing back.
  for (const c of [1n, 2n, 4n]) assert.equal(reloaded.apply(message(c, `m${c}`)), true);
  assert.deepEqual(reloaded.entries(CONV).map((e) => e.convSeq), [3n, 5n]);
  assert.equal(reloaded.hidden(CONV, 4n), true);
  assert.equal(reloaded.hidden(CONV, 5n), false);
  reloaded.apply(change(pb.EntryKind.CLEAR_HISTORY, 8n, 5n, { senderId: ME }));
  assert.deepEqual(reloaded.entries(CONV), []);
  assert.equal(reloaded.list()[0].preview, "");
});

test("what arrives before its message is bounded", () => {
  const storage = memoryStorage();
  const cache = new InboxCache(storage, "inbox", ME);
  const n = BigInt(MAX_REMEMBERED) + 10n;
  for (let c = 1n; c <= n; c++) cache.apply(recall(n + c, c));
  cache.save();
  const stored = JSON.parse(storage.get("inbox")!);
  assert.equal(stored.conversations[0].lifecycle.removed.length, MAX_REMEMBERED);
  assert.equal(stored.conversations[0].lifecycle.removed[0][0], "11", "the lowest go first");
});

test("a change is one operation: retried with the same id, refusals passed on", async () => {
  const ids: string[] = [];
  let failures = 2;
  const client = {
    recallMessage: async (r: { clientOpId: string; convSeq: bigint; msgId: bigint }) => {
      ids.push(r.clientOpId);
      assert.deepEqual([r.convSeq, r.msgId], [1n, 101n]);
      if (failures-- > 0) throw new (await import("@connectrpc/connect")).ConnectError("down", 14);
      return create(pb.MessageChangeReplySchema, { convSeq: 9n });
    },
    editMessage: async () => {
      throw new (await import("@connectrpc/connect")).ConnectError("outside the edit window", 9);
    },
  } as unknown as TimelineClient;
  const calls = new Lifecycle(client);
  const reply = await calls.recall(message(1n, "x"));
  assert.equal(reply.convSeq, 9n);
  assert.equal(ids.length, 3);
  assert.equal(new Set(ids).size, 1, "one operation id across the retries");
  await assert.rejects(calls.edit(message(1n, "x"), "y"), /outside the edit window/);
});

test("a preview of a message the device knows was withdrawn shows no text, whatever the server's list says", async () => {
  const storage = memoryStorage();
  const cache = new InboxCache(storage, "inbox", ME);
  // A large group's row as a server may serve it after the recall (the
  // recall came through the group's timeline, not the inbox).
  const reply = create(pb.ListConversationsReplySchema, {
    conversations: [{ conversationId: CONV, member: true, readFanout: true, lastMessage: { convSeq: 3n, senderId: BOB, text: "large secret" } }],
    version: "v1",
    asOfSeq: 1n,
  });
  let replies = 0;
  const client = {
    listConversations: async () => (replies++ === 0 ? reply : create(pb.ListConversationsReplySchema, { notModified: true })),
  } as unknown as TimelineClient;
  const list = new ConversationList(client, storage, "list", ME, undefined, (id, convSeq) => cache.withdrawn(id, convSeq));
  await list.refresh();
  assert.equal(list.row(CONV)?.last?.text, "large secret", "nothing known yet");
  cache.apply(message(3n, "large secret"));
  cache.apply(recall(4n, 3n));
  list.scrub(CONV);
  assert.deepEqual([list.row(CONV)?.last?.text, list.row(CONV)?.last?.removed], ["", true]);
  assert.doesNotMatch(storage.get("list")!, /large secret/);
  // A reply that still carries the text changes nothing.
  replies = 0;
  await list.refresh();
  assert.equal(list.row(CONV)?.last?.text, "");
});
