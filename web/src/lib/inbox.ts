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

import { EntryKind, type Conversation, type Entry } from "../gen/timeline/v1/timeline_pb.js";
import type { KeyValue } from "./storage.js";

/** Entries kept per conversation in storage (older ones: History). */
export const ENTRIES_PER_CONVERSATION = 200;
/** Conversations kept in storage, the most recently active first. */
export const MAX_CONVERSATIONS = 500;

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
}

export interface ConversationSummary {
  id: bigint;
  /** From GetConversation (undefined until fetched). */
  record?: {
    title: string;
    direct: boolean;
    members: bigint[];
    readFanout: boolean;
  };
  lastConvSeq: bigint;
  lastActivityMs: number;
  preview: string;
  /** Older entries exist than the ones cached (page back with History). */
  hasEarlier: boolean;
}

export function itemOf(entry: Entry): Item {
  return {
    conversationId: entry.conversationId,
    convSeq: entry.convSeq,
    seq: entry.seq,
    kind: entry.kind,
    senderId: entry.senderId,
    clientMsgId: entry.clientMsgId,
    text: entry.text,
    sentAtMs: Number(entry.sentAtMs),
    members: [...entry.members],
  };
}

/** The one-line text the list shows for an entry. */
export function previewOf(item: Item, me: bigint): string {
  const names = (ids: bigint[]) => ids.map((id) => (id === me ? "you" : `user ${id}`)).join(", ");
  switch (item.kind) {
    case EntryKind.MESSAGE:
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

type Listener = (conversationId: bigint | null) => void;

export class InboxCache {
  readonly conversations = new Map<bigint, ConversationSummary>();
  readonly #entries = new Map<bigint, Map<bigint, Item>>();
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

  /** Adds an entry; false when it was there already. */
  apply(item: Item): boolean {
    let entries = this.#entries.get(item.conversationId);
    if (!entries) {
      entries = new Map();
      this.#entries.set(item.conversationId, entries);
    }
    const known = entries.get(item.convSeq);
    if (known) {
      // A history copy (seq 0) learns its inbox seq; nothing else changes.
      if (known.seq === 0n && item.seq !== 0n) known.seq = item.seq;
      return false;
    }
    entries.set(item.convSeq, item);
    const summary = this.summary(item.conversationId);
    if (item.convSeq >= summary.lastConvSeq) {
      summary.lastConvSeq = item.convSeq;
      summary.lastActivityMs = item.sentAtMs;
      summary.preview = previewOf(item, this.me);
    }
    this.#dirty = true;
    this.notify(item.conversationId);
    return true;
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
      })),
    }));
    this.storage.set(this.key, JSON.stringify({ conversations }));
    this.#dirty = false;
  }

  private trim(): void {
    const list = this.list();
    for (const dropped of list.slice(MAX_CONVERSATIONS)) {
      this.conversations.delete(dropped.id);
      this.#entries.delete(dropped.id);
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
            (s.entries as any[]).filter((e) => e.kind !== EntryKind.READ_MARKER).map((e) => {
              const item: Item = {
                ...e,
                conversationId: id,
                convSeq: BigInt(e.convSeq),
                seq: BigInt(e.seq),
                senderId: BigInt(e.senderId),
                members: (e.members as string[]).map(BigInt),
              };
              return [item.convSeq, item];
            }),
          ),
        );
      }
    } catch {
      // A cache that does not parse is dropped; the checkpoint decides
      // what is fetched again, and History refills what is shown.
      this.conversations.clear();
      this.#entries.clear();
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
