// The read-state fold on the device: how one inbox entry changes a row of
// the conversation list. The same rules as the server's
// (syncd/src/read_state/fold.rs, docs/PROTOCOL.md "Read state"), applied
// only to entries after the seq the row was served at, so a row the server
// sent and the entries the device synced since give the server's numbers
// without waiting for the next list call.
//
// What the device cannot count by itself: a large group's messages from
// others (they are in its timeline, not the inbox). Those rows take their
// unread count from the server's list only.
//
// The message lifecycle (docs/PROTOCOL.md "Changing sent messages"): a recall or
// delete of a counted message from someone else takes it back from the
// unread count (and the mentions when it mentioned the user); an edit or a
// recall of the previewed message changes the preview; delete for me and
// clear history change no count and move nothing (the cache hides them).

import { EntryKind, type Entry } from "../gen/timeline/v1/timeline_pb.js";

/** One conversation of the list, as the page keeps it. */
export interface ConversationRow {
  id: bigint;
  direct: boolean;
  title: string;
  member: boolean;
  readFanout: boolean;
  lastActivityMs: number;
  /**
   * The newest event of the conversation folded: the server's
   * counted_through (a recall of a message above it was never counted).
   */
  lastConvSeq: bigint;
  /** The newest message, or undefined when there is none yet. */
  last?: Preview;
  unread: number;
  mentions: number;
  readThrough: bigint;
  /** Direct conversations: how far the other member has read. */
  peerReadThrough: bigint;
  /** The inbox seq the row is folded through (the server's as_of_seq, then the entries applied). */
  asOfSeq: bigint;
}

/** The list's preview of a message: its text cut like the server cuts it. */
export interface Preview {
  convSeq: bigint;
  senderId: bigint;
  text: string;
  sentAtMs: number;
  /** Recalled or deleted: `text` is empty. */
  removed: boolean;
  /** The text is an edit's. */
  edited: boolean;
}

/** The most of a message's text a preview keeps (PREVIEW_TEXT_BYTES). */
export const PREVIEW_TEXT_BYTES = 256;

const utf8 = new TextEncoder();

/** `text` cut to PREVIEW_TEXT_BYTES of UTF-8 on a character boundary. */
export function previewText(text: string): string {
  if (utf8.encode(text).length <= PREVIEW_TEXT_BYTES) return text;
  let bytes = 0;
  let end = 0;
  for (const char of text) {
    const size = utf8.encode(char).length;
    if (bytes + size > PREVIEW_TEXT_BYTES) break;
    bytes += size;
    end += char.length;
  }
  return text.slice(0, end);
}

export function previewOfEntry(entry: Entry): Preview {
  return {
    convSeq: entry.convSeq,
    senderId: entry.senderId,
    text: previewText(entry.text),
    sentAtMs: Number(entry.sentAtMs),
    removed: entry.removed !== undefined,
    edited: entry.version > 0n,
  };
}

const max = (a: bigint, b: bigint) => (a > b ? a : b);

/** Whether a message names `user` (by id, or everyone). */
export function mentionsUser(entry: Entry, user: bigint): boolean {
  return entry.mentionAll || entry.mentions.includes(user);
}

/**
 * Folds `entry` (of `me`'s inbox) into `row`, its conversation's. Returns
 * whether anything shown changed. An entry at or below `row.asOfSeq` is in
 * the row already and changes nothing.
 */
export function foldEntry(row: ConversationRow, entry: Entry, me: bigint): boolean {
  if (entry.seq <= row.asOfSeq) return false;
  row.asOfSeq = entry.seq;
  const fromOther = entry.senderId !== me;
  const counts = fromOther && row.member && entry.convSeq > row.readThrough;
  switch (entry.kind) {
    case EntryKind.MESSAGE:
      if (entry.readFanout) {
        // A large group's copy: the sender's reads everything up to it; a
        // mentioned member's is their mention (the message's unread is
        // counted from the group's timeline, by the server).
        if (!fromOther) {
          row.readThrough = max(row.readThrough, entry.convSeq);
          row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
          row.unread = 0;
          row.mentions = 0;
        } else if (counts && mentionsUser(entry, me)) {
          row.mentions += 1;
        }
        return true;
      }
      row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      row.lastActivityMs = Number(entry.sentAtMs);
      row.last = previewOfEntry(entry);
      if (!fromOther) {
        row.readThrough = max(row.readThrough, entry.convSeq);
        row.unread = 0;
        row.mentions = 0;
      } else if (counts) {
        row.unread += 1;
        if (mentionsUser(entry, me)) row.mentions += 1;
      }
      return true;
    case EntryKind.CONVERSATION_CREATED:
    case EntryKind.MEMBERS_ADDED:
      row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      row.lastActivityMs = Number(entry.sentAtMs);
      if (entry.members.includes(me)) {
        row.member = true;
        row.readThrough = max(row.readThrough, entry.convSeq);
        row.unread = 0;
        row.mentions = 0;
      }
      return true;
    case EntryKind.MEMBERS_REMOVED:
      row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      row.lastActivityMs = Number(entry.sentAtMs);
      if (entry.members.includes(me)) {
        row.member = false;
        row.unread = 0;
        row.mentions = 0;
      }
      return true;
    // A clear is also the user's read marker through what it clears (it
    // carries the count like a marker; the cache hides what it clears).
    case EntryKind.CLEAR_HISTORY:
    case EntryKind.READ_MARKER:
      if (fromOther) {
        // The other member's marker: a read receipt.
        if (entry.readThrough <= row.peerReadThrough) return false;
        row.peerReadThrough = entry.readThrough;
        return true;
      }
      // Markers only raise; an older one (a mark from another device that
      // this one already passed) changes nothing, not even the position (a
      // large group's row counts on from there). A clear at the current
      // marker carries a fresh count of the same range: it applies.
      if (entry.readThrough < row.readThrough) return false;
      if (entry.readThrough === row.readThrough && entry.kind !== EntryKind.CLEAR_HISTORY) return false;
      // The row covers the conversation up to the marker's position, as
      // the server's counted_through does.
      row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      row.readThrough = entry.readThrough;
      row.unread = row.member ? Number(entry.unread) : 0;
      row.mentions = row.member ? Number(entry.unreadMentions) : 0;
      return true;
    case EntryKind.RECALL:
    case EntryKind.DELETE: {
      const target = entry.target;
      if (!target) return false;
      // readThrough is at or above the user's join (a join raises it), so
      // this is the server's "after the marker and the join".
      const counted = target.senderId !== me && row.member && target.convSeq > row.readThrough;
      const named = target.mentions.includes(me);
      if (entry.readFanout) {
        // A large group's: only a mention by name is in the row (from its
        // copy); the rest is counted from the timeline, by the server.
        if (counted && named) row.mentions = Math.max(0, row.mentions - 1);
      } else if (counted && target.convSeq <= row.lastConvSeq) {
        row.unread = Math.max(0, row.unread - 1);
        if (named || target.mentionAll) row.mentions = Math.max(0, row.mentions - 1);
      }
      if (row.last && row.last.convSeq === target.convSeq) {
        row.last.text = "";
        row.last.removed = true;
      }
      if (!entry.readFanout) row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      return true;
    }
    case EntryKind.EDIT: {
      const target = entry.target;
      if (!target) return false;
      if (row.last && row.last.convSeq === target.convSeq) {
        row.last.text = previewText(entry.text);
        row.last.edited = true;
      }
      if (!entry.readFanout) row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      return true;
    }
    // The user's own view only (the cache hides it): no count, no
    // position.
    case EntryKind.DELETE_FOR_ME:
      return false;
    default:
      return false;
  }
}
