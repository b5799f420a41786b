//! Records stored by every backend. They derive `prost::Message` so that
//! values have one compact, forward-compatible encoding (new fields get new
//! tags; old readers skip them).

/// What an entry records. Codes are persisted: never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum EntryKind {
    Unspecified = 0,
    Message = 1,
    ConversationCreated = 2,
    MembersAdded = 3,
    MembersRemoved = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum ConversationKind {
    Unspecified = 0,
    Direct = 1,
    Group = 2,
}

/// One event in a conversation timeline (`seq == 0`) or a copy of it in an
/// inbox (`seq` = the owner's inbox seq).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(enumeration = "EntryKind", tag = "2")]
    pub kind: i32,
    #[prost(uint64, tag = "3")]
    pub conversation_id: u64,
    #[prost(uint64, tag = "4")]
    pub conv_seq: u64,
    #[prost(uint64, tag = "5")]
    pub msg_id: u64,
    #[prost(uint64, tag = "6")]
    pub sender_id: u64,
    /// Sender-chosen UUID in text form; empty for non-message events.
    #[prost(string, tag = "7")]
    pub client_msg_id: String,
    #[prost(string, tag = "8")]
    pub text: String,
    #[prost(int64, tag = "9")]
    pub sent_at_ms: i64,
    /// Members named by a membership event.
    #[prost(uint64, repeated, tag = "10")]
    pub members: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Conversation {
    #[prost(uint64, tag = "1")]
    pub conversation_id: u64,
    #[prost(enumeration = "ConversationKind", tag = "2")]
    pub kind: i32,
    /// Current members, sorted ascending, no duplicates.
    #[prost(uint64, repeated, tag = "3")]
    pub members: Vec<u64>,
    #[prost(string, tag = "4")]
    pub title: String,
    #[prost(int64, tag = "5")]
    pub created_at_ms: i64,
    /// A large group: messages go to the conversation timeline only (no
    /// inbox copies); members find them through the large-group index.
    #[prost(bool, tag = "6")]
    pub read_fanout: bool,
}

impl Conversation {
    pub fn is_member(&self, user_id: u64) -> bool {
        self.members.binary_search(&user_id).is_ok()
    }
}

/// The result of a first send, returned again to a retry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Receipt {
    #[prost(uint64, tag = "1")]
    pub conversation_id: u64,
    #[prost(uint64, tag = "2")]
    pub conv_seq: u64,
    #[prost(uint64, tag = "3")]
    pub msg_id: u64,
    #[prost(int64, tag = "4")]
    pub sent_at_ms: i64,
    /// A hash of what the first request asked for, so that a retry asking
    /// for something else is told so; 0 in receipts written before it was
    /// kept (any retry matches those).
    #[prost(fixed64, tag = "5")]
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
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct LargeGroupIndexChange {
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    #[prost(uint64, tag = "2")]
    pub conversation_id: u64,
    /// `true` adds the user to the index entry, `false` removes it.
    #[prost(bool, tag = "3")]
    pub member: bool,
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
}
