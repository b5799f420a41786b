// Read state on the device: the fold's rules (the server's, row by row),
// the list's paging, not-modified answers and the guard that keeps an
// entry from counting twice, and what the page marks read.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { test } from "node:test";
import * as pb from "../gen/timeline/v1/timeline_pb.js";
import { ConversationList, rowOf } from "./conversations.js";
import { foldEntry, type ConversationRow } from "./fold.js";
import { mentionsIn } from "./outbox.js";
import { memoryStorage } from "./storage.js";
import { shownFromInbox } from "./sync.js";
import type { TimelineClient } from "./transport.js";

const ME = 1n;
const BOB = 2n;

function entry(seq: bigint, init: MessageInitShape<typeof pb.EntrySchema>): pb.Entry {
  return create(pb.EntrySchema, { conversationId: 7n, sentAtMs: 1000n + seq, ...init, seq });
}
const msg = (seq: bigint, convSeq: bigint, senderId: bigint, extra = {}) =>
  entry(seq, { kind: pb.EntryKind.MESSAGE, convSeq, senderId, text: `m${convSeq}`, ...extra });
const members = (seq: bigint, convSeq: bigint, kind: pb.EntryKind, who: bigint[]) =>
  entry(seq, { kind, convSeq, members: who });
const marker = (seq: bigint, convSeq: bigint, senderId: bigint, readThrough: bigint, unread: bigint, unreadMentions = 0n) =>
  entry(seq, { kind: pb.EntryKind.READ_MARKER, convSeq, senderId, readThrough, unread, unreadMentions });

function emptyRow(asOfSeq = 0n): ConversationRow {
  return rowOf(create(pb.ConversationStateSchema, { conversationId: 7n }), asOfSeq);
}

function fold(entries: pb.Entry[], row = emptyRow()): ConversationRow {
  for (const e of entries) foldEntry(row, e, ME);
  return row;
}

test("only messages from others after the join count; mentions among them", () => {
  const row = fold([
    msg(1n, 1n, BOB),
    members(2n, 2n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]),
    msg(3n, 3n, BOB),
    members(4n, 4n, pb.EntryKind.MEMBERS_ADDED, [5n]),
    msg(5n, 5n, BOB, { mentions: [ME] }),
    msg(6n, 6n, BOB, { mentionAll: true }),
    msg(7n, 7n, BOB, { mentions: [5n] }),
  ]);
  assert.deepEqual([row.member, row.readThrough, row.unread, row.mentions], [true, 2n, 4, 2]);
  assert.equal(row.last?.text, "m7");
});

test("own messages read everything before them; leaving clears; a rejoin counts from the rejoin", () => {
  const created = members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]);
  let row = fold([created, msg(2n, 2n, BOB, { mentions: [ME] }), msg(3n, 3n, ME)]);
  assert.deepEqual([row.readThrough, row.unread, row.mentions], [3n, 0, 0]);
  row = fold([created, msg(2n, 2n, BOB), members(3n, 3n, pb.EntryKind.MEMBERS_REMOVED, [ME]), msg(4n, 4n, BOB)]);
  assert.deepEqual([row.member, row.unread], [false, 0]);
  fold([members(5n, 9n, pb.EntryKind.MEMBERS_ADDED, [ME]), msg(6n, 10n, BOB)], row);
  assert.deepEqual([row.member, row.readThrough, row.unread], [true, 9n, 1]);
});

test("markers only raise and carry the counts; the peer's is a receipt", () => {
  const row = fold([
    members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]),
    msg(2n, 2n, BOB),
    msg(3n, 3n, BOB),
    msg(4n, 4n, BOB, { mentions: [ME] }),
    marker(5n, 4n, ME, 3n, 1n, 1n),
    marker(6n, 4n, ME, 2n, 2n),
    marker(7n, 4n, BOB, 4n, 0n),
  ]);
  assert.deepEqual([row.readThrough, row.unread, row.mentions], [3n, 1, 1], "the stale marker changes nothing");
  assert.equal(row.peerReadThrough, 4n);
  assert.equal(row.lastActivityMs, 1004, "a marker is not activity");
});

test("a large group's inbox copies: the sender's reads, a mention counts as a mention only", () => {
  const row = fold([members(1n, 1n, pb.EntryKind.MEMBERS_ADDED, [ME])]);
  row.unread = 3;
  fold([msg(2n, 5n, BOB, { readFanout: true, mentions: [ME] })], row);
  assert.deepEqual([row.unread, row.mentions], [3, 1]);
  assert.equal(row.last, undefined, "the message itself comes from the timeline");
  fold([msg(3n, 6n, ME, { readFanout: true })], row);
  assert.deepEqual([row.readThrough, row.unread, row.mentions], [6n, 0, 0]);
});

test("entries at or below the seq a row was served at are in it already", () => {
  const row = emptyRow(10n);
  row.member = true;
  assert.equal(foldEntry(row, msg(9n, 3n, BOB), ME), false);
  assert.equal(foldEntry(row, msg(11n, 4n, BOB), ME), true);
  assert.equal(foldEntry(row, msg(11n, 4n, BOB), ME), false, "the same entry twice");
  assert.equal(row.unread, 1);
});

test("markers and large groups' copies are not shown as messages", () => {
  assert.equal(shownFromInbox(marker(1n, 1n, ME, 1n, 0n)), false);
  assert.equal(shownFromInbox(msg(2n, 2n, BOB, { readFanout: true })), false);
  assert.equal(shownFromInbox(msg(0n, 2n, BOB, { readFanout: true })), true, "from the timeline");
  assert.equal(shownFromInbox(msg(3n, 3n, BOB)), true);
});

test("mentions are members named with @id, and @all in groups", () => {
  assert.deepEqual(mentionsIn("hi @2 and @3, @9 @1 @2", [1n, 2n, 3n], ME, true), { mentions: [2n, 3n], mentionAll: false });
  assert.deepEqual(mentionsIn("@all look", [1n, 2n], ME, true), { mentions: [], mentionAll: true });
  assert.deepEqual(mentionsIn("@all look", [1n, 2n], ME, false), { mentions: [], mentionAll: false });
  assert.deepEqual(mentionsIn("mail a@2", [1n, 2n], ME, true), { mentions: [], mentionAll: false });
});

function state(id: bigint, activity: number, unread = 0): MessageInitShape<typeof pb.ConversationStateSchema> {
  return { conversationId: id, member: true, lastActivityMs: BigInt(activity), unread: BigInt(unread), readThrough: 1n };
}

test("the list pages by cursor, answers not modified, keeps folds past the reply, and survives a reload", async () => {
  const calls: string[] = [];
  let version = "v1";
  let first: MessageInitShape<typeof pb.ListConversationsReplySchema> = {
    conversations: [state(3n, 300, 2), state(2n, 200)],
    cursor: "c2",
    totalUnread: 3n,
    asOfSeq: 10n,
  };
  const client = {
    listConversations: async (r: { cursor?: string; knownVersion?: string }) => {
      calls.push(`list ${r.cursor ?? ""} ${r.knownVersion ?? ""}`);
      if (r.cursor === "c2") {
        return create(pb.ListConversationsReplySchema, { conversations: [state(1n, 100, 1)], totalUnread: 3n, asOfSeq: 10n });
      }
      if (r.knownVersion === version) return create(pb.ListConversationsReplySchema, { notModified: true });
      return create(pb.ListConversationsReplySchema, { ...first, version });
    },
    markRead: async (r: { conversationId: bigint; through: bigint }) => {
      calls.push(`mark ${r.conversationId} ${r.through}`);
      return create(pb.MarkReadReplySchema, { conversationId: r.conversationId, readThrough: r.through, seq: 20n });
    },
  } as unknown as TimelineClient;
  const storage = memoryStorage();
  const list = new ConversationList(client, storage, "list", ME);
  await list.refresh();
  assert.equal(list.hasMore, true);
  await list.loadMore();
  assert.deepEqual(list.rows().map((r) => [r.id, r.unread]), [[3n, 2], [2n, 0], [1n, 1]]);
  assert.equal(list.hasMore, false);
  await list.refresh();
  assert.deepEqual(calls, ["list  ", "list c2 ", "list  v1"]);

  // Folded entries past the reply's as_of_seq are not undone by a reply
  // that does not count them yet; entries it counts are not counted again.
  list.apply([msg(11n, 5n, BOB)].map((e) => ({ ...e, conversationId: 2n })));
  list.apply([msg(9n, 4n, BOB)].map((e) => ({ ...e, conversationId: 1n })));
  assert.equal(list.row(2n)?.unread, 1);
  assert.equal(list.row(1n)?.unread, 1, "seq 9 is in the row's count already");
  assert.equal(list.totalUnread, 4, "the fold moves the totals past the server's as_of_seq");
  version = "v2";
  first = { ...first, conversations: [state(2n, 200, 0)], asOfSeq: 10n, totalUnread: 4n };
  await list.refresh();
  assert.equal(list.row(2n)?.unread, 1);
  assert.equal(list.totalUnread, 5, "the server's 4 and the entry it did not count yet");

  await list.markRead(3n, 6n);
  assert.deepEqual([list.row(3n)?.readThrough, list.row(3n)?.unread], [6n, 0]);
  assert.equal(list.totalUnread, 3);
  const reloaded = new ConversationList(client, storage, "list", ME);
  assert.deepEqual(
    reloaded.rows().map((r) => [r.id, r.unread, r.asOfSeq]),
    list.rows().map((r) => [r.id, r.unread, r.asOfSeq]),
  );
  assert.equal(reloaded.totalUnread, 3);
  calls.length = 0;
  await reloaded.refresh();
  assert.deepEqual(calls, ["list  v2"], "the stored version is asked for");
});

// The message lifecycle in the fold (syncd/src/read_state/fold.rs).
const target = (convSeq: bigint, senderId: bigint, extra = {}) =>
  create(pb.MessageTargetSchema, { convSeq, senderId, ...extra });
const change = (seq: bigint, convSeq: bigint, kind: pb.EntryKind, on: pb.MessageTarget, extra = {}) =>
  entry(seq, { kind, convSeq, senderId: on.senderId, target: on, ...extra });

test("a recall of an unread message takes it back, and of a mention the mention too", () => {
  const row = fold([
    members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]),
    msg(2n, 2n, BOB),
    msg(3n, 3n, BOB, { mentions: [ME] }),
    msg(4n, 4n, BOB, { mentionAll: true }),
  ]);
  assert.deepEqual([row.unread, row.mentions], [3, 2]);
  assert.equal(foldEntry(row, change(5n, 5n, pb.EntryKind.RECALL, target(2n, BOB)), ME), true);
  assert.deepEqual([row.unread, row.mentions], [2, 2]);
  foldEntry(row, change(6n, 6n, pb.EntryKind.RECALL, target(3n, BOB, { mentions: [ME] })), ME);
  assert.deepEqual([row.unread, row.mentions], [1, 1]);
  foldEntry(row, change(7n, 7n, pb.EntryKind.DELETE, target(4n, BOB, { mentionAll: true }), { senderId: 0n }), ME);
  assert.deepEqual([row.unread, row.mentions], [0, 0], "a service's delete takes back the same way");
  assert.equal(row.lastConvSeq, 7n, "the row covers the events");
  assert.equal(row.lastActivityMs, 1004, "a recall is not activity");
});

test("a recall of a message already read, the user's own, or one never counted changes no count", () => {
  const base = () =>
    fold([
      members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]),
      msg(2n, 2n, BOB),
      msg(3n, 3n, ME),
      msg(4n, 4n, BOB),
    ]);
  let row = base();
  assert.deepEqual([row.readThrough, row.unread], [3n, 1]);
  foldEntry(row, change(5n, 5n, pb.EntryKind.RECALL, target(2n, BOB)), ME);
  assert.equal(row.unread, 1, "read through 3 already");
  foldEntry(row, change(6n, 6n, pb.EntryKind.RECALL, target(3n, ME)), ME);
  assert.equal(row.unread, 1, "the user's own message never counted");
  // A message above what the row covers was never counted (the server
  // served the row before it).
  row = base();
  row.lastConvSeq = 4n;
  foldEntry(row, change(5n, 9n, pb.EntryKind.RECALL, target(8n, BOB)), ME);
  assert.equal(row.unread, 1);
  // Before the user joined: read by the join.
  row = fold([members(1n, 5n, pb.EntryKind.MEMBERS_ADDED, [ME]), msg(2n, 6n, BOB)]);
  foldEntry(row, change(3n, 7n, pb.EntryKind.RECALL, target(4n, BOB)), ME);
  assert.equal(row.unread, 1);
  // Not a member any more: nothing counts.
  row = fold([members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]), msg(2n, 2n, BOB)]);
  foldEntry(row, members(3n, 3n, pb.EntryKind.MEMBERS_REMOVED, [ME]), ME);
  foldEntry(row, change(4n, 4n, pb.EntryKind.RECALL, target(2n, BOB)), ME);
  assert.equal(row.unread, 0);
});

test("in a large group a recall takes back only a mention by name", () => {
  const row = fold([members(1n, 1n, pb.EntryKind.MEMBERS_ADDED, [ME])]);
  row.unread = 4;
  fold(
    [
      msg(2n, 5n, BOB, { readFanout: true, mentions: [ME] }),
      change(3n, 6n, pb.EntryKind.RECALL, target(5n, BOB, { mentions: [ME] }), { readFanout: true }),
    ],
    row,
  );
  assert.deepEqual([row.unread, row.mentions], [4, 0], "the unread count is the server's (its timeline)");
  row.mentions = 1;
  foldEntry(row, change(4n, 8n, pb.EntryKind.RECALL, target(7n, BOB, { mentionAll: true }), { readFanout: true }), ME);
  assert.equal(row.mentions, 1, "@all is counted from the timeline, not the row");
  assert.equal(row.lastConvSeq, 1n, "a large group's events do not move the row");
});

test("an edit or recall of the previewed message changes the preview; of an older one, not", () => {
  const row = fold([
    members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]),
    msg(2n, 2n, BOB),
    msg(3n, 3n, BOB),
  ]);
  foldEntry(row, change(4n, 4n, pb.EntryKind.EDIT, target(2n, BOB), { text: "older, edited" }), ME);
  assert.deepEqual([row.last?.convSeq, row.last?.text, row.last?.edited], [3n, "m3", false]);
  foldEntry(row, change(5n, 5n, pb.EntryKind.EDIT, target(3n, BOB), { text: "é".repeat(200) }), ME);
  assert.equal(row.last?.edited, true);
  assert.equal(row.last?.text, "é".repeat(128), "cut to 256 bytes on a character boundary");
  assert.equal(row.unread, 2, "an edit is not unread");
  foldEntry(row, change(6n, 6n, pb.EntryKind.RECALL, target(3n, BOB)), ME);
  assert.deepEqual([row.last?.text, row.last?.removed], ["", true]);
  assert.equal(row.unread, 1);
  // A large group's previewed message (the server's row) changes too.
  const large = emptyRow();
  large.last = { convSeq: 9n, senderId: BOB, text: "secret", sentAtMs: 1, removed: false, edited: false };
  foldEntry(large, change(1n, 10n, pb.EntryKind.RECALL, target(9n, BOB), { readFanout: true }), ME);
  assert.deepEqual([large.last.text, large.last.removed], ["", true]);
});

test("delete for me changes no count; a clear is the user's read marker through what it clears", () => {
  const row = fold([members(1n, 1n, pb.EntryKind.CONVERSATION_CREATED, [ME, BOB]), msg(2n, 2n, BOB), msg(3n, 3n, BOB), msg(4n, 4n, BOB)]);
  assert.equal(foldEntry(row, change(5n, 5n, pb.EntryKind.DELETE_FOR_ME, target(2n, BOB), { senderId: ME }), ME), false);
  assert.deepEqual([row.unread, row.lastConvSeq, row.asOfSeq], [3, 4n, 5n]);
  // Cleared through 3 at position 4: one message (4) stays unread.
  const clear = change(6n, 4n, pb.EntryKind.CLEAR_HISTORY, target(3n, 0n), { senderId: ME, readThrough: 3n, unread: 1n });
  assert.equal(foldEntry(row, clear, ME), true);
  assert.deepEqual([row.unread, row.readThrough, row.asOfSeq], [1, 3n, 6n]);
});

test("a preview's removed and edited come from the server's row and survive a reload", async () => {
  const reply = create(pb.ListConversationsReplySchema, {
    conversations: [
      {
        conversationId: 7n,
        member: true,
        lastMessage: { convSeq: 3n, senderId: BOB, text: "", removed: true },
      },
    ],
    version: "v1",
    asOfSeq: 1n,
  });
  const client = { listConversations: async () => reply } as unknown as TimelineClient;
  const storage = memoryStorage();
  const list = new ConversationList(client, storage, "list", ME);
  await list.refresh();
  assert.deepEqual([list.row(7n)?.last?.removed, list.row(7n)?.last?.edited], [true, false]);
  list.apply([change(2n, 4n, pb.EntryKind.EDIT, target(3n, BOB), { text: "not back" })]);
  const reloaded = new ConversationList(client, storage, "list", ME);
  assert.deepEqual(reloaded.row(7n)?.last, list.row(7n)?.last);
  assert.equal(reloaded.row(7n)?.last?.removed, true);
});
