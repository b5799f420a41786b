//! Frees flushed memtables away from the storage engine's locks.
//!
//! fjall 3.1 frees a memtable once it is flushed, when it collects the
//! versions that still name it (`SuperVersions::maintenance` in lsm-tree),
//! and it does so under the keyspace's version lock, which every insert into
//! that keyspace takes. Freeing a 64 MiB skiplist, a few hundred thousand
//! nodes one at a time, took 60-200 ms there: every group commit that
//! inserted into the keyspace waited for it (docs/BENCHMARKS.md, "A flushed
//! memtable freed under the insert lock").
//!
//! So a thread of ours holds one more reference to every memtable it has
//! seen active. When the engine lets go of one, it only lowers a count; the
//! reaper sees it is the last holder and frees it here, under no lock but
//! its own. A memtable so short-lived that the reaper never saw it active is
//! freed by the engine as before (only forced rotations of nearly empty
//! memtables are that short).
//!
//! It relies on two public, undocumented parts of fjall: `Keyspace::tree`
//! and `AbstractTree::active_memtable` (a clone of the memtable's `Arc`,
//! taken under the version lock's read side). The tests below pin both.

use fjall::AbstractTree;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// How often the reaper looks for new active memtables and frees released
/// ones: a memtable released by the engine lives at most this much longer.
const REAP_INTERVAL: Duration = Duration::from_millis(20);

/// The reaper thread; dropping it stops and joins the thread, which lets go
/// of everything it held (by then only counts to lower: the store's last
/// handle is gone, but the engine still holds its live memtables until the
/// database closes).
pub(super) struct Reaper {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    pub(super) fn start(keyspaces: Vec<fjall::Keyspace>) -> std::io::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("timeline-reaper".into())
            .spawn(move || run(&keyspaces, &stopped))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(keyspaces: &[fjall::Keyspace], stopped: &Receiver<()>) {
    let mut held = Held::default();
    loop {
        held.reap(keyspaces);
        match stopped.recv_timeout(REAP_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => continue,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The memtables the reaper holds a reference to.
#[derive(Default)]
struct Held(Vec<Arc<lsm_tree::Memtable>>);

impl Held {
    /// Takes a reference to each keyspace's active memtable not held yet,
    /// then frees the memtables nobody else holds any longer.
    fn reap(&mut self, keyspaces: &[fjall::Keyspace]) {
        for keyspace in keyspaces {
            let active = keyspace.tree.active_memtable();
            if !self.0.iter().any(|held| Arc::ptr_eq(held, &active)) {
                self.0.push(active);
            }
        }
        // The engine has let go of these: the last reference is dropped,
        // and the skiplist freed, here.
        self.0.retain(|held| Arc::strong_count(held) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyspace(dir: &std::path::Path) -> (fjall::Database, fjall::Keyspace) {
        let db = fjall::Database::builder(dir).open().unwrap();
        let keyspace = db
            .keyspace("rows", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        (db, keyspace)
    }

    /// The engine's release of a flushed memtable the reaper saw is only a
    /// count lowered; the skiplist is freed by the reaper's next pass.
    #[test]
    fn a_flushed_memtable_is_freed_by_the_reaper_not_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rows) = keyspace(dir.path());
        rows.insert("first", "row").unwrap();
        let mut held = Held::default();
        held.reap(std::slice::from_ref(&rows));
        let first = Arc::downgrade(&rows.tree.active_memtable());
        assert_eq!(first.strong_count(), 2, "the engine's and the reaper's");

        // Each rotation flushes, and collects the versions that named
        // earlier memtables once no snapshot needs them.
        let mut rotations = 0;
        while first.strong_count() > 1 {
            assert!(
                rotations < 20,
                "the engine never let go of a flushed memtable"
            );
            rows.insert(format!("row {rotations}"), "row").unwrap();
            rows.rotate_memtable_and_wait().unwrap();
            rotations += 1;
        }
        assert_eq!(
            first.strong_count(),
            1,
            "the engine's release must leave the memtable to the reaper"
        );

        held.reap(std::slice::from_ref(&rows));
        assert_eq!(
            first.strong_count(),
            0,
            "the reaper frees what only it holds"
        );
        assert!(
            held.0.iter().all(|m| Arc::strong_count(m) > 1),
            "it keeps only memtables the engine still uses"
        );
    }

    /// The active memtable stays held across passes, once.
    #[test]
    fn each_active_memtable_is_held_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rows) = keyspace(dir.path());
        let mut held = Held::default();
        for _ in 0..3 {
            held.reap(std::slice::from_ref(&rows));
        }
        assert_eq!(held.0.len(), 1);
        rows.insert("row", "row").unwrap();
        rows.rotate_memtable_and_wait().unwrap();
        held.reap(std::slice::from_ref(&rows));
        assert!(
            held.0
                .iter()
                .any(|m| Arc::ptr_eq(m, &rows.tree.active_memtable()))
        );
    }

    /// Dropping the store's reaper stops its thread.
    #[test]
    fn the_reaper_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, rows) = keyspace(dir.path());
        let reaper = Reaper::start(vec![rows]).unwrap();
        drop(reaper);
    }
}
