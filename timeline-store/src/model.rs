//! The values the capability traits speak in. Plain Rust types: how they
//! are persisted (tags, stored codes) is [`codec`](crate::codec)'s business,
//! so a domain change never silently changes bytes on disk.

/// What an entry records. Every `match` on it is exhaustive on purpose: a
/// new kind is a compile error wherever it is not handled yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Message,
    ConversationCreated,
    MembersAdded,
    MembersRemoved,
    /// The user read the conversation through `read_through` (an inbox
    /// event of that user only, never in the conversation timeline).
    ReadMarker,
    /// The sender replaced the text of the message at `target`; `text` is
    /// the new text, and the edit's own `conv_seq` is its version.
    Edit,
    /// The sender withdrew the message at `target` (unsend).
    Recall,
    /// A service removed the message at `target` for everyone.
    Delete,
    /// The user hid the message at `target` from their own devices (an
    /// inbox event of that user only).
    DeleteForMe,
    /// The user hid everything through `target.conv_seq` from their own
    /// devices (an inbox event of that user only).
    ClearHistory,
}

impl EntryKind {
    /// Whether the event is part of the conversation's timeline (History),
    /// or only of the inbox it is written to.
    pub fn in_conversation_timeline(self) -> bool {
        match self {
            Self::Message
            | Self::ConversationCreated
            | Self::MembersAdded
            | Self::MembersRemoved
            | Self::Edit
            | Self::Recall
            | Self::Delete => true,
            Self::ReadMarker | Self::DeleteForMe | Self::ClearHistory => false,
        }
    }

    /// Whether the event withdraws its target for everyone (its text is
    /// gone from every stored timeline).
    pub fn removes_target(self) -> bool {
        matches!(self, Self::Recall | Self::Delete)
    }
}

/// The message an edit, recall or delete acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub conv_seq: u64,
    pub msg_id: u64,
    /// Who sent it (the read state needs it: a message from the user
    /// themselves never counted as unread).
    pub sender_id: u64,
    /// Whether it mentioned the user the event's copy is for: carried so
    /// that a fold of one inbox knows what a recall takes away.
    pub mentions: Vec<u64>,
    pub mention_all: bool,
}

/// How a message was withdrawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalKind {
    Recalled,
    Deleted,
}

/// A withdrawn message's tombstone: who did it, when, by which event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    pub kind: RemovalKind,
    /// The user who recalled it (0: a service).
    pub by: u64,
    pub at_ms: i64,
    /// The `conv_seq` of the recall or delete event.
    pub conv_seq: u64,
}

/// A message's text before an edit replaced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousVersion {
    /// 0 for the original text, else the `conv_seq` of the edit that wrote it.
    pub version: u64,
    pub text: String,
    pub at_ms: i64,
}

/// A message's life after it was sent, as its stored entries record it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageState {
    /// 0 while never edited, else the `conv_seq` of the latest edit: a
    /// device applies an edit only if its version is higher.
    pub version: u64,
    pub edited_at_ms: i64,
    /// The `conv_seq` of every edit event (a recall scrubs their text too).
    pub edits: Vec<u64>,
    /// The texts edits replaced, oldest first, bounded by the writer.
    pub previous: Vec<PreviousVersion>,
    /// Set once the message is recalled or deleted: its text, previous
    /// versions and those of its edits are gone.
    pub removed: Option<Removal>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// Exactly two members, fixed for life.
    Direct,
    Group,
}

/// One event in a conversation timeline (`seq == 0`) or a copy of it in an
/// inbox (`seq` = the owner's inbox seq).
///
/// A read marker has `conv_seq` = the conversation's last allocated
/// `conv_seq` when it was written (where it sits in the conversation's
/// order: every event up to there comes before it in the user's inbox),
/// `read_through` = what the user read, and `unread` = the messages from
/// others in `(read_through, conv_seq]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: EntryKind,
    pub conversation_id: u64,
    pub conv_seq: u64,
    pub msg_id: u64,
    pub sender_id: u64,
    /// Sender-chosen UUID in text form; empty for non-message events.
    pub client_msg_id: String,
    pub text: String,
    pub sent_at_ms: i64,
    /// Members named by a membership event.
    pub members: Vec<u64>,
    /// A read marker's `conv_seq` read through (0 for other kinds).
    pub read_through: u64,
    /// A read marker's count of what stays unread (0 for other kinds).
    pub unread: u64,
    /// A read marker's count of unread messages that mention the user.
    pub unread_mentions: u64,
    /// The users a message mentions.
    pub mentions: Vec<u64>,
    /// A message that mentions every member.
    pub mention_all: bool,
    /// A message of a large (read-fanout) group: in an inbox it is a
    /// mentioned member's copy (the message itself is read from the
    /// conversation timeline).
    pub read_fanout: bool,
    /// The message an edit, recall or delete (of either kind) acts on;
    /// for a clear, `target.conv_seq` is how far it clears.
    pub target: Target,
    /// A message's edits and removal (default for every other kind).
    pub state: MessageState,
    /// A message a service marked high priority: pushed ahead of ordinary
    /// ones and never coalesced away.
    pub priority: bool,
}

impl Entry {
    /// What the entry costs on the wire, close enough to budget a page or
    /// a buffer: its variable-length fields plus a bound on the fixed ones.
    pub fn wire_bytes(&self) -> usize {
        const FIXED: usize = 80;
        const PER_ID: usize = 10;
        const PER_PREVIOUS_VERSION: usize = 24;
        let previous: usize = self
            .state
            .previous
            .iter()
            .map(|version| version.text.len() + PER_PREVIOUS_VERSION)
            .sum();
        FIXED
            + self.text.len()
            + self.client_msg_id.len()
            + (self.members.len() + self.mentions.len() + self.target.mentions.len()) * PER_ID
            + previous
    }

    /// An entry of `kind` in the conversation with every other field zero or
    /// empty; the kind has no default, so it is always chosen.
    pub fn new(kind: EntryKind, conversation_id: u64) -> Self {
        Self {
            seq: 0,
            kind,
            conversation_id,
            conv_seq: 0,
            msg_id: 0,
            sender_id: 0,
            client_msg_id: String::new(),
            text: String::new(),
            sent_at_ms: 0,
            members: Vec::new(),
            read_through: 0,
            unread: 0,
            unread_mentions: 0,
            mentions: Vec::new(),
            mention_all: false,
            read_fanout: false,
            target: Target::default(),
            state: MessageState::default(),
            priority: false,
        }
    }

    /// Whether this is a message that was recalled or deleted.
    pub fn is_removed(&self) -> bool {
        self.state.removed.is_some()
    }

    /// Whether this message mentions `user_id` (by name or as everyone).
    pub fn mentions_user(&self, user_id: u64) -> bool {
        self.kind == EntryKind::Message && (self.mention_all || self.mentions.contains(&user_id))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub conversation_id: u64,
    pub kind: ConversationKind,
    /// Current members, sorted ascending, no duplicates, when the record
    /// lists them ([`Conversation::lists_members`]); empty for a large
    /// group, whose members are paged in the store's member table
    /// ([`crate::ConversationMembers`]).
    pub members: Vec<u64>,
    /// How many members there are now (listed or paged).
    pub member_count: u64,
    pub title: String,
    pub created_at_ms: i64,
    /// A large group: messages go to the conversation timeline only (no
    /// inbox copies); members find them through the large-group index.
    pub read_fanout: bool,
}

impl Conversation {
    /// Whether the record holds the whole member list: write-fanout
    /// conversations (their sends need every member), and large groups
    /// stored before members were paged (until their next change moves
    /// them to the member table). A large group's record lists nobody,
    /// so it stays small however many members it has.
    pub fn lists_members(&self) -> bool {
        !self.read_fanout || !self.members.is_empty()
    }

    /// Whether `user_id` is a member, when the record can tell
    /// (`None`: ask the store's member table).
    pub fn listed_member(&self, user_id: u64) -> Option<bool> {
        self.lists_members()
            .then(|| self.members.binary_search(&user_id).is_ok())
    }

    /// The record as stored: a large group keeps its count, not its list.
    pub fn stored(mut self) -> Self {
        if self.read_fanout {
            self.members = Vec::new();
        }
        self
    }
}

/// One row of a conversation's member table, written by the event that
/// changes it (see [`EventCommit::members`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub user_id: u64,
    /// `true`: a member from this event on; `false`: no longer one.
    pub member: bool,
}

/// The result of a first send, returned again to a retry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    pub conversation_id: u64,
    pub conv_seq: u64,
    pub msg_id: u64,
    pub sent_at_ms: i64,
    /// A hash of what the first request asked for, so that a retry asking
    /// for something else is told so; 0 in receipts written before it was
    /// kept (any retry matches those).
    pub fingerprint: u64,
}

/// Who sent (a user or a backend service) and the UUID they chose.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// `u:<user id>` or `s:<service name>`.
    pub principal: String,
    pub client_msg_id: uuid::Uuid,
}

impl IdempotencyKey {
    /// Length-prefixed principal then the 16 UUID bytes: unambiguous.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(2 + self.principal.len() + 16);
        key.extend_from_slice(&(self.principal.len() as u16).to_be_bytes());
        key.extend_from_slice(self.principal.as_bytes());
        key.extend_from_slice(self.client_msg_id.as_bytes());
        key
    }
}

/// One inbox copy of an event: the owner and the seq allocated for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxWrite {
    pub user_id: u64,
    pub seq: u64,
}

/// A change to the index of large (read-fanout) groups per user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeGroupIndexChange {
    pub user_id: u64,
    pub conversation_id: u64,
    /// `true` adds the user to the index entry, `false` removes it.
    pub member: bool,
}

/// Where one event sits in a member's timelines: the member's inbox seq
/// of it (0 when it has no copy there) and its `conv_seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventPosition {
    pub inbox_seq: u64,
    pub conv_seq: u64,
}

/// A user's membership of a large (read-fanout) group, as the index keeps
/// it: from the event that made them a member until the one that removed
/// them. Readers show it only once those events are readable, and a former
/// member still reads what was sent while they belonged (below `left`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeGroupMembership {
    pub conversation_id: u64,
    /// The join, the creation, or the switch to read fanout (for a rejoin,
    /// the first join); zero for a membership indexed before positions
    /// were kept.
    pub joined: EventPosition,
    /// The removal; `None` while a member.
    pub left: Option<EventPosition>,
}

impl LargeGroupMembership {
    /// The membership after `change`, made by an event at `position`
    /// (`previous`: the stored one, if any).
    pub fn changed(
        previous: Option<Self>,
        change: &LargeGroupIndexChange,
        position: EventPosition,
    ) -> Self {
        if change.member {
            // A rejoin keeps the first join: devices read on from where
            // they stopped, which may be in the earlier membership (what
            // was sent while the user was away is readable history to a
            // member anyway).
            // Also a join applied again (a retried event) keeps it.
            let joined = previous.map_or(position, |earlier| earlier.joined);
            Self {
                conversation_id: change.conversation_id,
                joined,
                left: None,
            }
        } else {
            Self {
                conversation_id: change.conversation_id,
                joined: previous.map_or(EventPosition::default(), |p| p.joined),
                left: Some(position),
            }
        }
    }
}

/// Everything one event writes, committed atomically.
#[derive(Clone, Debug)]
pub struct EventCommit {
    /// The conversation entry (`seq` ignored; `conv_seq` set).
    pub entry: Entry,
    pub inbox: Vec<InboxWrite>,
    pub receipt: Option<(IdempotencyKey, Receipt)>,
    /// The conversation record after this event (creation or membership
    /// change); `None` leaves it unchanged.
    pub conversation: Option<Conversation>,
    /// Users joining or leaving large groups with this event.
    pub large_group_index: Vec<LargeGroupIndexChange>,
    /// Rows of the conversation's member table this event writes (large
    /// groups: their records list nobody). At most one call's members,
    /// or the whole list once, when a group switches to read fanout.
    pub members: Vec<MemberChange>,
    /// Read markers this event raises in the conversation's reader index
    /// (for read receipts): only ever raised.
    pub readers: Vec<ReaderMark>,
    /// Keep the inbox copies' positions (see
    /// [`ConversationReads::inbox_copies`](crate::ConversationReads::inbox_copies)),
    /// so that a later recall can rewrite them: messages and edits.
    pub keep_copies: bool,
    /// Stored entries this event replaces in place (an edit's or a
    /// recall's new state of its target), in the same atomic commit.
    pub rewrites: Vec<Rewrite>,
}

/// One stored event rewritten in place: its conversation entry (at
/// `entry.conv_seq`, when the kind is in the conversation timeline) and
/// its inbox copies (each `entry` with `seq` set). Never a delete: the new
/// state is a value, so no store pays for tombstones on reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub entry: Entry,
    pub inbox: Vec<InboxWrite>,
}

/// "`user_id` has read the conversation through `read_through`" and
/// "joined it at `joined`", as the conversation's reader index keeps them
/// (each only ever raised; 0 leaves a value as it is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderMark {
    pub user_id: u64,
    pub read_through: u64,
    /// The `conv_seq` of the user's latest join: a message before it was
    /// never theirs to read.
    pub joined: u64,
}

impl ReaderMark {
    /// Both values raised to `other`'s where higher.
    pub fn raised(self, other: &ReaderMark) -> Self {
        Self {
            user_id: self.user_id,
            read_through: self.read_through.max(other.read_through),
            joined: self.joined.max(other.joined),
        }
    }
}

impl EventCommit {
    /// This event's position in `user_id`'s timelines, which the index
    /// records for the user's membership change.
    pub fn position_of(&self, user_id: u64) -> EventPosition {
        EventPosition {
            inbox_seq: self
                .inbox
                .iter()
                .find(|write| write.user_id == user_id)
                .map_or(0, |write| write.seq),
            conv_seq: self.entry.conv_seq,
        }
    }
}

/// The inbox entries a read returns: `after < seq <= through`, ascending,
/// at most `limit`, and no more past `max_bytes` of them
/// ([`Entry::wire_bytes`]). The first entry is always returned, whatever its
/// size; after it, the read stops after the first entry that brings the
/// total above `max_bytes`, so the reader sees that one too and knows the
/// budget, not the range, ended the read. `through` is inclusive because a
/// reader asks for everything up to the last seq it may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxRange {
    pub after: u64,
    pub through: u64,
    pub limit: usize,
    pub max_bytes: usize,
    /// Whether a heavy copy comes back with its payload, read from its
    /// conversation entry (the default), or as stored, without its text
    /// and members ([`InboxRange::without_payloads`]).
    pub payloads: bool,
}

impl InboxRange {
    /// At most `limit` entries after `after` through `through`, with no
    /// byte budget.
    pub const fn new(after: u64, through: u64, limit: usize) -> Self {
        Self {
            after,
            through,
            limit,
            max_bytes: usize::MAX,
            payloads: true,
        }
    }

    /// The same range, stopping past `max_bytes` of entries.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// The same range, heavy copies as stored: without their text and
    /// members, which live in the conversation entry. For a reader that
    /// looks at what an entry is, not at what it says, and may read past
    /// the readable horizon, where an event's conversation entry may not
    /// be written yet.
    pub fn without_payloads(self) -> Self {
        Self {
            payloads: false,
            ..self
        }
    }

    /// Whether the range holds no entry at all: backends answer it without
    /// a read.
    pub fn is_empty(&self) -> bool {
        self.after >= self.through || self.limit == 0
    }

    /// Counts entries against `max_bytes` as a backend reads them in order.
    pub fn budget(&self) -> ByteBudget {
        ByteBudget {
            left: self.max_bytes,
            first: true,
        }
    }
}

/// What is left of a read's byte budget ([`InboxRange::budget`]).
#[derive(Clone, Copy, Debug)]
pub struct ByteBudget {
    left: usize,
    first: bool,
}

impl ByteBudget {
    /// Takes `entry`, the next one read, into the read; `true` when it went
    /// past the budget and the read must stop (keeping `entry`).
    pub fn spend(&mut self, entry: &Entry) -> bool {
        let size = entry.wire_bytes();
        if std::mem::take(&mut self.first) {
            self.left = self.left.saturating_sub(size);
            return false;
        }
        match self.left.checked_sub(size) {
            Some(left) => {
                self.left = left;
                false
            }
            None => true,
        }
    }
}

/// One inbox row as retention sees it: its seq and when its event was
/// sent, read without the payload ([`InboxRetention::inbox_times`]).
///
/// [`InboxRetention::inbox_times`]: crate::InboxRetention::inbox_times
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxTime {
    pub seq: u64,
    pub sent_at_ms: i64,
}

/// Which way a conversation read walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    /// For paging backwards from the newest entry.
    NewestFirst,
}

/// The conversation entries a read returns: `after < conv_seq < before`
/// (both bounds exclusive), at most `limit`, in `order`, and, like
/// [`InboxRange`], stopping at the first entry that takes the total of
/// [`Entry::wire_bytes`] above `max_bytes` (keeping it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationRange {
    pub after: u64,
    pub before: u64,
    pub order: Order,
    pub limit: usize,
    pub max_bytes: usize,
}

impl ConversationRange {
    /// At most `limit` entries between the bounds, oldest first, with no
    /// byte budget.
    pub fn oldest_first(after: u64, before: u64, limit: usize) -> Self {
        Self {
            after,
            before,
            order: Order::OldestFirst,
            limit,
            max_bytes: usize::MAX,
        }
    }

    /// At most `limit` entries between the bounds, newest first, with no
    /// byte budget.
    pub fn newest_first(after: u64, before: u64, limit: usize) -> Self {
        Self {
            after,
            before,
            order: Order::NewestFirst,
            limit,
            max_bytes: usize::MAX,
        }
    }

    /// The same range, stopping past `max_bytes` of entries.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// Counts entries against `max_bytes` as a backend reads them in order.
    pub fn budget(&self) -> ByteBudget {
        ByteBudget {
            left: self.max_bytes,
            first: true,
        }
    }

    /// Whether the range holds no entry at all (no conv_seq fits between the
    /// bounds, or `limit == 0`): backends answer it without a read.
    pub fn is_empty(&self) -> bool {
        self.after.saturating_add(1) >= self.before || self.limit == 0
    }
}
