// The device's cached view of its conversations: a summary per conversation
// (the conversation list) and its newest entries by conv_seq, kept in browser
// storage next to the checkpoint. Applying an entry is idempotent (an entry
// is keyed by conversation and conv_seq), so an entry delivered twice, by a
// reload between applying it and saving the checkpoint or by a history page
// overlapping the inbox, is shown once.
//
// Unread counts are not derived here: counting on the device from a partial
// cache is how other systems' badges go wrong. The list and its counts come
// from the server (./conversations.ts); read markers and large groups'
// inbox copies never enter this cache (sync.ts, shownFromInbox).
//
// The message lifecycle, by the rules every device applies
// (client/src/view.rs): an edit replaces the text only if its version (its
// conv_seq, the server's order) is above the one shown; a recall or delete
// turns the message into a tombstone and drops its text, for good (the
// text is gone from what is stored, not just hidden); delete for me and
// clear history drop messages from this user's view. Lifecycle events are
// not entries of their own here: they change the message they name. What
// arrives before its message (an edit or recall of a message not cached)
// is remembered, bounded, until the message comes.

import { EntryKind, RemovalKind, type Conversation, type Entry } from "../gen/timeline/v1/timeline_pb.js";
import type { KeyValue } from "./storage.js";

/** Entries kept per conversation in storage (older ones: History). */
export const ENTRIES_PER_CONVERSATION = 200;
/** Conversations kept in storage, the most recently active first. */
export const MAX_CONVERSATIONS = 500;
/**
 * Per conversation: messages hidden by delete for me, withdrawals and
 * edits of messages not cached, each kept at most this many (the lowest
 * conv_seqs go first: History serves old messages in their current state).
 */
export const MAX_REMEMBERED = 500;

/** How a message was withdrawn, and by whom (0: a service). */
export interface Withdrawal {
  kind: "recalled" | "deleted";
  by: bigint;
  atMs: number;
}

/** One timeline entry as the page shows it (bigints as in the protocol). */
export interface Item {
  conversationId: bigint;
  convSeq: bigint;
  /** Inbox seq; 0 for entries read from a conversation timeline. */
  seq: bigint;
  kind: EntryKind;
  senderId: bigint;
  clientMsgId: string;
  text: string;
  sentAtMs: number;
  members: bigint[];
  msgId: bigint;
  /** Messages: 0 as sent, else the conv_seq of the edit shown. */
  version: bigint;
  /** Recalled or deleted: `text` is empty. */
  removed?: Withdrawal;
  /** Lifecycle events: the conv_seq of the message (clear: how far). */
  target?: bigint;
}

/** What a conversation's lifecycle events left that no cached message holds. */
interface Lifecycle {
  /** Deleted for me (above clearedThrough). */
  hidden: Set<bigint>;
  clearedThrough: bigint;
  /** Withdrawals of messages not cached (yet). */
  removed: Map<bigint, Withdrawal>;
  /** The newest edit of each message not cached (yet). */
  edits: Map<bigint, { version: bigint; text: string }>;
}

const LIFECYCLE_KINDS = new Set([
  EntryKind.EDIT,
  EntryKind.RECALL,
  EntryKind.DELETE,
  EntryKind.DELETE_FOR_ME,
  EntryKind.CLEAR_HISTORY,
]);

/** Whether an entry changes another (edit, recall, delete, hiding) rather than being shown. */
export function isLifecycle(kind: EntryKind): boolean {
  return LIFECYCLE_KINDS.has(kind);
}

export interface ConversationSummary {
  id: bigint;
  /** From GetConversation (undefined until fetched). */
  record?: {
    title: string;
    direct: boolean;
    members: bigint[];
    /** A large group's record lists nobody: its count says how many. */
    memberCount?: number;
    readFanout: boolean;
  };
  lastConvSeq: bigint;
  lastActivityMs: number;
  preview: string;
  /** Older entries exist than the ones cached (page back with History). */
  hasEarlier: boolean;
}

export function itemOf(entry: Entry): Item {
  const removed = entry.removed;
  return {
    conversationId: entry.conversationId,
    convSeq: entry.convSeq,
    seq: entry.seq,
    kind: entry.kind,
    senderId: entry.senderId,
    clientMsgId: entry.clientMsgId,
    text: removed ? "" : entry.text,
    sentAtMs: Number(entry.sentAtMs),
    members: [...entry.members],
    msgId: entry.msgId,
    version: entry.version,
    removed: removed && {
      kind: removed.kind === RemovalKind.DELETED ? "deleted" : "recalled",
      by: removed.by,
      atMs: Number(removed.atMs),
    },
    target: entry.target?.convSeq,
  };
}

/** Who withdrew a message, in words ("You", "User 4", "a moderator"). */
export function withdrawnBy(removed: Withdrawal, me: bigint): string {
  if (removed.by === 0n) return "a moderator";
  return removed.by === me ? "you" : `user ${removed.by}`;
}

/** The tombstone's text: "Recalled by user 4" or "Message deleted". */
export function tombstoneOf(removed: Withdrawal, me: bigint): string {
  return removed.kind === "deleted" && removed.by === 0n
    ? "Message deleted"
    : `${removed.kind === "deleted" ? "Deleted" : "Recalled"} by ${withdrawnBy(removed, me)}`;
}

/** The one-line text the list shows for an entry. */
export function previewOf(item: Item, me: bigint): string {
  const names = (ids: bigint[]) => ids.map((id) => (id === me ? "you" : `user ${id}`)).join(", ");
  switch (item.kind) {
    case EntryKind.MESSAGE:
      if (item.removed) return tombstoneOf(item.removed, me);
      return item.senderId === 0n
        ? item.text
        : `${item.senderId === me ? "You" : `User ${item.senderId}`}: ${item.text}`;
    case EntryKind.CONVERSATION_CREATED:
      return "Conversation created";
    case EntryKind.MEMBERS_ADDED:
      return `Added ${names(item.members)}`;
    case EntryKind.MEMBERS_REMOVED:
      return `Removed ${names(item.members)}`;
    default:
      return "";
  }
}

/** Keeps the MAX_REMEMBERED highest conv_seqs of a set or map. */
function bound(kept: Set<bigint> | Map<bigint, unknown>): void {
  if (kept.size <= MAX_REMEMBERED) return;
  const keys = [...kept.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  for (const key of keys.slice(0, kept.size - MAX_REMEMBERED)) kept.delete(key);
}

interface StoredLifecycle {
  hidden: string[];
  clearedThrough: string;
  removed: [string, Withdrawal["kind"], string, number][];
  edits: [string, string, string][];
}

type Listener = (conversationId: bigint | null) => void;

export class InboxCache {
  readonly conversations = new Map<bigint, ConversationSummary>();
  readonly #entries = new Map<bigint, Map<bigint, Item>>();
  readonly #lifecycle = new Map<bigint, Lifecycle>();
  readonly #listeners = new Set<Listener>();
  readonly #changed = new Set<bigint | null>();
  #dirty = false;
  /** The stored cache did not parse and was dropped. */
  dropped = false;

  constructor(
    private readonly storage: KeyValue,
    private readonly key: string,
    readonly me: bigint,
  ) {
    this.load();
  }

  onChange(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Entries of a conversation in conv_seq order. */
  entries(conversationId: bigint): Item[] {
    const entries = [...(this.#entries.get(conversationId)?.values() ?? [])];
    return entries.sort((a, b) => (a.convSeq < b.convSeq ? -1 : a.convSeq > b.convSeq ? 1 : 0));
  }

  /** The conversation list, most recent activity first. */
  list(): ConversationSummary[] {
    return [...this.conversations.values()].sort(
      (a, b) => b.lastActivityMs - a.lastActivityMs || (b.id > a.id ? 1 : -1),
    );
  }

  /**
   * Applies an entry (a message or event, or a lifecycle event changing
   * one). True the first time a message or event is seen (or found
   * hidden); a repeat, or a newer state of a known message, is false.
   */
  apply(item: Item): boolean {
    if (isLifecycle(item.kind)) {
      this.applyChange(item);
      return false;
    }
    const life = this.lifecycle(item.conversationId);
    if (item.convSeq <= life.clearedThrough || life.hidden.has(item.convSeq)) return true;
    let entries = this.#entries.get(item.conversationId);
    if (!entries) {
      entries = new Map();
      this.#entries.set(item.conversationId, entries);
    }
    const shown: Item = { ...item };
    if (shown.kind === EntryKind.MESSAGE) {
      // A withdrawal or an edit that came before the message.
      const removed = shown.removed ?? life.removed.get(shown.convSeq);
      life.removed.delete(shown.convSeq);
      const edit = life.edits.get(shown.convSeq);
      life.edits.delete(shown.convSeq);
      if (removed) {
        shown.removed = removed;
        shown.text = "";
      } else if (edit && edit.version > shown.version) {
        shown.version = edit.version;
        shown.text = edit.text;
      }
    }
    const known = entries.get(item.convSeq);
    if (known) {
      // A history copy (seq 0) learns its inbox seq.
      if (known.seq === 0n && item.seq !== 0n) {
        known.seq = item.seq;
        this.#dirty = true;
      }
      // A newer state of the message (a History page carries edits and
      // withdrawals); nothing brings back a withdrawn one's text.
      if (!known.removed && (shown.removed || shown.version > known.version)) {
        known.text = shown.text;
        known.version = shown.version;
        known.removed = shown.removed;
        this.changedMessage(known);
      }
      return false;
    }
    entries.set(item.convSeq, shown);
    const summary = this.summary(item.conversationId);
    if (item.convSeq >= summary.lastConvSeq) {
      summary.lastConvSeq = item.convSeq;
      summary.lastActivityMs = item.sentAtMs;
      summary.preview = previewOf(shown, this.me);
    }
    this.#dirty = true;
    this.notify(item.conversationId);
    return true;
  }

  /** An edit, recall, delete, delete for me or clear history. */
  private applyChange(item: Item): void {
    const target = item.target;
    if (target === undefined) return;
    const id = item.conversationId;
    const life = this.lifecycle(id);
    // Stored with its conversation's summary: make sure there is one.
    this.summary(id);
    const entries = this.#entries.get(id);
    const known = entries?.get(target);
    const hidden = target <= life.clearedThrough || life.hidden.has(target);
    switch (item.kind) {
      case EntryKind.EDIT:
        if (known) {
          if (known.removed || item.convSeq <= known.version) return;
          known.version = item.convSeq;
          known.text = item.text;
          this.changedMessage(known);
        } else if (!hidden && !life.removed.has(target)) {
          const edit = life.edits.get(target);
          if (edit && edit.version >= item.convSeq) return;
          life.edits.set(target, { version: item.convSeq, text: item.text });
          bound(life.edits);
          this.#dirty = true;
        }
        return;
      case EntryKind.RECALL:
      case EntryKind.DELETE: {
        const removed: Withdrawal = {
          kind: item.kind === EntryKind.RECALL ? "recalled" : "deleted",
          by: item.senderId,
          atMs: item.sentAtMs,
        };
        // The edit's text goes with the message's.
        if (life.edits.delete(target)) this.#dirty = true;
        if (known) {
          if (known.removed) return;
          known.removed = removed;
          known.text = "";
          this.changedMessage(known);
        } else if (!hidden) {
          life.removed.set(target, removed);
          bound(life.removed);
          this.#dirty = true;
        }
        return;
      }
      case EntryKind.DELETE_FOR_ME:
        if (hidden) return;
        life.hidden.add(target);
        bound(life.hidden);
        life.removed.delete(target);
        life.edits.delete(target);
        entries?.delete(target);
        this.hid(id);
        return;
      case EntryKind.CLEAR_HISTORY: {
        if (target <= life.clearedThrough) return;
        life.clearedThrough = target;
        const below = (convSeq: bigint) => convSeq <= target;
        for (const convSeq of [...life.hidden].filter(below)) life.hidden.delete(convSeq);
        for (const convSeq of [...life.removed.keys()].filter(below)) life.removed.delete(convSeq);
        for (const convSeq of [...life.edits.keys()].filter(below)) life.edits.delete(convSeq);
        for (const convSeq of [...(entries?.keys() ?? [])].filter(below)) entries!.delete(convSeq);
        this.hid(id);
        return;
      }
    }
  }

  /** A cached message's text or state changed: store it, and the preview if it is the newest. */
  private changedMessage(item: Item): void {
    const summary = this.summary(item.conversationId);
    if (summary.lastConvSeq === item.convSeq) summary.preview = previewOf(item, this.me);
    this.#dirty = true;
    this.notify(item.conversationId);
  }

  /** Messages left the view: the preview no longer shows a hidden one. */
  private hid(conversationId: bigint): void {
    const summary = this.summary(conversationId);
    const last = this.#entries.get(conversationId)?.get(summary.lastConvSeq);
    summary.preview = last ? previewOf(last, this.me) : "";
    this.#dirty = true;
    this.notify(conversationId);
  }

  private lifecycle(conversationId: bigint): Lifecycle {
    let life = this.#lifecycle.get(conversationId);
    if (!life) {
      life = { hidden: new Set(), clearedThrough: 0n, removed: new Map(), edits: new Map() };
      this.#lifecycle.set(conversationId, life);
    }
    return life;
  }

  /** Whether this device knows the message at a conv_seq was recalled or deleted. */
  withdrawn(conversationId: bigint, convSeq: bigint): boolean {
    if (this.#entries.get(conversationId)?.get(convSeq)?.removed) return true;
    return this.#lifecycle.get(conversationId)?.removed.has(convSeq) ?? false;
  }

  /** Whether the user hid a conv_seq of a conversation (delete for me, clear). */
  hidden(conversationId: bigint, convSeq: bigint): boolean {
    const life = this.#lifecycle.get(conversationId);
    return life !== undefined && (convSeq <= life.clearedThrough || life.hidden.has(convSeq));
  }

  /** A page of History; `hasEarlier` when it was read backwards. */
  applyHistory(conversationId: bigint, items: Item[], hasEarlier?: boolean): void {
    for (const item of items) this.apply(item);
    const summary = this.summary(conversationId);
    if (hasEarlier !== undefined) {
      summary.hasEarlier = hasEarlier;
      this.#dirty = true;
    }
    this.notify(conversationId);
  }

  setRecord(conversation: Conversation): void {
    const summary = this.summary(conversation.conversationId);
    summary.record = {
      title: conversation.title,
      direct: conversation.kind === 1,
      members: [...conversation.members],
      memberCount: Number(conversation.memberCount) || conversation.members.length,
      readFanout: conversation.readFanout,
    };
    if (summary.lastActivityMs === 0) summary.lastActivityMs = Number(conversation.createdAtMs);
    this.#dirty = true;
    this.notify(conversation.conversationId);
  }

  /** After an expired checkpoint: what the device cached may have gaps. */
  forgetEntries(): void {
    this.#entries.clear();
    for (const summary of this.conversations.values()) summary.hasEarlier = true;
    this.#dirty = true;
    this.notify(null);
  }

  /**
   * Whether save() writes: a tab waiting for another tab of the device
   * shows what it has but leaves the stored cache to the tab that syncs.
   */
  writable = true;

  /** Writes what changed (called before the checkpoint moves past it). */
  save(): void {
    if (!this.#dirty || !this.writable) return;
    this.trim();
    const conversations = this.list().map((s) => ({
      id: s.id.toString(),
      record: s.record && {
        ...s.record,
        members: s.record.members.map(String),
      },
      lastConvSeq: s.lastConvSeq.toString(),
      lastActivityMs: s.lastActivityMs,
      preview: s.preview,
      hasEarlier: s.hasEarlier,
      entries: this.entries(s.id).map((e) => ({
        ...e,
        conversationId: undefined,
        convSeq: e.convSeq.toString(),
        seq: e.seq.toString(),
        senderId: e.senderId.toString(),
        members: e.members.map(String),
        msgId: e.msgId.toString(),
        version: e.version.toString(),
        removed: e.removed && { ...e.removed, by: e.removed.by.toString() },
        target: undefined,
      })),
      lifecycle: this.storedLifecycle(s.id),
    }));
    this.storage.set(this.key, JSON.stringify({ conversations }));
    this.#dirty = false;
  }

  private storedLifecycle(id: bigint): StoredLifecycle | undefined {
    const life = this.#lifecycle.get(id);
    if (!life) return undefined;
    return {
      hidden: [...life.hidden].map(String),
      clearedThrough: life.clearedThrough.toString(),
      removed: [...life.removed].map(([convSeq, r]) => [convSeq.toString(), r.kind, r.by.toString(), r.atMs]),
      edits: [...life.edits].map(([convSeq, e]) => [convSeq.toString(), e.version.toString(), e.text]),
    };
  }

  private trim(): void {
    const list = this.list();
    for (const dropped of list.slice(MAX_CONVERSATIONS)) {
      this.conversations.delete(dropped.id);
      this.#entries.delete(dropped.id);
      this.#lifecycle.delete(dropped.id);
    }
    for (const [id, entries] of this.#entries) {
      if (entries.size <= ENTRIES_PER_CONVERSATION) continue;
      const keep = this.entries(id).slice(-ENTRIES_PER_CONVERSATION);
      this.#entries.set(id, new Map(keep.map((e) => [e.convSeq, e])));
      this.summary(id).hasEarlier = true;
    }
  }

  private summary(id: bigint): ConversationSummary {
    let summary = this.conversations.get(id);
    if (!summary) {
      summary = { id, lastConvSeq: 0n, lastActivityMs: 0, preview: "", hasEarlier: true };
      this.conversations.set(id, summary);
    }
    return summary;
  }

  /** Reads the stored cache again (another tab of the device wrote it). */
  reload(): void {
    this.conversations.clear();
    this.#entries.clear();
    this.#lifecycle.clear();
    this.#dirty = false;
    this.load();
    this.notify(null);
  }

  private load(): void {
    const text = this.storage.get(this.key);
    if (text === null) return;
    try {
      const stored = JSON.parse(text) as { conversations: any[] };
      for (const s of stored.conversations) {
        const id = BigInt(s.id);
        this.conversations.set(id, {
          id,
          record: s.record && { ...s.record, members: s.record.members.map(BigInt) },
          lastConvSeq: BigInt(s.lastConvSeq),
          lastActivityMs: s.lastActivityMs,
          preview: s.preview,
          hasEarlier: s.hasEarlier,
        });
        this.#entries.set(
          id,
          new Map(
            // Read markers were stored by earlier versions of the page: they
            // are read state, never shown.
            (s.entries as any[])
              .filter((e) => e.kind !== EntryKind.READ_MARKER && !isLifecycle(e.kind))
              .map((e) => {
                const item: Item = {
                  ...e,
                  conversationId: id,
                  convSeq: BigInt(e.convSeq),
                  seq: BigInt(e.seq),
                  senderId: BigInt(e.senderId),
                  members: (e.members as string[]).map(BigInt),
                  // Stored before the lifecycle: as sent.
                  msgId: BigInt(e.msgId ?? "0"),
                  version: BigInt(e.version ?? "0"),
                  removed: e.removed && { ...e.removed, by: BigInt(e.removed.by) },
                };
                return [item.convSeq, item];
              }),
          ),
        );
        const life = s.lifecycle as StoredLifecycle | undefined;
        if (life) {
          this.#lifecycle.set(id, {
            hidden: new Set(life.hidden.map(BigInt)),
            clearedThrough: BigInt(life.clearedThrough),
            removed: new Map(
              life.removed.map(([convSeq, kind, by, atMs]) => [BigInt(convSeq), { kind, by: BigInt(by), atMs }]),
            ),
            edits: new Map(
              life.edits.map(([convSeq, version, text]) => [BigInt(convSeq), { version: BigInt(version), text }]),
            ),
          });
        }
      }
    } catch {
      // A cache that does not parse is dropped; the checkpoint decides
      // what is fetched again, and History refills what is shown.
      this.conversations.clear();
      this.#entries.clear();
      this.#lifecycle.clear();
      this.dropped = true;
    }
  }

  /**
   * Tells listeners once per batch (a sync page applies many entries in one
   * go): drawing a conversation per entry made a catch-up quadratic.
   */
  private notify(conversationId: bigint | null): void {
    const first = this.#changed.size === 0;
    this.#changed.add(conversationId);
    if (!first) return;
    queueMicrotask(() => {
      const changed = this.#changed.has(null) ? [null] : [...this.#changed];
      this.#changed.clear();
      for (const id of changed) {
        for (const listener of this.#listeners) listener(id);
      }
    });
  }
}
