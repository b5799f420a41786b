//! The values of the read-state capability: what one user has read and has
//! not, per conversation, as folded from the user's own inbox.
//!
//! The store keeps them; it does not compute them. syncd folds the inbox
//! (messages, the user's joins and leaves, read markers) in seq order into
//! one [`ReadStateRow`] per conversation and saves the rows together with
//! the seq they were folded through ([`ReadStateSnapshot::applied_seq`]),
//! so a crash between an event and its fold only delays the fold: the
//! inbox, which the event wrote atomically, is folded again from there.

/// The newest message of a conversation as a list shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessagePreview {
    pub conv_seq: u64,
    pub msg_id: u64,
    pub sender_id: u64,
    /// At most [`PREVIEW_TEXT_BYTES`], cut at a character boundary.
    pub text: String,
    pub sent_at_ms: i64,
    /// The message was recalled or deleted (`text` is empty).
    pub removed: bool,
    /// The text is an edit's (the message's version is above 0).
    pub edited: bool,
}

/// Longest preview text kept per conversation: a list of 10,000
/// conversations then stays a few megabytes.
pub const PREVIEW_TEXT_BYTES: usize = 256;

impl MessagePreview {
    /// `text` cut to [`PREVIEW_TEXT_BYTES`] on a character boundary.
    pub fn preview_text(text: &str) -> String {
        if text.len() <= PREVIEW_TEXT_BYTES {
            return text.to_owned();
        }
        let mut end = PREVIEW_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    }
}

/// One conversation in a user's read state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStateRow {
    pub conversation_id: u64,
    /// Whether the user is a member (a left conversation keeps its row,
    /// with nothing unread).
    pub member: bool,
    /// The highest `conv_seq` the user has read; only ever raised.
    pub read_through: u64,
    /// Messages from others after `read_through`, up to `counted_through`.
    pub unread: u64,
    /// The conversation position `unread` covers (the newest event folded,
    /// or the position a read marker counted to).
    pub counted_through: u64,
    /// The `conv_seq` of the user's latest join (counting starts there).
    pub joined_conv_seq: u64,
    /// The inbox seq of the newest event of the conversation folded.
    pub last_seq: u64,
    /// When that event happened (server clock): the list's order.
    pub last_activity_ms: i64,
    pub last_message: Option<MessagePreview>,
    /// Unread messages that mention the user.
    pub mentions: u64,
    /// In a direct conversation: how far the other member has read (the
    /// sender's read receipts).
    pub peer_read_through: u64,
    /// The user cleared their history through this `conv_seq` (their
    /// devices and History view show nothing up to it).
    pub cleared_through: u64,
    /// Messages above `cleared_through` the user deleted for themselves,
    /// ascending (bounded by the writer).
    pub hidden: Vec<u64>,
}

/// A user's read state: every row, folded through `applied_seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStateSnapshot {
    /// Every inbox entry up to and including this seq is folded in.
    pub applied_seq: u64,
    pub rows: Vec<ReadStateRow>,
}
