//! Frees flushed memtables away from the storage engine's locks.
//!
//! fjall 3.1 frees a memtable once it is flushed, when it collects the
//! versions that still name it (`SuperVersions::maintenance` in lsm-tree),
//! and it does so under the keyspace's version lock, which every insert into
//! that keyspace takes. A 64 MiB skiplist is a few hundred thousand nodes
//! freed one at a time: the group commits that waited behind it took 60-200
//! ms to apply (docs/BENCHMARKS.md, "A flushed memtable freed under the
//! insert lock").
//!
//! So a thread of ours holds one more reference to every memtable it has
//! seen active. When the engine lets go of one, it only lowers a count; the
//! reaper sees it is the last holder and frees it here, holding no lock of
//! the engine's. Not covered, so still freed by the engine as before:
//! memtables the journal's recovery seals while the database opens, before
//! the reaper starts (flushed once, at startup), and any memtable whose
//! whole active life fell between two passes (forced rotations of nearly
//! empty ones, or a pass delayed on a busy machine).
//!
//! It relies on two public, undocumented parts of fjall: `Keyspace::tree`
//! and `AbstractTree::active_memtable` (a clone of the memtable's `Arc`,
//! taken under the version lock's read side). The tests below pin both.

use fjall::AbstractTree;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// How often the reaper looks for new active memtables and frees released
/// ones: a memtable released by the engine lives about this much longer
/// (more when a pass is late, or busy freeing another).
const REAP_INTERVAL: Duration = Duration::from_millis(20);

/// The reaper thread; dropping it stops and joins the thread, which lets go
/// of everything it held (by then only counts to lower: the store's last
/// handle is gone, but the engine still holds its live memtables until the
/// database closes).
pub(super) struct Reaper {
    /// Never sent on: dropping it is the stop request.
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    pub(super) fn start(keyspaces: Vec<fjall::Keyspace>) -> std::io::Result<Self> {
        let (stop, stop_requests) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("timeline-reaper".into())
            .spawn(move || run(&keyspaces, &stop_requests))?;
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
            // The panic was logged when it happened (`Stopped`).
            let _ = thread.join();
        }
    }
}

/// Logs a reaper that ends by panicking (a poisoned version lock): writes
/// go on, with the stalls this thread exists to remove back, so say so.
struct Stopped;

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the memtable reaper stopped: flushed memtables are freed under the insert lock again, stalling writes"
            );
        }
    }
}

fn run(keyspaces: &[fjall::Keyspace], stop_requests: &Receiver<()>) {
    let _stopped = Stopped;
    let mut held = Held::default();
    loop {
        held.reap(keyspaces);
        match stop_requests.recv_timeout(REAP_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => continue,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The memtables the reaper holds a reference to.
#[derive(Default)]
struct Held(Vec<Arc<lsm_tree::Memtable>>);

impl Held {
    fn reap(&mut self, keyspaces: &[fjall::Keyspace]) {
        for keyspace in keyspaces {
            // Taken while the memtable is active, so the engine can never
            // be its last holder.
            let active = keyspace.tree.active_memtable();
            if !self.0.iter().any(|held| Arc::ptr_eq(held, &active)) {
                self.0.push(active);
            }
        }
        let mut next = 0;
        while next < self.0.len() {
            if Arc::strong_count(&self.0[next]) > 1 {
                next += 1;
                continue;
            }
            // Nobody else holds it any longer: the skiplist is freed here,
            // on this thread, and timed, since this is the cost that used
            // to stall writes.
            let released = self.0.swap_remove(next);
            let started = std::time::Instant::now();
            drop(released);
            metrics::histogram!("timeline_store_memtable_free_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
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

    /// Rotations the engine may take to let go of a flushed memtable: it
    /// collects the versions that name one at the next rotation or so.
    const MAX_ROTATIONS: usize = 20;

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
        assert!(first.strong_count() >= 2, "the engine's and the reaper's");

        // Each rotation flushes, and collects the versions that named
        // earlier memtables once no snapshot needs them.
        let mut rotations = 0;
        while first.strong_count() > 1 {
            assert!(
                rotations < MAX_ROTATIONS,
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
    }

    /// The active memtable is held once however many passes see it, and a
    /// rotation adds the new one.
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
        for _ in 0..3 {
            held.reap(std::slice::from_ref(&rows));
        }
        let active = rows.tree.active_memtable();
        assert_eq!(held.0.iter().filter(|m| Arc::ptr_eq(m, &active)).count(), 1);
        for (i, m) in held.0.iter().enumerate() {
            assert!(
                held.0[i + 1..].iter().all(|other| !Arc::ptr_eq(m, other)),
                "a memtable held twice"
            );
        }
    }

    /// Dropping the reaper stops its thread and lets go of the keyspaces
    /// it held, so the database closes and its directory opens again (a
    /// reaper that never stopped would hold it locked).
    #[test]
    fn a_dropped_reaper_lets_the_database_close() {
        let dir = tempfile::tempdir().unwrap();
        let (db, rows) = keyspace(dir.path());
        rows.insert("row", "row").unwrap();
        let reaper = Reaper::start(vec![rows]).unwrap();
        std::thread::sleep(REAP_INTERVAL * 2);
        drop(reaper);
        drop(db);
        let (_db, rows) = keyspace(dir.path());
        assert!(rows.get("row").unwrap().is_some());
    }
}
