// The stored device state: checkpoints that never go back, a bounded
// journal, an idempotent cache that survives a reload, and tokens.

import { create } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { test } from "node:test";
import * as pb from "../gen/timeline/v1/timeline_pb.js";
import { Checkpoint, JOURNAL_LIMIT } from "./checkpoint.js";
import { ENTRIES_PER_CONVERSATION, InboxCache, itemOf } from "./inbox.js";
import { newClientMsgId } from "./outbox.js";
import { memoryStorage } from "./storage.js";
import { parseToken, TokenError } from "./token.js";

test("a checkpoint persists, never goes back, and journals each seq once", () => {
  const storage = memoryStorage();
  const checkpoint = Checkpoint.open(storage, "cp");
  checkpoint.advance(5n, [3n, 5n]);
  checkpoint.advance(4n, [4n]);
  checkpoint.advance(5n, [5n]);
  checkpoint.saveConversation(9n, 40n);
  checkpoint.saveConversation(9n, 12n);
  const reopened = Checkpoint.open(storage, "cp");
  assert.equal(reopened.seq, 5n);
  assert.deepEqual(reopened.journal, [3n, 5n]);
  assert.equal(reopened.conversation(9n), 40n);
  for (let seq = 6n; seq < 6n + BigInt(JOURNAL_LIMIT); seq++) reopened.advance(seq, [seq]);
  assert.equal(reopened.journal.length, JOURNAL_LIMIT);
  storage.set("cp", "not json");
  assert.equal(Checkpoint.open(storage, "cp").seq, 0n);
});

test("the cache applies an entry once and keeps what it holds across a reload", () => {
  const storage = memoryStorage();
  const cache = new InboxCache(storage, "inbox", 1n);
  const entry = (convSeq: bigint, seq: bigint) =>
    itemOf(
      create(pb.EntrySchema, {
        seq,
        kind: pb.EntryKind.MESSAGE,
        conversationId: 7n,
        convSeq,
        senderId: 2n,
        text: `c${convSeq}`,
        sentAtMs: 1000n + convSeq,
      }),
    );
  assert.equal(cache.apply(entry(1n, 0n)), true);
  assert.equal(cache.apply(entry(1n, 11n)), false);
  assert.equal(cache.entries(7n)[0].seq, 11n, "a history copy learns its inbox seq");
  cache.apply(entry(2n, 12n));
  cache.save();
  const reloaded = new InboxCache(storage, "inbox", 1n);
  assert.deepEqual(
    reloaded.entries(7n).map((e) => [e.convSeq, e.seq, e.text]),
    [
      [1n, 11n, "c1"],
      [2n, 12n, "c2"],
    ],
  );
  assert.equal(reloaded.list()[0].preview, "User 2: c2");
  for (let c = 3n; c < 3n + BigInt(ENTRIES_PER_CONVERSATION); c++) reloaded.apply(entry(c, 0n));
  reloaded.save();
  assert.equal(reloaded.entries(7n).length, ENTRIES_PER_CONVERSATION);
  assert.equal(reloaded.conversations.get(7n)?.hasEarlier, true);
  storage.set("inbox", "{");
  assert.equal(new InboxCache(storage, "inbox", 1n).dropped, true);
});

test("device tokens name their user and device; others are refused before any call", () => {
  const payload = btoa("d|42|laptop|1900000000").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  assert.deepEqual(parseToken(`tl1.${payload}.mac`), { userId: 42n, deviceId: "laptop", expiresAt: 1900000000 });
  const service = btoa("s|ops|1900000000").replace(/=+$/, "");
  assert.throws(() => parseToken(`tl1.${service}.mac`), /service token/);
  assert.throws(() => parseToken("Bearer abc"), TokenError);
  // Tokens minted with their issue time (a fifth field).
  const issued = btoa("d|42|laptop|1900000000|1800000000").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  assert.deepEqual(parseToken(`tl1.${issued}.mac`), { userId: 42n, deviceId: "laptop", expiresAt: 1900000000 });
  // A JWT device token.
  const claims = btoa(JSON.stringify({ sub: "7", device: "web", exp: 1900000000 })).replace(/=+$/, "");
  assert.deepEqual(parseToken(`eyJhbGciOiJIUzI1NiJ9.${claims}.sig`), { userId: 7n, deviceId: "web", expiresAt: 1900000000 });
});

test("client message ids are version 4 UUIDs in the hyphenated form", () => {
  const ids = new Set(Array.from({ length: 100 }, newClientMsgId));
  assert.equal(ids.size, 100);
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});
