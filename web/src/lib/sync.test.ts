// The sync loop against a scripted server: what it asks, in which order it
// saves and acknowledges, and how it follows has_more, an expired
// checkpoint and large groups.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import assert from "node:assert/strict";
import { test } from "node:test";
import * as pb from "../gen/timeline/v1/timeline_pb.js";
import { Checkpoint } from "./checkpoint.js";
import { InboxCache } from "./inbox.js";
import type { KeyValue } from "./storage.js";
import { noticeIsComplete, SyncEngine } from "./sync.js";
import type { TimelineClient } from "./transport.js";

/** A storage that logs which key each write went to. */
function loggedStorage(log: string[]): KeyValue {
  const map = new Map<string, string>();
  return {
    get: (key) => map.get(key) ?? null,
    set: (key, value) => {
      log.push(`save ${key}`);
      map.set(key, value);
    },
    remove: (key) => void map.delete(key),
  };
}

function message(seq: bigint, conversationId: bigint, convSeq: bigint, text = `m${seq}`): pb.Entry {
  return create(pb.EntrySchema, {
    seq,
    kind: pb.EntryKind.MESSAGE,
    conversationId,
    convSeq,
    senderId: 2n,
    text,
    sentAtMs: 1n,
  });
}

type Page = MessageInitShape<typeof pb.SyncReplySchema>;

interface Scripted {
  sync: (request: { afterSeq?: bigint }) => MessageInitShape<typeof pb.SyncReplySchema>;
  /** The pages one CatchUp call streams, or the error it fails with; unset: UNIMPLEMENTED (an older server). */
  catchUp?: (request: { afterSeq?: bigint }) => Page[] | ConnectError;
  history?: (request: { conversationId: bigint; after?: bigint; limit: number }) => MessageInitShape<typeof pb.HistoryReplySchema>;
  /** An error every Ack fails with; unset: Acks succeed. */
  ack?: () => ConnectError;
}

function setup(script: Scripted) {
  const log: string[] = [];
  const storage = loggedStorage(log);
  const client = {
    sync: async (request: { afterSeq?: bigint }) => {
      log.push(`sync after ${request.afterSeq}`);
      return create(pb.SyncReplySchema, { userId: 1n, ...script.sync(request) });
    },
    catchUp: (request: { afterSeq?: bigint }) => {
      const scripted = script.catchUp
        ? (log.push(`catch up after ${request.afterSeq}`), script.catchUp(request))
        : new ConnectError("no CatchUp here", Code.Unimplemented);
      return (async function* () {
        if (scripted instanceof ConnectError) throw scripted;
        for (const page of scripted) yield create(pb.SyncReplySchema, { userId: 1n, ...page });
      })();
    },
    ack: async (request: { seq: bigint }) => {
      log.push(`ack ${request.seq}`);
      const refused = script.ack?.();
      if (refused) throw refused;
      return create(pb.AckReplySchema, { checkpoint: request.seq });
    },
    history: async (request: { conversationId: bigint; after?: bigint; limit: number }) => {
      log.push(`history ${request.conversationId} after ${request.after}`);
      return create(pb.HistoryReplySchema, script.history!(request));
    },
  } as unknown as TimelineClient;
  const checkpoint = Checkpoint.open(storage, "cp");
  const cache = new InboxCache(storage, "inbox", 1n);
  const engine = new SyncEngine(client, checkpoint, cache, { status: () => undefined });
  return { log, checkpoint, cache, engine, storage };
}

test("each page is saved, then its checkpoint, then acknowledged; has_more pages on", async () => {
  const pages: Record<string, MessageInitShape<typeof pb.SyncReplySchema>> = {
    "0": { entries: [message(1n, 7n, 1n), message(3n, 7n, 2n)], checkpoint: 3n, hasMore: true },
    "3": { entries: [message(4n, 7n, 3n)], checkpoint: 4n, hasMore: false },
  };
  const { log, checkpoint, cache, engine } = setup({ sync: (r) => pages[String(r.afterSeq)] });
  await engine.syncAll();
  assert.deepEqual(log, [
    "sync after 0",
    "save inbox",
    "save cp",
    "ack 3",
    "sync after 3",
    "save inbox",
    "save cp",
    "ack 4",
  ]);
  assert.equal(checkpoint.seq, 4n);
  assert.deepEqual(checkpoint.journal, [1n, 3n, 4n]);
  assert.deepEqual(
    cache.entries(7n).map((e) => e.text),
    ["m1", "m3", "m4"],
  );
});

test("a CatchUp stream's pages are each saved, then their checkpoint, then acknowledged", async () => {
  const streams: Record<string, Page[]> = {
    "0": [
      { entries: [message(1n, 7n, 1n), message(3n, 7n, 2n)], checkpoint: 3n, hasMore: true },
      { entries: [message(4n, 7n, 3n)], checkpoint: 4n, hasMore: false },
    ],
  };
  const { log, checkpoint, cache, engine } = setup({
    sync: () => assert.fail("no Sync when the server streams"),
    catchUp: (r) => streams[String(r.afterSeq)],
  });
  await engine.syncAll();
  assert.deepEqual(log, [
    "catch up after 0",
    "save inbox",
    "save cp",
    "ack 3",
    "save inbox",
    "save cp",
    "ack 4",
  ]);
  assert.equal(checkpoint.seq, 4n);
  assert.deepEqual(
    cache.entries(7n).map((e) => e.text),
    ["m1", "m3", "m4"],
  );
});

test("a CatchUp stream that ends before a complete page is called again from the checkpoint", async () => {
  const streams: Record<string, Page[]> = {
    "0": [{ entries: [message(1n, 7n, 1n)], checkpoint: 1n, hasMore: true }],
    "1": [{ entries: [message(2n, 7n, 2n)], checkpoint: 2n, hasMore: false }],
  };
  const { log, checkpoint, engine } = setup({
    sync: () => assert.fail("no Sync when the server streams"),
    catchUp: (r) => streams[String(r.afterSeq)],
  });
  await engine.syncAll();
  assert.deepEqual(
    log.filter((l) => l.startsWith("catch up")),
    ["catch up after 0", "catch up after 1"],
  );
  assert.equal(checkpoint.seq, 2n);
});

test("a server without CatchUp is paged with Sync from then on; a busy one for that pass only", async () => {
  const pages: Record<string, Page> = {
    "0": { entries: [message(1n, 7n, 1n)], checkpoint: 1n, hasMore: false },
    "1": { entries: [message(2n, 7n, 2n)], checkpoint: 2n, hasMore: false },
    "2": { entries: [], checkpoint: 2n, hasMore: false },
  };
  let refusal = new ConnectError("too many catch-ups open", Code.ResourceExhausted);
  const { log, checkpoint, engine } = setup({
    sync: (r) => pages[String(r.afterSeq)],
    catchUp: () => refusal,
  });
  await engine.syncAll();
  refusal = new ConnectError("no such method", Code.Unimplemented);
  await engine.syncAll();
  await engine.syncAll();
  assert.deepEqual(log.filter((l) => l.startsWith("catch up") || l.startsWith("sync")), [
    "catch up after 0",
    "sync after 0",
    "catch up after 1",
    "sync after 1",
    "sync after 2",
  ]);
  assert.equal(checkpoint.seq, 2n);
});

test("a CatchUp stream that ends having brought nothing is not called again: Sync pages on", async () => {
  const { log, checkpoint, engine } = setup({
    sync: () => ({ entries: [message(1n, 7n, 1n)], checkpoint: 1n, hasMore: false }),
    catchUp: () => [],
  });
  await engine.syncAll();
  assert.deepEqual(
    log.filter((l) => l.startsWith("catch up") || l.startsWith("sync")),
    ["catch up after 0", "sync after 0"],
  );
  assert.equal(checkpoint.seq, 1n);
});

test("an ack refused while a streamed page is applied fails the pass, it is no reason to page with Sync", async () => {
  const { log, engine } = setup({
    sync: () => assert.fail("no Sync for a failed ack"),
    catchUp: () => [{ entries: [message(1n, 7n, 1n)], checkpoint: 1n, hasMore: false }],
    ack: () => new ConnectError("busy", Code.ResourceExhausted),
  });
  await assert.rejects(engine.syncAll(), (e: ConnectError) => e.code === Code.ResourceExhausted);
  assert.ok(!log.some((l) => l.startsWith("sync")), log.join("\n"));
});

test("a CatchUp that says the checkpoint expired restarts below the retention floor", async () => {
  const { log, checkpoint, engine } = setup({
    sync: () => assert.fail("no Sync when the server streams"),
    catchUp: (r) =>
      r.afterSeq === 0n
        ? [{ checkpointExpired: true, oldestSeq: 40n }]
        : [{ entries: [message(40n, 7n, 9n)], checkpoint: 40n, hasMore: false }],
  });
  await engine.syncAll();
  assert.deepEqual(
    log.filter((l) => l.startsWith("catch up")),
    ["catch up after 0", "catch up after 39"],
  );
  assert.equal(checkpoint.seq, 40n);
});

test("a checkpoint that expired restarts below the retention floor with the cache dropped", async () => {
  let calls = 0;
  const { checkpoint, cache, engine, log } = setup({
    sync: (r) => {
      calls++;
      if (calls === 1) return { entries: [message(5n, 7n, 5n)], checkpoint: 5n };
      if (r.afterSeq === 5n) return { checkpointExpired: true, oldestSeq: 40n };
      return { entries: [message(40n, 7n, 9n)], checkpoint: 40n };
    },
  });
  await engine.syncAll();
  assert.equal(cache.entries(7n).length, 1);
  await engine.syncAll();
  assert.ok(log.includes("sync after 39"), log.join("\n"));
  assert.equal(checkpoint.seq, 40n);
  assert.deepEqual(
    cache.entries(7n).map((e) => e.convSeq),
    [9n],
  );
  assert.equal(cache.conversations.get(7n)?.hasEarlier, true);
});

test("large groups are read from their join, then from the saved position", async () => {
  const top = create(pb.ConversationTopSchema, { conversationId: 9n, convSeq: 6n, joinedConvSeq: 2n });
  const { checkpoint, cache, engine, log } = setup({
    sync: () => ({ checkpoint: 0n, largeGroups: [top] }),
    history: (r) => {
      const from = Number(r.after);
      const entries = [];
      for (let c = from + 1; c <= Math.min(from + 2, 6); c++) {
        entries.push(message(0n, 9n, BigInt(c)));
      }
      return { entries, hasMore: from + 2 < 6 };
    },
  });
  await engine.syncAll();
  assert.deepEqual(
    log.filter((l) => l.startsWith("history")),
    ["history 9 after 2", "history 9 after 4"],
  );
  assert.equal(checkpoint.conversation(9n), 6n);
  assert.deepEqual(
    cache.entries(9n).map((e) => e.convSeq),
    [3n, 4n, 5n, 6n],
  );
  log.length = 0;
  await engine.syncAll();
  assert.deepEqual(
    log.filter((l) => l.startsWith("history")),
    [],
  );
});

test("a join marks where a group's timeline is read from; the user's own rejoin keeps its position", async () => {
  const join = (seq: bigint, convSeq: bigint, members: bigint[]) =>
    create(pb.EntrySchema, { seq, kind: pb.EntryKind.MEMBERS_ADDED, conversationId: 9n, convSeq, members });
  const pages = [
    { entries: [join(1n, 3n, [1n])], checkpoint: 1n },
    { entries: [join(2n, 8n, [5n])], checkpoint: 2n },
    { entries: [join(3n, 12n, [1n])], checkpoint: 3n },
  ];
  let call = 0;
  const { checkpoint, engine } = setup({ sync: () => pages[call++] ?? { checkpoint: 3n } });
  await engine.syncAll();
  assert.equal(checkpoint.conversation(9n), 3n);
  await engine.syncAll();
  assert.equal(checkpoint.conversation(9n), 8n, "another member's join: everything before is in the inbox");
  await engine.syncAll();
  assert.equal(checkpoint.conversation(9n), 8n, "the user's own rejoin keeps what was unread");
});

test("a notice is complete only when its entries reach up_to_seq", () => {
  const notice = (upToSeq: bigint, seqs: bigint[]) =>
    create(pb.NoticeSchema, { upToSeq, entries: seqs.map((s) => message(s, 1n, s)) });
  assert.equal(noticeIsComplete(notice(5n, [4n, 5n])), true);
  assert.equal(noticeIsComplete(notice(6n, [4n, 5n])), false);
  assert.equal(noticeIsComplete(notice(6n, [])), false);
});

/** CatchUp on a server that predates it. */
function unimplemented(): never {
  throw new ConnectError("no CatchUp here", Code.Unimplemented);
}

test("the loop retries what is transient and stops at a refused token", async () => {
  const statuses: string[] = [];
  let syncs = 0;
  const client = {
    sync: async () => {
      if (++syncs === 1) throw new ConnectError("connection refused", Code.Unavailable);
      return create(pb.SyncReplySchema, { userId: 1n });
    },
    catchUp: unimplemented,
    ack: async () => create(pb.AckReplySchema, {}),
    subscribe: () => ({
      [Symbol.asyncIterator]: () => ({
        next: async () => {
          throw new ConnectError("token expired", Code.Unauthenticated);
        },
      }),
    }),
  } as unknown as TimelineClient;
  const storage = loggedStorage([]);
  const engine = new SyncEngine(client, Checkpoint.open(storage, "cp"), new InboxCache(storage, "inbox", 1n), {
    status: (status) => statuses.push(status.kind === "stopped" ? `stopped ${Code[status.code]}` : status.kind),
  });
  await engine.run(new AbortController().signal);
  assert.deepEqual(statuses, ["connecting", "offline", "connecting", "live", "stopped Unauthenticated"]);
});

/** A watch that hears one notice, then a refused token (which ends it). */
async function syncsAfterNotice(entries: pb.Entry[]): Promise<number> {
  let syncs = 0;
  let notices = 0;
  const upToSeq = entries.at(-1)!.seq;
  const client = {
    sync: async () => {
      syncs += 1;
      return create(pb.SyncReplySchema, { userId: 1n, checkpoint: syncs > 1 ? upToSeq : 0n });
    },
    catchUp: unimplemented,
    ack: async () => create(pb.AckReplySchema, {}),
    subscribe: () => ({
      [Symbol.asyncIterator]: () => ({
        next: async () => {
          if (notices++ === 0) return { done: false, value: create(pb.NoticeSchema, { upToSeq, entries }) };
          throw new ConnectError("token expired", Code.Unauthenticated);
        },
      }),
    }),
  } as unknown as TimelineClient;
  const storage = loggedStorage([]);
  const engine = new SyncEngine(client, Checkpoint.open(storage, "cp"), new InboxCache(storage, "inbox", 1n), {
    status: () => undefined,
  });
  await engine.run(new AbortController().signal);
  return syncs;
}

test("the user's own removal, a join or a large group's copy is followed by a pull", async () => {
  const membership = (kind: pb.EntryKind, members: bigint[]) =>
    create(pb.EntrySchema, { seq: 1n, kind, conversationId: 5n, convSeq: 10n, members });
  assert.equal(await syncsAfterNotice([message(1n, 5n, 10n)]), 1, "an ordinary message: no pull");
  assert.equal(await syncsAfterNotice([membership(pb.EntryKind.MEMBERS_REMOVED, [3n])]), 1, "someone else left");
  // Sync reads the left group up to the leave: notices of what was sent
  // just before it may never come.
  assert.equal(await syncsAfterNotice([membership(pb.EntryKind.MEMBERS_REMOVED, [3n, 1n])]), 2);
  assert.equal(await syncsAfterNotice([membership(pb.EntryKind.MEMBERS_ADDED, [3n])]), 2);
  const copy = create(pb.EntrySchema, { ...message(1n, 5n, 10n), readFanout: true });
  assert.equal(await syncsAfterNotice([copy]), 2, "a large group's copy has the group read");
});
