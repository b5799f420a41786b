// gRPC-Web without a browser: every RPC of Timeline (the message lifecycle's
// included) and Admin over plain HTTP/1.1 requests (Node's fetch), CORS
// preflights from an allowed and a disallowed origin, errors on the
// trailers-only path arriving as a status, and the web root served next to
// the API.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import * as pb from "../src/gen/timeline/v1/timeline_pb.js";
import { call, frame, parseFrames } from "./grpc-web.mjs";
import { Syncd, WEB_DIR } from "./harness.mjs";
import { join } from "node:path";

const ALLOWED = "http://allowed.test:8080";
const DISALLOWED = "http://elsewhere.test";

describe("gRPC-Web on syncd's port", () => {
  let server;
  let alice;
  let ops;
  before(async () => {
    server = await Syncd.start(["--cors-origin", ALLOWED, "--web-root", join(WEB_DIR, "dist")]);
    alice = server.deviceToken(1, "web");
    ops = server.serviceToken("ops");
  });
  after(async () => server?.stop());

  const T = "/timeline.v1.Timeline/";
  const A = "/timeline.v1.Admin/";
  async function ok(path, schema, message, replySchema, token) {
    const reply = await call(server.url, path, schema, message, { token, replySchema });
    assert.equal(reply.response.status, 200, path);
    assert.deepEqual(reply.status, { code: 0, message: "", from: "trailer" }, `${path}: ${reply.status?.message}`);
    return reply.messages;
  }

  test("every Timeline and Admin call answers", async () => {
    const [created] = await ok(
      `${T}CreateConversation`,
      pb.CreateConversationRequestSchema,
      create(pb.CreateConversationRequestSchema, {
        kind: pb.ConversationKind.GROUP,
        members: [2n],
        title: "over the web",
        clientRequestId: "6f1c1f3e-7d5e-4c36-9d1e-0c6a4c1f2a01",
      }),
      pb.CreateConversationReplySchema,
      alice,
    );
    const id = created.conversation.conversationId;
    assert.deepEqual(created.conversation.members, [1n, 2n]);

    const [found] = await ok(
      `${T}GetConversation`,
      pb.GetConversationRequestSchema,
      create(pb.GetConversationRequestSchema, { conversationId: id }),
      pb.GetConversationReplySchema,
      alice,
    );
    assert.equal(found.conversation.title, "over the web");

    const send = create(pb.SendRequestSchema, {
      conversationId: id,
      text: "hello over gRPC-Web",
      clientMsgId: "0b7e0f5a-1f4b-4a57-8f57-3d8d2f7b9c11",
    });
    const [sent] = await ok(`${T}Send`, pb.SendRequestSchema, send, pb.SendReplySchema, alice);
    assert.equal(sent.duplicate, false);
    const [again] = await ok(`${T}Send`, pb.SendRequestSchema, send, pb.SendReplySchema, alice);
    assert.equal(again.duplicate, true);
    assert.equal(again.convSeq, sent.convSeq);

    const [synced] = await ok(
      `${T}Sync`,
      pb.SyncRequestSchema,
      create(pb.SyncRequestSchema, { afterSeq: 0n }),
      pb.SyncReplySchema,
      alice,
    );
    assert.equal(synced.userId, 1n);
    assert.deepEqual(
      synced.entries.map((e) => e.kind),
      [pb.EntryKind.CONVERSATION_CREATED, pb.EntryKind.MESSAGE],
    );
    assert.equal(synced.entries[1].text, "hello over gRPC-Web");

    const [acked] = await ok(
      `${T}Ack`,
      pb.AckRequestSchema,
      create(pb.AckRequestSchema, { seq: synced.checkpoint }),
      pb.AckReplySchema,
      alice,
    );
    assert.equal(acked.checkpoint, synced.checkpoint);

    const [history] = await ok(
      `${T}History`,
      pb.HistoryRequestSchema,
      create(pb.HistoryRequestSchema, { conversationId: id, limit: 10 }),
      pb.HistoryReplySchema,
      alice,
    );
    assert.deepEqual(
      history.entries.map((e) => e.convSeq),
      synced.entries.map((e) => e.convSeq),
    );

    const [marked] = await ok(
      `${T}MarkRead`,
      pb.MarkReadRequestSchema,
      create(pb.MarkReadRequestSchema, { conversationId: id }),
      pb.MarkReadReplySchema,
      alice,
    );
    assert.equal(marked.readThrough, sent.convSeq, "the sender's own message read the conversation");
    const [listed] = await ok(
      `${T}ListConversations`,
      pb.ListConversationsRequestSchema,
      create(pb.ListConversationsRequestSchema, {}),
      pb.ListConversationsReplySchema,
      alice,
    );
    assert.deepEqual(
      listed.conversations.map((c) => [c.conversationId, c.title, c.unread]),
      [[id, "over the web", 0n]],
    );
    const [unchanged] = await ok(
      `${T}ListConversations`,
      pb.ListConversationsRequestSchema,
      create(pb.ListConversationsRequestSchema, { knownVersion: listed.version }),
      pb.ListConversationsReplySchema,
      alice,
    );
    assert.equal(unchanged.notModified, true);
    const [receipts] = await ok(
      `${T}GetReadReceipts`,
      pb.GetReadReceiptsRequestSchema,
      create(pb.GetReadReceiptsRequestSchema, { conversationId: id, convSeq: sent.convSeq }),
      pb.GetReadReceiptsReplySchema,
      alice,
    );
    assert.deepEqual([receipts.readCount, receipts.memberCount], [0n, 1n]);

    // The message lifecycle: edit (twice with one operation id), recall,
    // delete for me, clear history, each seen in History.
    const historyNow = async () =>
      (
        await ok(
          `${T}History`,
          pb.HistoryRequestSchema,
          create(pb.HistoryRequestSchema, { conversationId: id, limit: 50 }),
          pb.HistoryReplySchema,
          alice,
        )
      )[0].entries;
    const editRequest = create(pb.EditMessageRequestSchema, {
      conversationId: id,
      convSeq: sent.convSeq,
      msgId: sent.msgId,
      text: "edited over gRPC-Web",
      clientOpId: "3a0d5c52-7a4e-4d8e-9b1e-5f0c1a2b3c4d",
    });
    const [edited] = await ok(`${T}EditMessage`, pb.EditMessageRequestSchema, editRequest, pb.MessageChangeReplySchema, alice);
    assert.ok(edited.convSeq > sent.convSeq);
    const [editedAgain] = await ok(`${T}EditMessage`, pb.EditMessageRequestSchema, editRequest, pb.MessageChangeReplySchema, alice);
    assert.deepEqual([editedAgain.duplicate, editedAgain.convSeq], [true, edited.convSeq]);
    let shown = (await historyNow()).find((e) => e.convSeq === sent.convSeq);
    assert.deepEqual([shown.text, shown.version, shown.edited], ["edited over gRPC-Web", edited.convSeq, true]);
    const [recalled] = await ok(
      `${T}RecallMessage`,
      pb.MessageChangeRequestSchema,
      create(pb.MessageChangeRequestSchema, { conversationId: id, convSeq: sent.convSeq, msgId: sent.msgId }),
      pb.MessageChangeReplySchema,
      alice,
    );
    assert.ok(recalled.convSeq > edited.convSeq);
    shown = (await historyNow()).find((e) => e.convSeq === sent.convSeq);
    assert.deepEqual([shown.text, shown.removed?.kind, shown.removed?.by], ["", pb.RemovalKind.RECALLED, 1n]);
    const [hide] = await ok(
      `${T}Send`,
      pb.SendRequestSchema,
      create(pb.SendRequestSchema, { conversationId: id, text: "hide me", clientMsgId: "5d2b8e1a-0c3f-4b6d-8e7a-9f1c2d3e4f50" }),
      pb.SendReplySchema,
      alice,
    );
    await ok(
      `${T}DeleteMessage`,
      pb.DeleteMessageRequestSchema,
      create(pb.DeleteMessageRequestSchema, { conversationId: id, convSeq: hide.convSeq, forMe: true }),
      pb.MessageChangeReplySchema,
      alice,
    );
    assert.equal((await historyNow()).some((e) => e.convSeq === hide.convSeq), false, "hidden for the user");
    await ok(
      `${T}ClearHistory`,
      pb.ClearHistoryRequestSchema,
      create(pb.ClearHistoryRequestSchema, { conversationId: id }),
      pb.MessageChangeReplySchema,
      alice,
    );
    assert.deepEqual(await historyNow(), [], "cleared for the user");

    const [added] = await ok(
      `${A}AddMembers`,
      pb.ChangeMembersRequestSchema,
      create(pb.ChangeMembersRequestSchema, { conversationId: id, members: [3n] }),
      pb.ChangeMembersReplySchema,
      ops,
    );
    assert.deepEqual(added.conversation.members, [1n, 2n, 3n]);
    const [removed] = await ok(
      `${A}RemoveMembers`,
      pb.ChangeMembersRequestSchema,
      create(pb.ChangeMembersRequestSchema, { conversationId: id, members: [3n] }),
      pb.ChangeMembersReplySchema,
      ops,
    );
    assert.ok(removed.convSeq > added.convSeq);
    const [appended] = await ok(
      `${A}AppendMessage`,
      pb.AppendMessageRequestSchema,
      create(pb.AppendMessageRequestSchema, { conversationId: id, senderId: 0n, text: "maintenance at 5pm" }),
      pb.SendReplySchema,
      ops,
    );
    assert.ok(appended.convSeq > removed.convSeq);
  });

  test("Subscribe streams notices over HTTP/1.1 as they happen", async () => {
    const bob = server.deviceToken(2, "web");
    const abort = new AbortController();
    const response = await fetch(`${server.url}${T}Subscribe`, {
      method: "POST",
      headers: {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        authorization: `Bearer ${bob}`,
      },
      body: frame(toBinary(pb.SubscribeRequestSchema, create(pb.SubscribeRequestSchema, { afterSeq: 0n, includeEntries: true }))),
      signal: abort.signal,
    });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "application/grpc-web+proto");
    const reader = response.body.getReader();
    let buffered = new Uint8Array();
    // One data frame at a time: a read may hold several notices, or part of one.
    const nextNotice = async () => {
      for (;;) {
        if (buffered.length >= 5) {
          const length = new DataView(buffered.buffer, buffered.byteOffset + 1, 4).getUint32(0);
          if (buffered.length >= 5 + length) {
            const [notice] = parseFrames(buffered.subarray(0, 5 + length));
            buffered = buffered.slice(5 + length);
            assert.equal(notice.flag, 0, "a data frame, not the end of the stream");
            return fromBinary(pb.NoticeSchema, notice.bytes);
          }
        }
        const { value, done } = await reader.read();
        assert.ok(!done, "the stream ended");
        const joined = new Uint8Array(buffered.length + value.length);
        joined.set(buffered);
        joined.set(value, buffered.length);
        buffered = joined;
      }
    };
    // Bob's inbox already holds the first test's entries: the first notice
    // comes at once.
    const first = await nextNotice();
    assert.ok(first.upToSeq > 0n);
    const conversation = server.tl(bob, ["conversation", "create", "--members", "1"]).trim();
    server.tl(alice, ["send", "--conversation", conversation, "--text", "pushed"]);
    let pushed;
    do {
      pushed = await nextNotice();
    } while (!pushed.entries.some((e) => e.text === "pushed"));
    assert.equal(pushed.entries.at(-1).seq, pushed.upToSeq);
    abort.abort();
  });

  test("an error without a body arrives as a status in the headers (trailers-only)", async () => {
    const sync = create(pb.SyncRequestSchema, {});
    const missing = await call(server.url, `${T}Sync`, pb.SyncRequestSchema, sync, { origin: ALLOWED });
    assert.equal(missing.response.status, 200);
    assert.equal(missing.bytes.length, 0);
    assert.equal(missing.status.from, "headers");
    assert.equal(missing.status.code, Code.Unauthenticated);
    assert.match(missing.status.message, /authorization/);
    // The browser may read them: they are exposed to the allowed origin.
    assert.equal(missing.response.headers.get("access-control-allow-origin"), ALLOWED);
    const exposed = missing.response.headers.get("access-control-expose-headers").split(",");
    for (const name of ["grpc-status", "grpc-message", "grpc-status-details-bin"]) {
      assert.ok(exposed.includes(name), `${name} in ${exposed}`);
    }

    const forged = `${alice.slice(0, -2)}xx`;
    const refused = await call(server.url, `${T}Sync`, pb.SyncRequestSchema, sync, { token: forged });
    assert.equal(refused.status.code, Code.Unauthenticated);

    // The same through the client library the web app uses: a status, not a
    // network error.
    const client = createClient(
      pb.Timeline,
      createGrpcWebTransport({
        baseUrl: server.url,
        interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${forged}`), next(req))],
      }),
    );
    await assert.rejects(client.sync({}), (error) => {
      assert.ok(error instanceof ConnectError, String(error));
      assert.equal(error.code, Code.Unauthenticated);
      return true;
    });
    const stream = client.subscribe({ afterSeq: 0n });
    await assert.rejects(
      (async () => {
        for await (const _ of stream);
      })(),
      (error) => error.code === Code.Unauthenticated,
    );
  });

  test("bad requests get the same statuses as over native gRPC and change nothing", async () => {
    const bob = server.deviceToken(2, "bad-input");
    const conversation = server.tl(alice, ["conversation", "create", "--members", "3"]).trim();
    const denied = await call(
      server.url,
      `${T}Send`,
      pb.SendRequestSchema,
      create(pb.SendRequestSchema, { conversationId: BigInt(conversation), text: "let me in" }),
      { token: bob },
    );
    assert.equal(denied.status.code, Code.PermissionDenied);
    const garbage = await call(server.url, `${T}Send`, null, null, {
      token: bob,
      body: frame(new Uint8Array([0xff, 0xff, 0xff])),
    });
    assert.equal(garbage.status.code, Code.InvalidArgument, garbage.status.message);
    const badId = await call(
      server.url,
      `${T}Send`,
      pb.SendRequestSchema,
      create(pb.SendRequestSchema, { conversationId: BigInt(conversation), text: "x", clientMsgId: "not-a-uuid" }),
      { token: alice },
    );
    assert.equal(badId.status.code, Code.InvalidArgument);
    const markDenied = await call(
      server.url,
      `${T}MarkRead`,
      pb.MarkReadRequestSchema,
      create(pb.MarkReadRequestSchema, { conversationId: BigInt(conversation) }),
      { token: bob },
    );
    assert.equal(markDenied.status.code, Code.PermissionDenied);
    const markPast = await call(
      server.url,
      `${T}MarkRead`,
      pb.MarkReadRequestSchema,
      create(pb.MarkReadRequestSchema, { conversationId: BigInt(conversation), through: 99n }),
      { token: alice },
    );
    assert.equal(markPast.status.code, Code.InvalidArgument, markPast.status.message);
    // Changes to messages: a device deletes for everyone never, an edit
    // names an existing message.
    const kept = BigInt(server.tlJson(alice, ["send", "--conversation", conversation, "--text", "kept"])[0].conv_seq);
    const deleteForAll = await call(
      server.url,
      `${T}DeleteMessage`,
      pb.DeleteMessageRequestSchema,
      create(pb.DeleteMessageRequestSchema, { conversationId: BigInt(conversation), convSeq: kept }),
      { token: alice },
    );
    assert.equal(deleteForAll.status.code, Code.PermissionDenied, deleteForAll.status.message);
    const editNothing = await call(
      server.url,
      `${T}EditMessage`,
      pb.EditMessageRequestSchema,
      create(pb.EditMessageRequestSchema, { conversationId: BigInt(conversation), convSeq: 99n, text: "x" }),
      { token: alice },
    );
    assert.equal(editNothing.status.code, Code.NotFound, editNothing.status.message);
    const history = server.tlJson(alice, ["history", "--conversation", conversation]);
    assert.deepEqual(
      history.map((e) => [e.kind, e.text]),
      [
        ["conversation_created", ""],
        ["message", "kept"],
      ],
    );
  });

  test("CORS: an allowed origin's preflight is answered, another origin's is not", async () => {
    const preflight = (origin) =>
      fetch(`${server.url}${T}Sync`, {
        method: "OPTIONS",
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
        },
      });
    const allowed = await preflight(ALLOWED);
    assert.ok(allowed.ok, `status ${allowed.status}`);
    assert.equal(allowed.headers.get("access-control-allow-origin"), ALLOWED);
    assert.match(allowed.headers.get("access-control-allow-methods"), /POST/);
    const headers = allowed.headers.get("access-control-allow-headers").split(",");
    for (const name of ["authorization", "content-type", "x-grpc-web", "x-user-agent"]) {
      assert.ok(headers.includes(name), `${name} in ${headers}`);
    }
    const disallowed = await preflight(DISALLOWED);
    assert.equal(disallowed.headers.get("access-control-allow-origin"), null);
    // A call made anyway (not by a browser) is served, but carries no
    // permission for the page of that origin to read it.
    const sync = await call(server.url, `${T}Sync`, pb.SyncRequestSchema, create(pb.SyncRequestSchema, {}), {
      token: alice,
      origin: DISALLOWED,
    });
    assert.equal(sync.response.headers.get("access-control-allow-origin"), null);
  });

  test("the web root is served next to the API; other methods stay gRPC", async () => {
    const page = await fetch(`${server.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type"), /text\/html/);
    assert.match(await page.text(), /<div id="app">/);
    const script = await fetch(`${server.url}/app.js`);
    assert.equal(script.status, 200);
    assert.equal((await fetch(`${server.url}/missing.js`)).status, 404);
    assert.equal((await fetch(`${server.url}/..%2f..%2fetc%2fpasswd`)).status, 404);
    const unknown = await call(server.url, "/timeline.v1.Nowhere/Call", pb.SyncRequestSchema, create(pb.SyncRequestSchema, {}), {
      token: alice,
    });
    assert.equal(unknown.status.code, Code.Unimplemented);
  });
});
