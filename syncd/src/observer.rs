//! The one announce path: everything that must happen after an event
//! commits is an observer of committed events, called from one place
//! ([`Observers::announce`]), whether the event committed at once or was
//! finished in the background.
//!
//! The observers today: the conversation directory (the new record enters
//! the cache), push (subscribers learn their inbox's new safe top) and
//! retention (the inbox is a trim candidate). Observers run on the writer's
//! task and must not block or wait: each does a bounded, in-memory update.

use crate::horizon::{Assignment, Key};
use std::sync::Arc;
use timeline_store::EventCommit;

/// A durable event, with the timelines it made readable: per key, the
/// highest seq now safe to show.
pub struct Committed<'a> {
    pub commit: &'a EventCommit,
    pub visible: &'a [(Key, u64)],
}

pub trait CommitObserver: Send + Sync + 'static {
    /// Before any reader can see the event's seqs: what readers must find
    /// consistent with the event the moment they can see it (the new
    /// conversation record, for access checks).
    fn before_visible(&self, _commit: &EventCommit) {}

    /// Before the store is asked to commit the event (it may be stored
    /// long before it is announced, when it is finished in the
    /// background): what must not outlive the stored state it replaces.
    fn before_commit(&self, _commit: &EventCommit) {}

    /// Once the event's seqs are readable.
    fn committed(&self, _event: &Committed<'_>) {}

    /// A failed write released its seqs (gaps): `visible` is how far each
    /// of its keys is now safe to announce, which a write that completed
    /// behind it could not announce itself.
    fn released(&self, _visible: &[(Key, u64)]) {}
}

/// The registered observers, cheap to clone into a background task.
#[derive(Clone)]
pub struct Observers(Arc<[Arc<dyn CommitObserver>]>);

impl Observers {
    pub fn new(observers: Vec<Arc<dyn CommitObserver>>) -> Self {
        Self(observers.into())
    }

    /// Tells every observer that the store is about to commit `commit`.
    pub fn before_commit(&self, commit: &EventCommit) {
        for observer in self.0.iter() {
            observer.before_commit(commit);
        }
    }

    /// Tells every observer how far the keys of a released write are safe
    /// to announce now.
    pub fn released(&self, visible: &[(Key, u64)]) {
        for observer in self.0.iter() {
            observer.released(visible);
        }
    }

    /// A release hook for the horizon that does not keep the observers
    /// alive (some of them hold the horizon: a strong one would be a cycle,
    /// and a cluster node builds an engine per lease it wins).
    pub fn release_hook(&self) -> crate::horizon::ReleaseHook {
        let observers = Arc::downgrade(&self.0);
        Box::new(move |visible| {
            if let Some(observers) = observers.upgrade() {
                Observers(observers).released(visible);
            }
        })
    }

    /// Tells every observer that must act before readers see the event,
    /// marks its seqs durable in the horizon, then tells every observer
    /// that it is visible, in registration order.
    pub fn announce(&self, commit: &EventCommit, assignment: Assignment) {
        // Counted here, on the one path every committed event takes (at
        // once or finished in the background), so each counts once.
        // The kind's name (`Message`, `MembersAdded`, ...): a closed set.
        let kind = format!("{:?}", commit.entry.kind);
        metrics::counter!("syncd_events_committed_total", "kind" => kind).increment(1);
        metrics::counter!("syncd_inbox_entries_written_total").increment(commit.inbox.len() as u64);
        metrics::counter!("syncd_member_rows_written_total").increment(commit.members.len() as u64);
        metrics::histogram!("syncd_fanout_recipients").record(commit.inbox.len() as f64);
        for observer in self.0.iter() {
            observer.before_visible(commit);
        }
        let visible = assignment.complete();
        let event = Committed {
            commit,
            visible: &visible,
        };
        for observer in self.0.iter() {
            observer.committed(&event);
        }
    }
}
