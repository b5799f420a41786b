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

import { EntryKind, type Entry } from "../gen/timeline/v1/timeline_pb.js";

/** One conversation of the list, as the page keeps it. */
export interface ConversationRow {
  id: bigint;
  direct: boolean;
  title: string;
  member: boolean;
  readFanout: boolean;
  lastConvSeq: bigint;
  lastActivityMs: number;
  /** The newest message, or undefined when there is none yet. */
  last?: { convSeq: bigint; senderId: bigint; text: string; sentAtMs: number };
  unread: number;
  mentions: number;
  readThrough: bigint;
  /** Direct conversations: how far the other member has read. */
  peerReadThrough: bigint;
  /** The inbox seq the row is folded through (the server's as_of_seq, then the entries applied). */
  asOfSeq: bigint;
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
          row.unread = 0;
          row.mentions = 0;
        } else if (counts && mentionsUser(entry, me)) {
          row.mentions += 1;
        }
        return true;
      }
      row.lastConvSeq = max(row.lastConvSeq, entry.convSeq);
      row.lastActivityMs = Number(entry.sentAtMs);
      row.last = { convSeq: entry.convSeq, senderId: entry.senderId, text: entry.text, sentAtMs: Number(entry.sentAtMs) };
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
    case EntryKind.READ_MARKER:
      if (fromOther) {
        // The other member's marker: a read receipt.
        if (entry.readThrough <= row.peerReadThrough) return false;
        row.peerReadThrough = entry.readThrough;
        return true;
      }
      // Markers only raise; an older one (a mark from another device that
      // this one already passed) changes nothing.
      if (entry.readThrough <= row.readThrough) return false;
      row.readThrough = entry.readThrough;
      row.unread = row.member ? Number(entry.unread) : 0;
      row.mentions = row.member ? Number(entry.unreadMentions) : 0;
      return true;
    default:
      return false;
  }
}
