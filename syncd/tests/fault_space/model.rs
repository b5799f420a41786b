//! What the randomized run knows and expects, kept apart from the engine:
//! what each device was shown, what was acknowledged, and the checks that
//! compare those with the store read directly (no faults, no delays).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use timeline_store::{Conversation, Entry, EntryKind};
use uuid::Uuid;

/// Groups with more members than this use read fanout.
pub const LARGE_GROUP_THRESHOLD: usize = 4;

/// A removed member of a large group still receives what was sent while it
/// was a member (it once lost it). With `false`, the large-group
/// completeness check would cover only users who stayed members from the
/// message to the end of the run.
pub const CHECK_REMOVED_LARGE_MEMBERS_KEEP_THEIR_MESSAGES: bool = true;

/// A sync reply lists a large group only once the inbox entry that tells
/// the device where to start reading it is at or below the reply's
/// checkpoint (it once listed it earlier, and the device read from an older
/// cursor, then got the same messages again through its inbox). With
/// `false`, such a listing would be ignored instead of failing the run.
pub const CHECK_LARGE_GROUPS_LISTED_ONLY_AFTER_THEIR_ENTRY_EVENT: bool = true;

/// A retry with the same client_msg_id but another text is refused with
/// INVALID_ARGUMENT (it once silently returned the first receipt). With
/// `false`, such a retry answered `Ok` would be counted, not failed.
pub const CHECK_RETRY_WITH_OTHER_TEXT_IS_REFUSED: bool = true;

/// What identifies an inbox copy or a timeline entry: if the same seq or
/// conv_seq is ever seen with another fingerprint, a seq was handed out
/// twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub conversation_id: u64,
    pub conv_seq: u64,
    pub msg_id: u64,
}

impl Fingerprint {
    pub fn of(entry: &Entry) -> Self {
        Self {
            conversation_id: entry.conversation_id,
            conv_seq: entry.conv_seq,
            msg_id: entry.msg_id,
        }
    }
}

/// A send the engine answered with `Ok`.
#[derive(Clone, Debug)]
pub struct Acked {
    pub step: usize,
    pub conversation_id: u64,
    pub conv_seq: u64,
    pub msg_id: u64,
}

/// A keyed send, kept to retry it later with the same id and text.
#[derive(Clone, Debug)]
pub struct KeyedSend {
    pub user: u64,
    pub conversation_id: u64,
    pub text: String,
    pub id: Uuid,
}

/// A conversation the run learned of from an `Ok` reply, with the members
/// it last heard of (stale under concurrent changes: only a guide for
/// picking plausible operations, never for checking).
#[derive(Clone, Debug)]
pub struct KnownConversation {
    pub id: u64,
    pub direct: bool,
    pub members: Vec<u64>,
}

/// One device: a client that syncs by its own checkpoint (`stored ==
/// false`) or by the one the server stores for it.
#[derive(Debug, Default)]
pub struct Device {
    pub user: u64,
    pub name: String,
    pub stored: bool,
    /// An operation of this device is running (a device is one sequential
    /// client).
    pub busy: bool,
    /// The checkpoint it syncs from: its own, or its last acknowledged one.
    pub checkpoint: u64,
    /// An ack that failed and must be repeated before the next sync.
    pub pending_ack: Option<u64>,
    /// The highest value an ack returned (stored checkpoints never go down).
    pub acked: u64,
    /// Every inbox seq it was shown, in order.
    pub collected: Vec<u64>,
    /// `(after, through]` ranges it was told had expired.
    pub gaps: Vec<(u64, u64)>,
    /// Per conversation: the conv_seq where it first heard of it, and the
    /// highest conv_seq it has seen (through its inbox or History).
    pub conv_start: HashMap<u64, u64>,
    pub conv_cursor: HashMap<u64, u64>,
    /// Per conversation, every conv_seq it has seen (through either path).
    pub conv_seen: HashMap<u64, BTreeSet<u64>>,
}

impl Device {
    pub fn last_seen(&self) -> u64 {
        self.collected.last().copied().unwrap_or(0)
    }

    pub fn in_gap(&self, seq: u64) -> bool {
        self.gaps.iter().any(|&(a, b)| a < seq && seq <= b)
    }

    /// Notes one entry seen through the inbox or History; returns an error
    /// if it was seen before.
    pub fn see_conversation_entry(&mut self, entry: &Entry, via: &str) -> Result<(), String> {
        // Like the client library: a large group's message in the inbox is
        // its sender's (or a mentioned member's) copy, delivered from
        // History; a read marker is no conversation entry.
        if (entry.read_fanout && entry.kind == EntryKind::Message && via == "in the inbox")
            || entry.kind == EntryKind::ReadMarker
        {
            return Ok(());
        }
        let id = entry.conversation_id;
        self.conv_start.entry(id).or_insert(entry.conv_seq);
        // Like the client library: the read position of a conversation
        // moves with what History returned, and an inbox entry sets it only
        // where a first membership begins (a removal in the inbox does not
        // move it: the device still reads what was sent before it).
        let starts = matches!(
            entry.kind,
            EntryKind::ConversationCreated | EntryKind::MembersAdded
        );
        if via != "in the inbox" {
            let cursor = self.conv_cursor.entry(id).or_insert(0);
            *cursor = (*cursor).max(entry.conv_seq);
        } else if starts && entry.members.contains(&self.user) {
            // Its own (re)join: a position it already has stays, since what
            // was sent in an earlier membership may still be unread.
            self.conv_cursor.entry(id).or_insert(entry.conv_seq);
        } else if starts {
            // Others joining reach its inbox while the group writes to
            // inboxes, and at the switch to read fanout: everything before
            // is in its inbox, the timeline is read from here on.
            let cursor = self.conv_cursor.entry(id).or_insert(0);
            *cursor = (*cursor).max(entry.conv_seq);
        }
        // A membership event that concerns the user sits in its inbox and
        // in the timeline: History may show it first. A message reaches a
        // device one way only.
        let fresh = self.conv_seen.entry(id).or_default().insert(entry.conv_seq);
        if !fresh && entry.kind == EntryKind::Message {
            return Err(format!(
                "device {}/{} saw message {} (conv_seq {}) of conversation {id} twice, the second time {via}",
                self.user, self.name, entry.msg_id, entry.conv_seq
            ));
        }
        Ok(())
    }
}

/// Everything observed so far.
#[derive(Default)]
pub struct Model {
    pub conversations: Vec<KnownConversation>,
    pub acked: Vec<Acked>,
    /// Idempotency key -> (conv_seq, msg_id) of its first `Ok`.
    pub receipts: HashMap<(u64, Uuid), (u64, u64)>,
    /// Idempotency key -> the text of its first `Ok`.
    pub texts: HashMap<(u64, Uuid), String>,
    /// Keyed sends not (yet) answered `Ok`.
    pub unanswered: Vec<KeyedSend>,
    /// Keyed sends answered `Ok`.
    pub answered: Vec<KeyedSend>,
    pub seen_inbox: HashMap<(u64, u64), Fingerprint>,
    pub seen_timeline: HashMap<(u64, u64), (u64, EntryKind)>,
    /// Per user, the highest floor a retention pass returned.
    pub floors: HashMap<u64, u64>,
    /// Conversation ids found in the store.
    pub existing: BTreeSet<u64>,
    pub devices: Vec<Device>,
}

impl Model {
    /// Records an inbox copy seen anywhere; an error if its seq was seen
    /// with other content.
    pub fn see_inbox(&mut self, user: u64, entry: &Entry, via: &str) -> Result<(), String> {
        let print = Fingerprint::of(entry);
        match self.seen_inbox.insert((user, entry.seq), print) {
            Some(old) if old != print => Err(format!(
                "inbox seq {} of user {user} reused: first {old:?}, now {print:?} ({via})",
                entry.seq
            )),
            _ => Ok(()),
        }
    }

    pub fn see_timeline(&mut self, entry: &Entry, via: &str) -> Result<(), String> {
        let key = (entry.conversation_id, entry.conv_seq);
        let print = (entry.msg_id, entry.kind);
        match self.seen_timeline.insert(key, print) {
            Some(old) if old != print => Err(format!(
                "conv_seq {} of conversation {} reused: first {old:?}, now {print:?} ({via})",
                entry.conv_seq, entry.conversation_id
            )),
            _ => Ok(()),
        }
    }
}

/// One event of a conversation timeline with the membership around it.
pub struct Replayed<'a> {
    pub entry: &'a Entry,
    pub members_before: BTreeSet<u64>,
    pub members_after: BTreeSet<u64>,
    pub large_before: bool,
    pub large_after: bool,
}

impl Replayed<'_> {
    /// Who must hold an inbox copy of this event, by the fanout rules
    /// restated independently of the engine's.
    pub fn recipients(&self) -> BTreeSet<u64> {
        let changed: BTreeSet<u64> = self.entry.members.iter().copied().collect();
        match self.entry.kind {
            // Its sender's copy (read state); the test sends no mentions.
            EntryKind::Message if self.large_after => {
                BTreeSet::from_iter((self.entry.sender_id != 0).then_some(self.entry.sender_id))
            }
            EntryKind::Message => self.members_after.clone(),
            EntryKind::ConversationCreated => self.members_after.clone(),
            EntryKind::MembersAdded if !self.large_after || !self.large_before => {
                self.members_after.clone()
            }
            EntryKind::MembersAdded => changed,
            EntryKind::MembersRemoved if !self.large_after => self.members_before.clone(),
            EntryKind::MembersRemoved => changed,
            // As a message, and in a large group whoever holds a copy of
            // the target (its sender; the test sends no mentions).
            EntryKind::Edit | EntryKind::Recall | EntryKind::Delete if self.large_after => {
                [self.entry.sender_id, self.entry.target.sender_id]
                    .into_iter()
                    .filter(|&user| user != 0 && self.members_after.contains(&user))
                    .collect()
            }
            EntryKind::Edit | EntryKind::Recall | EntryKind::Delete => self.members_after.clone(),
            // Never in a conversation timeline.
            EntryKind::ReadMarker | EntryKind::DeleteForMe | EntryKind::ClearHistory => {
                BTreeSet::new()
            }
        }
    }
}

/// Replays a timeline's membership events in conv_seq order.
pub fn replay(timeline: &[Entry]) -> Vec<Replayed<'_>> {
    let mut members = BTreeSet::new();
    let mut large = false;
    let mut out = Vec::with_capacity(timeline.len());
    for entry in timeline {
        let before = members.clone();
        let large_before = large;
        match entry.kind {
            EntryKind::ConversationCreated => members = entry.members.iter().copied().collect(),
            EntryKind::MembersAdded => members.extend(entry.members.iter().copied()),
            EntryKind::MembersRemoved => {
                for m in &entry.members {
                    members.remove(m);
                }
            }
            EntryKind::Message
            | EntryKind::ReadMarker
            | EntryKind::Edit
            | EntryKind::Recall
            | EntryKind::Delete
            | EntryKind::DeleteForMe
            | EntryKind::ClearHistory => {}
        }
        large = large || members.len() > LARGE_GROUP_THRESHOLD;
        out.push(Replayed {
            entry,
            members_before: before,
            members_after: members.clone(),
            large_before,
            large_after: large,
        });
    }
    out
}

/// The events that made `user` a member of `timeline`'s conversation while
/// it used read fanout (its creation as a large group, the switch, or the
/// user joining it): their conv_seqs, and the inbox seq of each copy still
/// in the user's inbox.
pub fn entry_points(timeline: &[Entry], inbox: &[Entry], user: u64) -> Vec<(u64, Option<u64>)> {
    replay(timeline)
        .iter()
        .filter(|r| {
            r.large_after
                && r.members_after.contains(&user)
                && r.recipients().contains(&user)
                && matches!(
                    r.entry.kind,
                    EntryKind::ConversationCreated | EntryKind::MembersAdded
                )
        })
        .map(|r| {
            let copy = inbox.iter().find(|e| e.msg_id == r.entry.msg_id);
            (r.entry.conv_seq, copy.map(|e| e.seq))
        })
        .collect()
}

/// The store as the final check sees it.
pub struct Snapshot {
    /// Per user, the whole inbox, ascending seq.
    pub inboxes: BTreeMap<u64, Vec<Entry>>,
    pub floors: BTreeMap<u64, u64>,
    pub timelines: BTreeMap<u64, Vec<Entry>>,
    pub records: BTreeMap<u64, Conversation>,
}

/// Per user: whether an inbox copy of `entry` may be missing because
/// retention trimmed it (every older copy of that conversation that is
/// still there is below the floor, and there is a floor).
pub fn may_be_trimmed(inbox: &[Entry], floor: u64, entry: &Entry) -> bool {
    floor > 0
        && inbox
            .iter()
            .filter(|e| e.conversation_id == entry.conversation_id && e.conv_seq < entry.conv_seq)
            .all(|e| e.seq < floor)
}
