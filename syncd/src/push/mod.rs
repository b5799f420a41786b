//! Push: telling subscribed devices that their inbox moved.
//!
//! - [`hub`]: per subscribed user, the highest inbox seq safe to announce
//!   (a `watch` value: publishing overwrites, never waits, so the send path
//!   never slows down for a subscriber).
//! - [`groups`]: per large (read-fanout) group, the streams subscribed now,
//!   and per stream the groups that moved, in a priority and an ordinary
//!   lane (a large group's message costs a visit per *online* member).
//! - [`feed`]: one subscriber's stream of notices, with entries inline while
//!   it keeps up and bare "up to N" notices when it is far behind.
//! - [`recent`]: the newest entries of a subscribed user, so a feed that
//!   keeps up pushes them without a store read.
//!
//! Both hubs are fed by the one announce path ([`crate::observer`]).

pub mod feed;
pub mod groups;
pub mod hub;
pub mod recent;

pub use feed::{Feed, Push, PushNotice};
pub use groups::{GroupHub, GroupNotice};
pub use hub::{Hub, Subscription};

use crate::horizon::Scope;
use crate::observer::{CommitObserver, Committed};

impl Hub {
    /// Replaces the held copies an event rewrites in place.
    fn rewrite_all(&self, commit: &timeline_store::EventCommit) {
        for rewrite in &commit.rewrites {
            for write in &rewrite.inbox {
                self.rewrite(write.user_id, write.seq, &rewrite.entry);
            }
        }
    }
}

impl CommitObserver for Hub {
    /// Before any of the event's seqs can be announced, so a feed woken by
    /// one finds its entry in memory.
    fn before_visible(&self, commit: &timeline_store::EventCommit) {
        // A heavy entry's inbox copies refer to its conversation entry, which
        // an edit rewrites alone: memory could not follow it, so such entries
        // are read from the store.
        if timeline_store::payload_bytes(&commit.entry) > timeline_store::INBOX_INLINE_PAYLOAD_BYTES
        {
            return self.rewrite_all(commit);
        }
        self.remember_copies(
            commit.inbox.iter().map(|write| (write.user_id, write.seq)),
            &commit.entry,
        );
        self.rewrite_all(commit);
    }

    /// A recall or edit being stored (perhaps finished in the background,
    /// announced only later): the copies it replaces leave memory now, so
    /// until the rewrite is announced their feeds read the store.
    fn before_commit(&self, commit: &timeline_store::EventCommit) {
        for rewrite in &commit.rewrites {
            for write in &rewrite.inbox {
                self.forget(write.user_id, write.seq);
            }
        }
    }

    fn committed(&self, event: &Committed<'_>) {
        self.released(event.visible);
    }

    fn released(&self, visible: &[(crate::horizon::Key, u64)]) {
        for &((scope, user_id), visible) in visible {
            if scope == Scope::Inbox {
                self.publish(user_id, visible);
            }
        }
    }
}
