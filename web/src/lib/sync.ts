// The sync loop: catch up from the stored checkpoint (one CatchUp stream of
// Sync's pages; Sync page by page from a server that cannot stream), then follow
// the Subscribe stream, pulling whenever a notice does not carry every entry,
// and reading large groups (read fanout: pushed as group notices) from their
// conversation timelines. Mirrors `Client::sync_all` and `Client::watch` in
// client/src/lib.rs; docs/PROTOCOL.md is the contract both follow.
//
// Invariants: entries are applied in seq order and saved before the
// checkpoint moves past them; the checkpoint is saved before it is
// acknowledged; a transient failure (server restart, network) reconnects
// with backoff and resumes from the saved checkpoint, so nothing is skipped
// and a repeat is absorbed by the idempotent cache. Read markers and large
// groups' inbox copies are handed to the read state (the `inbox` hook), not
// to the cached conversations: a marker is no message, and a copy's message
// is shown once, from the group's timeline (read at once when one arrives).

import { Code, ConnectError } from "@connectrpc/connect";
import { EntryKind, type Entry, type Notice, type SyncReply } from "../gen/timeline/v1/timeline_pb.js";
import type { Checkpoint } from "./checkpoint.js";
import { codeOf, describe, retryable } from "./errors.js";
import { itemOf, type InboxCache } from "./inbox.js";
import { CALL_TIMEOUT_MS, type TimelineClient } from "./transport.js";

/** History page size when reading a large group (LARGE_GROUP_PAGE). */
export const LARGE_GROUP_PAGE = 500;
/**
 * How often large groups are read while live besides their push notices:
 * a backstop for a notice sent between the catch-up and the stream's start
 * (the server does not replay group notices).
 */
export const LARGE_GROUP_POLL_MS = 30_000;
/** First reconnect delay; doubles up to MAX_RECONNECT_DELAY_MS. */
export const RECONNECT_BASE_DELAY_MS = 250;
export const MAX_RECONNECT_DELAY_MS = 5_000;

export type SyncStatus =
  | { kind: "connecting" }
  | { kind: "live" }
  | { kind: "offline"; error: string; retryInMs: number }
  /** Not retried: the user must act (a refused token, say). */
  | { kind: "stopped"; code: Code; error: string };

export interface SyncHooks {
  status(status: SyncStatus): void;
  /** An entry was applied for the first time (outbox confirmation). */
  applied?(entry: Entry): void;
  /** The checkpoint had expired: the device restarted from oldest_seq - 1. */
  expired?(oldestSeq: bigint): void;
  /** A batch of inbox entries was applied and saved (all of them, in seq order). */
  inbox?(entries: readonly Entry[]): void;
  /** New entries of large groups were read from their timelines. */
  largeGroupsRead?(): void;
}

/**
 * Whether an inbox entry goes into the shown conversation: a read marker
 * is read state, not a message, and a large group's copy (for its sender
 * or a member it mentions) is shown once, from the group's timeline.
 */
export function shownFromInbox(entry: Entry): boolean {
  if (entry.kind === EntryKind.READ_MARKER) return false;
  return !(entry.kind === EntryKind.MESSAGE && entry.readFanout && entry.seq > 0n);
}

/**
 * Whether pushed inbox entries call for a pull (the rule of `follow_up` in
 * the Rust client): a membership event may start a large group (Sync lists
 * it with the position reading starts at) or end the user's own (Sync reads
 * a left group up to the leave, while notices of what was sent just before
 * it may never come); a large group's copy (a mention, or the user's own
 * send from another device) has the group read now.
 */
export function needsPull(entries: Entry[], me: bigint): boolean {
  return entries.some(
    (e) =>
      e.readFanout ||
      e.kind === EntryKind.MEMBERS_ADDED ||
      e.kind === EntryKind.CONVERSATION_CREATED ||
      (e.kind === EntryKind.MEMBERS_REMOVED && e.members.includes(me)),
  );
}

/** Whether a notice carries every entry since the previous one. */
export function noticeIsComplete(notice: Notice): boolean {
  const last = notice.entries.at(-1);
  return last !== undefined && last.seq === notice.upToSeq;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

export class SyncEngine {
  /** Sync passes and notice handling run one at a time. */
  #serial: Promise<unknown> = Promise.resolve();
  #userId = 0n;
  /** False once the server answered CatchUp with UNIMPLEMENTED (an older node). */
  #streams = true;

  constructor(
    private readonly client: TimelineClient,
    private readonly checkpoint: Checkpoint,
    private readonly cache: InboxCache,
    private readonly hooks: SyncHooks,
  ) {}

  /** Follows the inbox until `signal` aborts or a non-transient error. */
  async run(signal: AbortSignal): Promise<void> {
    let delay = RECONNECT_BASE_DELAY_MS;
    while (!signal.aborted) {
      this.hooks.status({ kind: "connecting" });
      try {
        await this.watchOnce(signal, () => {
          delay = RECONNECT_BASE_DELAY_MS;
        });
      } catch (error) {
        if (signal.aborted) return;
        // Subscribe from a checkpoint retention has passed: the next Sync
        // says checkpoint_expired and restarts from the floor.
        const expired = codeOf(error) === Code.FailedPrecondition;
        // A stream the server dropped because the page stopped reading (a
        // throttled background tab) or the user's subscription cap: sync,
        // then subscribe again, after the backoff.
        const dropped = codeOf(error) === Code.ResourceExhausted;
        if (!retryable(error) && !dropped && !expired) {
          this.hooks.status({ kind: "stopped", code: codeOf(error), error: describe(error) });
          return;
        }
        this.hooks.status({ kind: "offline", error: describe(error), retryInMs: delay });
      }
      if (signal.aborted) return;
      // The stream ended (a server shutdown) or failed: reconnect.
      await sleep(delay, signal);
      delay = Math.min(delay * 2, MAX_RECONNECT_DELAY_MS);
    }
  }

  /** Pulls everything after the checkpoint, then what is new in large groups. */
  syncAll(signal?: AbortSignal): Promise<number> {
    return this.serially(() => this.pull(signal));
  }

  private async watchOnce(signal: AbortSignal, connected: () => void): Promise<void> {
    let largeGroups = await this.syncAll(signal);
    // The stream ends with the page's signal, or when a large-group poll
    // fails: then this pass fails with the poll's error and the caller
    // reconnects with backoff (as the Rust client's watch does), instead
    // of staying "live" with large groups no longer read.
    const session = new AbortController();
    signal.addEventListener("abort", () => session.abort(), { once: true });
    let pollError: unknown = undefined;
    const stream = this.client.subscribe(
      { afterSeq: this.checkpoint.seq, includeEntries: true },
      { signal: session.signal },
    );
    // Caught up and subscribed: the first notice comes only once there is
    // something new, so this is as live as the page can tell. A failure of
    // the stream turns it offline again.
    connected();
    this.hooks.status({ kind: "live" });
    const poller = new AbortController();
    signal.addEventListener("abort", () => poller.abort());
    const poll = (async () => {
      while (!poller.signal.aborted) {
        await sleep(LARGE_GROUP_POLL_MS, poller.signal);
        if (poller.signal.aborted || largeGroups === 0) continue;
        try {
          largeGroups = await this.syncAll(poller.signal);
        } catch (error) {
          if (poller.signal.aborted) return;
          pollError = error;
          session.abort();
          return;
        }
      }
    })();
    try {
      for await (const notice of stream) {
        await this.serially(async () => {
          let pulled = false;
          if (noticeIsComplete(notice)) {
            const fresh = notice.entries.filter((e) => e.seq > this.checkpoint.seq);
            await this.deliverInbox(fresh, notice.upToSeq, signal);
            if (needsPull(fresh, this.#userId)) {
              largeGroups = await this.pull(signal);
              pulled = true;
            }
          } else if (notice.upToSeq > this.checkpoint.seq) {
            largeGroups = await this.pull(signal);
            pulled = true;
          }
          // A large group became readable further (pushed to its online
          // members), or the server dropped such notices for this device:
          // read the groups from their saved positions now.
          if (!pulled && (notice.groups.length > 0 || notice.groupsResync)) {
            largeGroups = await this.pull(signal);
          }
        });
      }
    } catch (error) {
      if (pollError === undefined) throw error;
    } finally {
      poller.abort();
      // A failed poll surfaces through the stream's own failure or the
      // next pass; it must not go unhandled.
      await poll.catch(() => undefined);
    }
    if (pollError !== undefined) throw pollError;
  }

  private serially<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(task, task);
    this.#serial = run.catch(() => undefined);
    return run;
  }

  /** One catch-up pass; returns how many large groups the user is in. */
  private async pull(signal?: AbortSignal): Promise<number> {
    let page: SyncReply;
    for (;;) {
      page = await this.readInbox(signal);
      if (page.checkpointExpired) {
        // Entries after the checkpoint were trimmed: what the device shows
        // may have holes, so it is dropped (History refills it) and the
        // inbox is read on from the retention floor.
        this.cache.forgetEntries();
        this.cache.save();
        this.checkpoint.restartAt(page.oldestSeq > 0n ? page.oldestSeq - 1n : 0n);
        this.hooks.expired?.(page.oldestSeq);
        continue;
      }
      break;
    }
    // Groups the user left are read up to the last message sent while a
    // member, like the others.
    let readAny = false;
    for (const top of [...page.largeGroups, ...page.leftLargeGroups]) {
      // From the saved position, never before the membership began.
      const saved = this.checkpoint.conversation(top.conversationId) ?? 0n;
      let read = saved > top.joinedConvSeq ? saved : top.joinedConvSeq;
      while (read < top.convSeq) {
        const history = await this.client.history(
          { conversationId: top.conversationId, after: read, limit: LARGE_GROUP_PAGE },
          { timeoutMs: CALL_TIMEOUT_MS, signal },
        );
        const last = history.entries.at(-1);
        if (!last) break;
        for (const entry of history.entries) this.applyEntry(entry);
        this.cache.save();
        readAny = true;
        read = last.convSeq;
        this.checkpoint.saveConversation(top.conversationId, read);
        if (!history.hasMore) break;
      }
    }
    if (readAny) this.hooks.largeGroupsRead?.();
    return page.largeGroups.length;
  }

  /**
   * Delivers the inbox from the checkpoint on, up to a complete page (or
   * one saying the checkpoint expired), which it returns: streamed by
   * CatchUp, or page by page with Sync when the server cannot stream (an
   * older node: UNIMPLEMENTED; one with too many catch-ups open:
   * RESOURCE_EXHAUSTED). Every page is applied, saved and acknowledged
   * before the next is taken, so a stream that breaks off resumes from the
   * saved checkpoint.
   */
  private async readInbox(signal?: AbortSignal): Promise<SyncReply> {
    while (this.#streams) {
      const before = this.checkpoint.seq;
      const page = await this.catchUp(signal);
      if (page === "fall back") break;
      if (page !== "ended early") return page;
      // A stream that brought nothing is not called again at once.
      if (this.checkpoint.seq === before) break;
    }
    for (;;) {
      const page = await this.client.sync(
        { afterSeq: this.checkpoint.seq, limit: 0 },
        { timeoutMs: CALL_TIMEOUT_MS, signal },
      );
      if (page.checkpointExpired) return page;
      await this.deliverPage(page, signal);
      if (!page.hasMore) return page;
    }
  }

  /**
   * One CatchUp call. Each page must come within CALL_TIMEOUT_MS of the
   * previous one (the call as a whole has no deadline: a long absence is
   * many pages).
   */
  private async catchUp(signal?: AbortSignal): Promise<SyncReply | "ended early" | "fall back"> {
    // An abort that came first is never heard by the listener below.
    if (signal?.aborted) throw new ConnectError("the sync was stopped", Code.Canceled);
    const call = new AbortController();
    const cancel = () => call.abort();
    signal?.addEventListener("abort", cancel);
    let stalled = false;
    // A failure while a page is applied (its ack) is that call's, not the
    // stream's: it is never taken for a reason to page with Sync.
    let applying = false;
    let timer = setTimeout(() => {
      stalled = true;
      call.abort();
    }, CALL_TIMEOUT_MS);
    try {
      const pages = this.client.catchUp({ afterSeq: this.checkpoint.seq, limit: 0 }, { signal: call.signal });
      for await (const page of pages) {
        clearTimeout(timer);
        if (page.checkpointExpired) return page;
        applying = true;
        await this.deliverPage(page, signal);
        applying = false;
        if (!page.hasMore) return page;
        timer = setTimeout(() => {
          stalled = true;
          call.abort();
        }, CALL_TIMEOUT_MS);
      }
      // The server ends a stream after its reply cap: call again.
      return "ended early";
    } catch (error) {
      if (applying) throw error;
      if (stalled && !signal?.aborted) {
        throw new ConnectError("no catch-up page within the call timeout", Code.DeadlineExceeded);
      }
      const code = codeOf(error);
      if (code === Code.Unimplemented) this.#streams = false;
      if (code === Code.Unimplemented || code === Code.ResourceExhausted) return "fall back";
      throw error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", cancel);
    }
  }

  private async deliverPage(page: SyncReply, signal?: AbortSignal): Promise<void> {
    this.#userId = page.userId;
    await this.deliverInbox(page.entries, page.checkpoint, signal);
  }

  /**
   * Applies inbox entries in order, saves them, then the checkpoint, then
   * acknowledges it. A membership event marks where reading that
   * conversation's timeline starts, should it be (or become) a large group
   * (the rule of `deliver_inbox` in the Rust client).
   */
  private async deliverInbox(entries: Entry[], upTo: bigint, signal?: AbortSignal): Promise<void> {
    for (const entry of entries) {
      if (shownFromInbox(entry)) this.applyEntry(entry);
      const joins = entry.kind === EntryKind.CONVERSATION_CREATED || entry.kind === EntryKind.MEMBERS_ADDED;
      if (!joins) continue;
      const saved = this.checkpoint.conversation(entry.conversationId);
      const own = entry.members.includes(this.#userId);
      if (saved === undefined) {
        this.checkpoint.saveConversation(entry.conversationId, entry.convSeq);
      } else if (!own && entry.convSeq > saved) {
        this.checkpoint.saveConversation(entry.conversationId, entry.convSeq);
      }
    }
    this.cache.save();
    if (entries.length > 0) this.hooks.inbox?.(entries);
    if (upTo > this.checkpoint.seq || entries.length > 0) {
      const before = this.checkpoint.seq;
      this.checkpoint.advance(
        upTo,
        entries.map((e) => e.seq),
      );
      if (this.checkpoint.seq > before) {
        await this.client.ack({ seq: this.checkpoint.seq }, { timeoutMs: CALL_TIMEOUT_MS, signal });
      }
    }
  }

  private applyEntry(entry: Entry): void {
    if (this.cache.apply(itemOf(entry))) this.hooks.applied?.(entry);
  }
}

