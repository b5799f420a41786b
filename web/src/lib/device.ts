// One signed-in device: its client, checkpoint, cached inbox, outbox and
// sync loop, stored under a key of its own (server, user, device), so two
// tokens for different devices never share a checkpoint.

import { Checkpoint } from "./checkpoint.js";
import { ConversationList } from "./conversations.js";
import { codeOf } from "./errors.js";
import { InboxCache, itemOf } from "./inbox.js";
import { Lifecycle } from "./lifecycle.js";
import { Outbox } from "./outbox.js";
import type { KeyValue } from "./storage.js";
import { SyncEngine, type SyncStatus } from "./sync.js";
import { parseToken, type TokenInfo } from "./token.js";
import { CALL_TIMEOUT_MS, connect, type TimelineClient } from "./transport.js";
import { Code } from "@connectrpc/connect";
import { EntryKind } from "../gen/timeline/v1/timeline_pb.js";

/** The sync loop's status, or waiting for another tab of the device. */
export type DeviceStatus = SyncStatus | { kind: "waiting"; reason: string };

/** History page size when the user pages back through a conversation. */
export const HISTORY_PAGE = 50;

export class Device {
  readonly info: TokenInfo;
  readonly client: TimelineClient;
  readonly checkpoint: Checkpoint;
  readonly cache: InboxCache;
  readonly outbox: Outbox;
  readonly list: ConversationList;
  readonly lifecycle: Lifecycle;
  readonly engine: SyncEngine;
  status: DeviceStatus = { kind: "connecting" };
  /** The checkpoint this page started from (what storage held). */
  resumedFrom: bigint;
  readonly #abort = new AbortController();
  readonly #records = new Map<bigint, Promise<void>>();
  /** A MarkRead in flight per conversation (one at a time each). */
  readonly #marking = new Map<bigint, Promise<void>>();
  readonly #statusListeners = new Set<(status: DeviceStatus) => void>();
  readonly #prefix: string;

  constructor(
    readonly baseUrl: string,
    readonly token: string,
    storage: KeyValue,
  ) {
    this.info = parseToken(token);
    const prefix = `timeline:v1:${baseUrl}:${this.info.userId}:${this.info.deviceId}:`;
    this.#prefix = prefix;
    this.client = connect(baseUrl, token);
    this.checkpoint = Checkpoint.open(storage, `${prefix}checkpoint`);
    this.resumedFrom = this.checkpoint.seq;
    this.cache = new InboxCache(storage, `${prefix}inbox`, this.info.userId);
    if (this.cache.dropped) {
      // What was applied is gone: read the inbox again from the start
      // (applying is idempotent, so nothing shows twice).
      this.checkpoint.restartAt(0n);
    }
    this.outbox = new Outbox(this.client, storage, `${prefix}outbox`);
    this.lifecycle = new Lifecycle(this.client, this.#abort.signal);
    this.list = new ConversationList(
      this.client,
      storage,
      `${prefix}list`,
      this.info.userId,
      this.#abort.signal,
      (conversationId, convSeq) => this.cache.withdrawn(conversationId, convSeq),
    );
    this.cache.onChange((conversationId) => this.list.scrub(conversationId));
    const refreshList = () => void this.list.refresh().catch(() => undefined);
    this.engine = new SyncEngine(this.client, this.checkpoint, this.cache, {
      status: (status) => this.#setStatus(status),
      applied: (entry) => {
        if (entry.senderId === this.info.userId && entry.clientMsgId) {
          this.outbox.confirmed(entry.clientMsgId);
        }
        if (entry.kind === EntryKind.MEMBERS_ADDED || entry.kind === EntryKind.MEMBERS_REMOVED) {
          // The record's member list changed: fetch it again when shown.
          this.#records.delete(entry.conversationId);
          this.fetchRecord(entry.conversationId).catch(() => undefined);
        }
      },
      // The list moves on by the fold at once, and the server's first page
      // (its totals, large groups, conversations new to the list) follows.
      inbox: (entries) => {
        this.list.apply(entries);
        refreshList();
      },
      largeGroupsRead: refreshList,
    });
  }

  #setStatus(status: DeviceStatus): void {
    this.status = status;
    // Back online: a list call that failed meanwhile is made now (not
    // modified when nothing changed).
    if (status.kind === "live") this.list.refresh().catch(() => undefined);
    for (const listener of this.#statusListeners) listener(status);
  }

  onStatus(listener: (status: DeviceStatus) => void): () => void {
    this.#statusListeners.add(listener);
    return () => this.#statusListeners.delete(listener);
  }

  /**
   * Starts syncing. Two tabs of one device would write one checkpoint and
   * cache from two memories (each overwriting what the other applied), so
   * the device's sync runs under a Web Lock: a second tab waits, saying why,
   * until the first closes (a reload releases it as the old page unloads).
   * Where Web Locks do not exist (pages that are not a secure context) the
   * tab syncs without one.
   */
  start(): void {
    const run = async () => {
      this.outbox.resumeAll();
      this.list.refresh().catch(() => undefined);
      await this.engine.run(this.#abort.signal);
    };
    const locks = typeof navigator === "undefined" ? undefined : navigator.locks;
    if (!locks) {
      void run();
      return;
    }
    const name = `${this.#prefix}sync`;
    const signal = this.#abort.signal;
    void locks.request(name, { ifAvailable: true }, async (lock) => {
      if (lock) return run();
      this.#setStatus({ kind: "waiting", reason: "this device is open in another tab" });
      this.cache.writable = false;
      this.list.writable = false;
      // What the other tab stored is shown; the server's list is read
      // (a read changes nothing) but not stored.
      this.list.refresh().catch(() => undefined);
      await locks
        .request(name, { signal }, () => {
          // The other tab synced meanwhile: start from what it stored.
          this.checkpoint.reload();
          this.cache.reload();
          this.cache.writable = true;
          this.list.reload();
          this.list.writable = true;
          this.outbox.reload();
          this.resumedFrom = this.checkpoint.seq;
          return run();
        })
        .catch(() => undefined);
    });
  }

  /** Whether this tab syncs the device (not waiting for another tab). */
  get syncing(): boolean {
    return this.status.kind !== "waiting";
  }

  /**
   * Marks a conversation read through the newest entry the page holds for
   * it (what the user is looking at, never something not shown yet), while
   * that is past the read marker and `looking()` says the user still sees
   * it. One call at a time per conversation; entries that arrive meanwhile
   * are marked by the next round. A failure ends it (the badge stays; the
   * next look tries again).
   */
  markSeen(conversationId: bigint, looking: () => boolean): Promise<void> {
    const running = this.#marking.get(conversationId);
    if (running) return running;
    const marking = (async () => {
      // Registered below before anything here runs (and deletes it).
      await null;
      try {
        for (;;) {
          const newest = this.cache.entries(conversationId).at(-1)?.convSeq;
          const row = this.list.row(conversationId);
          if (newest === undefined || !row?.member || newest <= row.readThrough || !looking()) return;
          await this.list.markRead(conversationId, newest);
        }
      } finally {
        this.#marking.delete(conversationId);
      }
    })();
    this.#marking.set(conversationId, marking);
    return marking;
  }

  stop(): void {
    this.#abort.abort();
  }

  /** The conversation's record (title, members), fetched once per sign-in. */
  fetchRecord(conversationId: bigint): Promise<void> {
    let fetching = this.#records.get(conversationId);
    if (!fetching) {
      fetching = this.client
        .getConversation({ conversationId }, { timeoutMs: CALL_TIMEOUT_MS, signal: this.#abort.signal })
        .then((reply) => {
          if (reply.conversation) this.cache.setRecord(reply.conversation);
          this.cache.save();
        })
        .catch((error) => {
          // A transient failure is tried again on the next look; a refusal
          // (not a member any more) is not.
          if (codeOf(error) !== Code.PermissionDenied) this.#records.delete(conversationId);
          throw error;
        });
      this.#records.set(conversationId, fetching);
    }
    return fetching;
  }

  /**
   * A page of history: the newest (no `before`) or the one below `before`.
   * Merged into the cache; the cache's `hasEarlier` says whether more exist.
   */
  async loadHistory(conversationId: bigint, before?: bigint): Promise<void> {
    const reply = await this.client.history(
      { conversationId, before: before ?? 0n, limit: HISTORY_PAGE },
      { timeoutMs: CALL_TIMEOUT_MS, signal: this.#abort.signal },
    );
    this.cache.applyHistory(conversationId, reply.entries.map(itemOf), reply.hasMore);
    this.cache.save();
  }
}
