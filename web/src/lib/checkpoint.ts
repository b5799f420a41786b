// The device's position in its inbox, kept in browser storage: the
// checkpoint (the last inbox seq applied), the conv_seq read so far in each
// large group, and a short journal of the inbox seqs applied (for the page's
// diagnostics and the tests). Mirrors client/src/checkpoint.rs.
//
// Invariants: the checkpoint and a position never go back; both are saved
// only after the entries up to them were applied to the cached inbox, and
// the checkpoint is acknowledged to the server only after it was saved, so a
// reload can repeat an entry (applying one is idempotent), never skip one.

import type { KeyValue } from "./storage.js";

/** Inbox seqs kept in the journal. */
export const JOURNAL_LIMIT = 2_000;

interface Stored {
  checkpoint: string;
  conversations: Record<string, string>;
  journal: string[];
}

export class Checkpoint {
  #seq: bigint;
  #conversations: Map<bigint, bigint>;
  #journal: bigint[];

  private constructor(
    private readonly storage: KeyValue,
    private readonly key: string,
  ) {
    this.#seq = 0n;
    this.#conversations = new Map();
    this.#journal = [];
    this.reload();
  }

  /** Loads the saved state, or starts at 0. A corrupt value starts over. */
  static open(storage: KeyValue, key: string): Checkpoint {
    return new Checkpoint(storage, key);
  }

  /** Reads the saved state again (another tab of the device wrote it). */
  reload(): void {
    const text = this.storage.get(this.key);
    let stored: Stored | null = null;
    if (text !== null) {
      try {
        stored = JSON.parse(text) as Stored;
        BigInt(stored.checkpoint);
      } catch {
        stored = null;
      }
    }
    this.#seq = BigInt(stored?.checkpoint ?? "0");
    this.#conversations = new Map(
      Object.entries(stored?.conversations ?? {}).map(([id, convSeq]) => [BigInt(id), BigInt(convSeq)]),
    );
    this.#journal = (stored?.journal ?? []).map((seq) => BigInt(seq));
  }

  get seq(): bigint {
    return this.#seq;
  }

  /** Inbox seqs applied, oldest first (at most JOURNAL_LIMIT). */
  get journal(): readonly bigint[] {
    return this.#journal;
  }

  /**
   * Records that the inbox entries `applied` (in seq order) are in the
   * cached inbox and that everything up to `seq` is complete. Never lowers
   * the checkpoint; entries at or below it are not journaled again.
   */
  advance(seq: bigint, applied: readonly bigint[] = []): void {
    const fresh = applied.filter((s) => s > this.#seq);
    if (seq <= this.#seq && fresh.length === 0) return;
    this.#journal.push(...fresh);
    if (this.#journal.length > JOURNAL_LIMIT) {
      this.#journal.splice(0, this.#journal.length - JOURNAL_LIMIT);
    }
    if (seq > this.#seq) this.#seq = seq;
    this.persist();
  }

  /** Moves to `seq` after the server said the checkpoint expired. */
  restartAt(seq: bigint): void {
    this.#seq = seq;
    this.persist();
  }

  conversation(conversationId: bigint): bigint | undefined {
    return this.#conversations.get(conversationId);
  }

  /** The conv_seq read in a conversation (never lowered). */
  saveConversation(conversationId: bigint, convSeq: bigint): void {
    const known = this.#conversations.get(conversationId);
    if (known !== undefined && known >= convSeq) return;
    this.#conversations.set(conversationId, convSeq);
    this.persist();
  }

  private persist(): void {
    const stored: Stored = {
      checkpoint: this.#seq.toString(),
      conversations: Object.fromEntries(
        [...this.#conversations].map(([id, convSeq]) => [id.toString(), convSeq.toString()]),
      ),
      journal: this.#journal.map((s) => s.toString()),
    };
    this.storage.set(this.key, JSON.stringify(stored));
  }
}
