//! The run's shared state (store, model, trace, violations, counters), its
//! seeded fault generator, and the small readers every operation uses.

use super::*;

/// The fault generator's splitmix64: a seed fully determines it.
pub(crate) struct Rng(timeline_store::testsuite::SplitMix64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(timeline_store::testsuite::SplitMix64::new(seed))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
    pub(crate) fn users(&mut self, n: usize, except: u64) -> Vec<u64> {
        let mut all: Vec<u64> = (1..=USERS).filter(|&u| u != except).collect();
        let mut out = Vec::new();
        while out.len() < n && !all.is_empty() {
            out.push(all.remove(self.below(all.len() as u64) as usize));
        }
        out
    }
}

/// How the engine goes away at a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restart {
    /// `shutdown()`, then drop.
    Graceful,
    /// Dropped without `shutdown()`: its background finishers stop (a
    /// commit they had started lands before the next engine starts).
    Dropped,
    /// The runtime goes: everything in flight is cancelled mid-await.
    Crash,
}

/// Per-seed settings.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) steps: usize,
    pub(crate) keep_entries: u64,
    pub(crate) faults: Faults,
    pub(crate) restart_share: f64,
    pub(crate) restarts: Vec<Restart>,
}

pub(crate) struct World {
    pub(crate) store: Arc<Store>,
    pub(crate) seq_store: Arc<MemoryMaxSeqStore>,
    pub(crate) clock_ms: Arc<AtomicU64>,
    pub(crate) plan: Plan,
    pub(crate) state: Mutex<State>,
}

pub(crate) struct State {
    pub(crate) model: Model,
    pub(crate) trace: Vec<String>,
    pub(crate) violations: Vec<String>,
    /// How often each interesting thing happened: evidence that a run
    /// reached the paths it is meant to.
    pub(crate) counts: BTreeMap<&'static str, u64>,
}

impl World {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn trace(&self, line: String) {
        if LIVE.load(Ordering::Relaxed) {
            eprintln!("{line}");
        }
        self.state().trace.push(line);
    }

    pub(crate) fn count(&self, what: &'static str) {
        self.count_n(what, 1);
    }

    pub(crate) fn count_n(&self, what: &'static str, n: u64) {
        *self.state().counts.entry(what).or_insert(0) += n;
    }

    pub(crate) fn violate(&self, step: usize, what: String) {
        let mut state = self.state();
        state.trace.push(format!("#{step} VIOLATION {what}"));
        state.violations.push(format!("#{step}: {what}"));
    }

    pub(crate) fn failed(&self) -> bool {
        !self.state().violations.is_empty()
    }

    pub(crate) fn config(&self) -> EngineConfig {
        EngineConfig {
            large_group_threshold: LARGE_GROUP_THRESHOLD,
            retention: Retention {
                max_entries: self.plan.keep_entries,
                ..Retention::default()
            },
            ..EngineConfig::default()
        }
    }

    pub(crate) async fn engine(&self) -> Arc<Engine> {
        let seqs: Arc<dyn MaxSeqStore> = self.seq_store.clone();
        // Tiny sections and steps: sections are shared and steps run out,
        // and a restart moves every seq to the section's persisted max.
        let config = AllocatorConfig {
            step: 16,
            section_size: 4,
        };
        let allocator = Allocator::new(config, Arc::clone(&seqs)).expect("allocator");
        let clock_ms = Arc::clone(&self.clock_ms);
        let clock: Clock = Arc::new(move || clock_ms.load(Ordering::SeqCst));
        let ids = MsgIdGenerator::open(1, clock, seqs).await.expect("ids");
        let store: Arc<dyn TimelineStore> = self.store.clone();
        Engine::new(store, allocator, ids, self.config())
    }
}

pub(crate) fn device(user: u64, name: &str) -> Principal {
    Principal::Device {
        user_id: user,
        device_id: name.into(),
    }
}

pub(crate) fn service() -> Principal {
    Principal::Service { name: "ops".into() }
}

/// Errors a fault or a stale view explains; anything else is a violation.
pub(crate) fn expected(error: &SyncdError) -> bool {
    matches!(
        error,
        SyncdError::Unavailable(_)
            | SyncdError::PermissionDenied(_)
            | SyncdError::FailedPrecondition(_)
    )
}

pub(crate) fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// The whole inbox of a user, straight from the store.
pub(crate) async fn inbox_of(store: &MemoryStore, user: u64) -> Vec<Entry> {
    let all = InboxRange::new(0, u64::MAX, usize::MAX);
    store.read_inbox(user, all).await.expect("memory read")
}

pub(crate) async fn timeline_of(store: &MemoryStore, id: u64) -> Vec<Entry> {
    let all = ConversationRange::oldest_first(0, u64::MAX, usize::MAX);
    store.read_conversation(id, all).await.expect("memory read")
}
