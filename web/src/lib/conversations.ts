// The conversation list, as the server keeps it: ListConversations pages
// (most recent activity first, a cursor for the next page), unread and
// mention counts, the totals, and MarkRead. Kept in browser storage with
// the list's `version`, so a reload shows the stored list at once and the
// first call answers "not modified" when nothing changed.
//
// Staying current: every inbox batch the device applies is folded into the
// rows it concerns (./fold.ts, only entries after the seq a row was served
// at, so nothing counts twice), and the first page is fetched again with
// `known_version` (one call at a time; a request while one is in flight
// runs once after it). The server's rows replace folded ones unless the
// device has folded past them. The totals are the server's, moved by what
// the fold changes after the seq the server counted them at.
//
// Counts are never made up on the device from its cached entries: a row
// shows what the server said, moved on only by the rules of the fold.
//
// One thing the device's own view overrules: a preview of a message it
// knows was recalled or deleted (`withdrawn`, from the cache) shows no
// text, whatever a reply says; a withdrawal is final (client/src/view.rs),
// and a large group's recall reaches the device through the timeline, not
// the inbox the fold reads.

import { ConversationKind, type ConversationState, type Entry, type ListConversationsReply } from "../gen/timeline/v1/timeline_pb.js";
import { foldEntry, type ConversationRow } from "./fold.js";
import type { KeyValue } from "./storage.js";
import { CALL_TIMEOUT_MS, type TimelineClient } from "./transport.js";

/** Conversations per list page (the server caps pages at 500). */
export const LIST_PAGE = 50;
/** Rows kept in memory and storage: "more" stops offering pages past it. */
export const MAX_LISTED = 2_000;

export type { ConversationRow } from "./fold.js";

export function rowOf(state: ConversationState, asOfSeq: bigint): ConversationRow {
  const last = state.lastMessage;
  return {
    id: state.conversationId,
    direct: state.kind === ConversationKind.DIRECT,
    title: state.title,
    member: state.member,
    readFanout: state.readFanout,
    lastConvSeq: state.lastConvSeq,
    lastActivityMs: Number(state.lastActivityMs),
    last: last && {
      convSeq: last.convSeq,
      senderId: last.senderId,
      text: last.text,
      sentAtMs: Number(last.sentAtMs),
      removed: last.removed,
      edited: last.edited,
    },
    unread: Number(state.unread),
    mentions: Number(state.mentions),
    readThrough: state.readThrough,
    peerReadThrough: state.peerReadThrough,
    asOfSeq,
  };
}

/** What a row adds to the totals: a left conversation counts nothing. */
function counted(row: ConversationRow): [number, number] {
  return row.member ? [row.unread, row.mentions] : [0, 0];
}

/** The list's order: newest activity first, ties by id, highest first (the server's). */
function newestFirst(a: ConversationRow, b: ConversationRow): number {
  return b.lastActivityMs - a.lastActivityMs || (b.id > a.id ? 1 : b.id < a.id ? -1 : 0);
}

interface Stored {
  version: string;
  cursor: string;
  pages: number;
  totalUnread: number;
  totalMentions: number;
  asOfSeq?: string;
  rows: Record<string, string | number | boolean | undefined | object>[];
}

const BIGINT_FIELDS = ["id", "lastConvSeq", "readThrough", "peerReadThrough", "asOfSeq"] as const;

export class ConversationList {
  readonly #rows = new Map<bigint, ConversationRow>();
  readonly #listeners = new Set<() => void>();
  /** The first page's version (empty: never fetched). */
  #version = "";
  /** The next page's cursor after the pages loaded (empty: no more). */
  #cursor = "";
  #pages = 0;
  totalUnread = 0;
  totalMentions = 0;
  /** The inbox seq the totals were counted at by the server. */
  #asOfSeq = 0n;
  /** A first-page fetch in flight, and whether another was asked for meanwhile. */
  #refreshing: Promise<void> | null = null;
  #again = false;
  /** Whether the list was fetched (or read from storage) at least once. */
  loaded = false;
  /** Like the cache's: a waiting tab shows the list but leaves storage alone. */
  writable = true;

  constructor(
    private readonly client: TimelineClient,
    private readonly storage: KeyValue,
    private readonly key: string,
    readonly me: bigint,
    private readonly signal?: AbortSignal,
    private readonly withdrawn: (conversationId: bigint, convSeq: bigint) => boolean = () => false,
  ) {
    this.reload();
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  rows(): ConversationRow[] {
    return [...this.#rows.values()].sort(newestFirst);
  }

  row(id: bigint): ConversationRow | undefined {
    return this.#rows.get(id);
  }

  /** More conversations exist beyond the pages loaded. */
  get hasMore(): boolean {
    return this.#cursor !== "" && this.#rows.size < MAX_LISTED;
  }

  /**
   * Fetches the first page again (with `known_version`). Calls while one is
   * in flight are coalesced into one more after it, so the last change is
   * always fetched and at most one call runs.
   */
  refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#again = true;
      return this.#refreshing;
    }
    const run = async () => {
      try {
        do {
          this.#again = false;
          const reply = await this.client.listConversations(
            { limit: LIST_PAGE, knownVersion: this.#version },
            { timeoutMs: CALL_TIMEOUT_MS, signal: this.signal },
          );
          if (reply.notModified) continue;
          this.#version = reply.version;
          if (this.#pages <= 1) {
            this.#cursor = reply.cursor;
            this.#pages = 1;
          }
          this.merge(reply);
        } while (this.#again);
      } finally {
        this.#refreshing = null;
      }
    };
    this.#refreshing = run();
    return this.#refreshing;
  }

  /** The next page (after the ones loaded). */
  async loadMore(): Promise<void> {
    if (!this.hasMore) return;
    const reply = await this.client.listConversations(
      { limit: LIST_PAGE, cursor: this.#cursor },
      { timeoutMs: CALL_TIMEOUT_MS, signal: this.signal },
    );
    this.#cursor = reply.cursor;
    this.#pages += 1;
    this.merge(reply);
  }

  /**
   * Folds inbox entries (in seq order) into the rows they concern. A
   * conversation not listed yet comes with the next first page.
   */
  apply(entries: readonly Entry[]): void {
    let changed = false;
    for (const entry of entries) {
      const row = this.#rows.get(entry.conversationId);
      if (!row) continue;
      const before = counted(row);
      if (!foldEntry(row, entry, this.me)) continue;
      changed = true;
      if (entry.seq > this.#asOfSeq) this.addToTotals(counted(row), before);
    }
    if (changed) this.changed();
  }

  /**
   * Raises the read marker of a conversation through `through` (a conv_seq
   * the user has seen). The row takes the reply's counts; the marker also
   * comes through the inbox, where it changes nothing more.
   */
  async markRead(conversationId: bigint, through: bigint): Promise<void> {
    const reply = await this.client.markRead(
      { conversationId, through },
      { timeoutMs: CALL_TIMEOUT_MS, signal: this.signal },
    );
    const row = this.#rows.get(conversationId);
    if (row && reply.readThrough >= row.readThrough) {
      const before = counted(row);
      row.readThrough = reply.readThrough;
      row.unread = Number(reply.unread);
      row.mentions = Number(reply.mentions);
      this.addToTotals(counted(row), before);
      this.changed();
    }
    // The totals are the server's: ask for them (not modified when the
    // marker changed nothing).
    await this.refresh();
  }

  private merge(reply: ListConversationsReply): void {
    this.totalUnread = Number(reply.totalUnread);
    this.totalMentions = Number(reply.totalMentions);
    this.#asOfSeq = reply.asOfSeq;
    for (const state of reply.conversations) {
      const known = this.#rows.get(state.conversationId);
      // The device may have folded entries the reply does not count yet
      // (pushed after the server's fold): keep those, and the server's
      // title and kind.
      if (known && known.asOfSeq > reply.asOfSeq) {
        known.title = state.title;
        known.direct = state.kind === ConversationKind.DIRECT;
        known.readFanout = state.readFanout;
        this.addToTotals(counted(known), counted(rowOf(state, reply.asOfSeq)));
        continue;
      }
      const row = rowOf(state, reply.asOfSeq);
      this.scrubbed(row);
      this.#rows.set(state.conversationId, row);
    }
    // Conversations that were on the first page once stay listed; past
    // the bound the least recent go (they come back with their activity).
    if (this.#rows.size > MAX_LISTED) {
      for (const row of this.rows().slice(MAX_LISTED)) this.#rows.delete(row.id);
    }
    this.loaded = true;
    this.changed();
  }

  /** Drops the preview's text when the device knows its message was withdrawn; true if it did. */
  private scrubbed(row: ConversationRow): boolean {
    const last = row.last;
    if (!last || (last.removed && last.text === "") || !this.withdrawn(row.id, last.convSeq)) return false;
    last.text = "";
    last.removed = true;
    return true;
  }

  /** The cache learned of a withdrawal (say, from a large group's timeline): apply it to the preview. */
  scrub(conversationId: bigint | null): void {
    const rows = conversationId === null ? [...this.#rows.values()] : [this.#rows.get(conversationId)];
    let changed = false;
    for (const row of rows) if (row && this.scrubbed(row)) changed = true;
    if (changed) this.changed();
  }

  private addToTotals(now: [number, number], before: [number, number]): void {
    this.totalUnread = Math.max(0, this.totalUnread + now[0] - before[0]);
    this.totalMentions = Math.max(0, this.totalMentions + now[1] - before[1]);
  }

  /** Reads the stored list again (another tab of the device wrote it). */
  reload(): void {
    this.#rows.clear();
    this.#version = "";
    this.#cursor = "";
    this.#pages = 0;
    this.#asOfSeq = 0n;
    this.loaded = false;
    const text = this.storage.get(this.key);
    if (text !== null) {
      try {
        const stored = JSON.parse(text) as Stored;
        for (const s of stored.rows) {
          const row = { ...s } as any;
          for (const field of BIGINT_FIELDS) row[field] = BigInt(s[field] as string);
          if (row.last) {
            // Rows stored before the lifecycle have no removed/edited.
            row.last = {
              removed: false,
              edited: false,
              ...row.last,
              convSeq: BigInt(row.last.convSeq),
              senderId: BigInt(row.last.senderId),
            };
          }
          this.#rows.set(row.id, row as ConversationRow);
        }
        this.#version = stored.version;
        this.#cursor = stored.cursor;
        this.#pages = stored.pages;
        this.totalUnread = stored.totalUnread;
        this.totalMentions = stored.totalMentions;
        this.#asOfSeq = BigInt(stored.asOfSeq ?? "0");
        this.loaded = true;
      } catch {
        // A stored list that does not parse is fetched again.
        this.#rows.clear();
        this.#version = "";
      }
    }
    for (const listener of this.#listeners) listener();
  }

  private changed(): void {
    this.save();
    for (const listener of this.#listeners) listener();
  }

  private save(): void {
    if (!this.writable) return;
    const rows = this.rows();
    const stored: Stored = {
      version: this.#version,
      cursor: this.#cursor,
      pages: this.#pages,
      totalUnread: this.totalUnread,
      totalMentions: this.totalMentions,
      asOfSeq: this.#asOfSeq.toString(),
      rows: rows.map((row) => {
        const out: Record<string, any> = { ...row };
        for (const field of BIGINT_FIELDS) out[field] = row[field].toString();
        if (row.last) out.last = { ...row.last, convSeq: row.last.convSeq.toString(), senderId: row.last.senderId.toString() };
        return out;
      }),
    };
    this.storage.set(this.key, JSON.stringify(stored));
  }
}
