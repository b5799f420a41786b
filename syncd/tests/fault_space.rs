//! The engine under a seeded storm: random interleavings of sends (keyed,
//! unkeyed, retried), conversation creation (direct, small and large
//! groups), membership changes, retention passes, restarts (graceful, a
//! dropped engine whose background work still lands, and a crash that
//! cancels everything in flight), store faults (errors, writes applied but
//! failed, delays, commits held back behind later ones), allocator raise
//! failures, and devices syncing, acking, subscribing and reading history.
//!
//! After every step the store, read directly, must agree with everything
//! any device was shown (no seq or conv_seq with two contents, inbox order
//! follows conv_seq order); every reply is checked as it arrives (seqs
//! increase, checkpoints never go down, a retried client id answers the
//! first receipt). At the end, with faults off and background work settled,
//! every device drains its inbox and its large groups, and the run checks
//! that no device skipped or saw twice what the store holds for it, that
//! every event sits in exactly the inboxes the fanout rules name, that every
//! acknowledged send is in its timeline once, and that large-group members
//! found each message through History.
//!
//! A seed replays exactly: one current-thread runtime with a paused clock
//! per engine lifetime, a seeded fault generator, and a virtual clock for
//! message ids. `FAULT_SPACE_SEEDS=N` runs N seeds, `FAULT_SPACE_SEED=S`
//! replays one (with its whole trace), `FAULT_SPACE_STEPS=N` shortens or
//! lengthens each run.
//!
//! Layout: this file drives the run (plans, epochs between restarts, the
//! seeds, the faults each seed draws); `fault_space/world.rs` holds the
//! shared state and the seeded generator, `writes.rs` and `reads.rs` the operations, `checks.rs` the
//! checks, and `model.rs` what the store must hold.

#[path = "fault_space/checks.rs"]
mod checks;
#[path = "fault_space/model.rs"]
mod model;
#[path = "fault_space/reads.rs"]
mod reads;
#[path = "fault_space/world.rs"]
mod world;
#[path = "fault_space/writes.rs"]
mod writes;

use checks::*;
use reads::*;
use world::*;
use writes::*;

use model::{
    Acked, CHECK_LARGE_GROUPS_LISTED_ONLY_AFTER_THEIR_ENTRY_EVENT,
    CHECK_REMOVED_LARGE_MEMBERS_KEEP_THEIR_MESSAGES, CHECK_RETRY_WITH_OTHER_TEXT_IS_REFUSED,
    Device, KeyedSend, KnownConversation, LARGE_GROUP_THRESHOLD, Model, Snapshot, entry_points,
    may_be_trimmed, replay,
};
use seqsvc::snowflake::{Clock, EPOCH_MS};
use seqsvc::{
    Allocator, AllocatorConfig, MaxSeqStore, MemoryMaxSeqStore, MsgIdGenerator, Namespace,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use syncd::SyncdError;
use syncd::auth::Principal;
use syncd::engine::{
    Engine, EngineConfig, HistoryQuery, MembershipChange, NewConversation, Retention, SendCommand,
};
use timeline_store::testsuite::{Faults, FaultyStore, MemoryStore};
use timeline_store::{
    Conversation, ConversationKind, ConversationRange, ConversationReads, Entry, EntryKind,
    InboxRange, InboxReads, InboxRetention, TimelineStore,
};
use tokio::task::JoinSet;
use uuid::Uuid;

const DEFAULT_SEEDS: u64 = 400;
const DEFAULT_STEPS: usize = 150;
const USERS: u64 = 8;
/// Operations in flight at once.
const MAX_IN_FLIGHT: usize = 6;
/// Trace lines printed with a failure.
const TRACE_TAIL: usize = 80;

type Store = FaultyStore<MemoryStore>;

/// Replaying one seed: print the trace as it happens (a hang shows where).
static LIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// ---------------------------------------------------------------- the driver

fn plan_for(seed: u64, steps: usize) -> Plan {
    let mut rng = Rng::new(seed ^ 0x5eed_f00d);
    let keep_entries = [0, 3, 6, 12][rng.below(4) as usize];
    let faults = random_faults(&mut rng);
    let restart_share = [0.0, 0.02, 0.05][rng.below(3) as usize];
    let restarts = match rng.below(4) {
        0 => vec![Restart::Graceful],
        1 => vec![Restart::Dropped],
        2 => vec![Restart::Crash],
        _ => vec![Restart::Graceful, Restart::Dropped, Restart::Crash],
    };
    Plan {
        steps,
        keep_entries,
        faults,
        restart_share,
        restarts,
    }
}

fn random_faults(rng: &mut Rng) -> Faults {
    let mut faults = Faults::default();
    if rng.chance(0.6) {
        faults.commit_errors = [0.05, 0.15, 0.3][rng.below(3) as usize];
        faults.write_errors = [0.0, 0.1, 0.2][rng.below(3) as usize];
        faults.read_errors = [0.0, 0.03, 0.1][rng.below(3) as usize];
        faults.applied_share = [0.0, 0.5, 1.0][rng.below(3) as usize];
    }
    if rng.chance(0.6) {
        faults.commit_delay = Duration::from_micros(rng.below(3_000) + 1);
        faults.inbox_read_delay = Duration::from_micros(rng.below(1_000) + 1);
    }
    if rng.chance(0.5) {
        faults.held_commits = [0.1, 0.3][rng.below(2) as usize];
        faults.max_hold = Duration::from_millis(rng.below(10) + 1);
    }
    faults
}

/// Picks and starts one operation; returns a line for the trace.
fn start_op(
    world: &Arc<World>,
    engine: &Arc<Engine>,
    rng: &mut Rng,
    step: usize,
    ops: &mut JoinSet<()>,
) -> String {
    let mut state = world.state();
    let model = &mut state.model;
    let roll = rng.below(100);
    let (w, e) = (Arc::clone(world), Arc::clone(engine));
    if roll < 12 || model.conversations.is_empty() {
        let creator = rng.below(USERS) + 1;
        let (principal, kind, members, what) = match rng.below(3) {
            0 => {
                let other = rng.users(1, creator);
                (
                    device(creator, "s"),
                    ConversationKind::Direct,
                    other,
                    "direct",
                )
            }
            1 => {
                let n = rng.below(3) as usize + 1;
                let members = rng.users(n, creator);
                (
                    device(creator, "s"),
                    ConversationKind::Group,
                    members,
                    "small group",
                )
            }
            _ => {
                let n = LARGE_GROUP_THRESHOLD + 1 + rng.below(2) as usize;
                (
                    service(),
                    ConversationKind::Group,
                    rng.users(n, 0),
                    "large group",
                )
            }
        };
        let line = format!("#{step} create {what} by {principal:?} with {members:?}");
        ops.spawn(op_create(w, e, step, principal, kind, members));
        return line;
    }
    if roll < 45 {
        // A send: new (keyed or not), a retry after a failure, or a retry
        // of an acknowledged one.
        let retry = match rng.below(20) {
            0..=3 => rng.pick(&model.unanswered).cloned(),
            4..=5 => rng.pick(&model.answered).cloned(),
            6 => rng.pick(&model.answered).cloned().map(|send| KeyedSend {
                text: format!("{} changed", send.text),
                ..send
            }),
            _ => None,
        };
        let (send, keyed, what) = match retry {
            Some(send) => (send, true, "retry"),
            None => {
                let conversation = rng.pick(&model.conversations).expect("one").clone();
                let user = rng.pick(&conversation.members).copied().unwrap_or(1);
                let send = KeyedSend {
                    user,
                    conversation_id: conversation.id,
                    text: format!("m{step}"),
                    id: Uuid::from_u64_pair(rng.next(), rng.next()),
                };
                let keyed = rng.chance(0.7);
                if keyed {
                    model.unanswered.push(send.clone());
                }
                (send, keyed, if keyed { "keyed send" } else { "send" })
            }
        };
        let line = format!(
            "#{step} {what} {} by {} to {} ({})",
            send.text, send.user, send.conversation_id, send.id
        );
        ops.spawn(op_send(w, e, step, send, keyed));
        return line;
    }
    if roll < 55 {
        let groups: Vec<KnownConversation> = model
            .conversations
            .iter()
            .filter(|c| !c.direct)
            .cloned()
            .collect();
        if let Some(group) = rng.pick(&groups) {
            let (change, members) = if rng.chance(0.55) {
                let n = rng.below(2) as usize + 1;
                (MembershipChange::Add, rng.users(n, 0))
            } else {
                let pick = rng.pick(&group.members).copied().unwrap_or(1);
                (MembershipChange::Remove, vec![pick])
            };
            let line = format!("#{step} {change:?} {members:?} in {}", group.id);
            ops.spawn(op_change(w, e, step, group.id, members, change));
            return line;
        }
    }
    if roll < 62 {
        let user = rng.below(USERS) + 1;
        ops.spawn(op_trim(w, e, step, user));
        return format!("#{step} trim {user}");
    }
    if roll < 68 {
        let user = rng.below(USERS) + 1;
        let after = model
            .devices
            .iter()
            .filter(|d| d.user == user)
            .map(|d| d.checkpoint)
            .min()
            .unwrap_or(0);
        let include = rng.chance(0.7);
        ops.spawn(op_subscribe(w, e, step, user, after, include));
        return format!("#{step} subscribe {user} after {after} entries {include}");
    }
    // A device syncs.
    let idle: Vec<usize> = (0..model.devices.len())
        .filter(|&i| !model.devices[i].busy)
        .collect();
    let Some(&index) = rng.pick(&idle) else {
        return format!("#{step} (every device busy)");
    };
    model.devices[index].busy = true;
    let limit = rng.below(6) as usize + 1;
    let d = &model.devices[index];
    let line = format!("#{step} sync {}/{} limit {limit}", d.user, d.name);
    ops.spawn(async move {
        op_sync(w, e, step, index, limit, false).await;
    });
    line
}

enum EpochEnd {
    Restart(Restart),
    Done,
}

/// Engines one after another in one runtime, until a crash ends it (and
/// with it everything still in flight) or the run is over. Returns the
/// number of restarts and whether the run is over.
async fn lifetimes(world: Arc<World>, rng: &mut Rng, step: &mut usize) -> (usize, bool) {
    let mut restarts = 0;
    loop {
        match epoch(Arc::clone(&world), rng, step).await {
            EpochEnd::Restart(how) => {
                restarts += 1;
                if how == Restart::Crash {
                    return (restarts, false);
                }
                if how == Restart::Dropped {
                    // A process that goes away leaves no write behind to
                    // land after the next one serves: the embedded store's
                    // commits die with it, and ScyllaDB's intents are
                    // re-applied by `recover` before the next one serves.
                    // The in-memory store has neither, so the old engine's
                    // commits in flight land first.
                    while world.store.commits_in_flight() > 0 {
                        tokio::time::sleep(Duration::from_micros(100)).await;
                    }
                }
            }
            EpochEnd::Done => return (restarts, true),
        }
    }
}

/// One engine's life: steps until a restart or the end.
async fn epoch(world: Arc<World>, rng: &mut Rng, step: &mut usize) -> EpochEnd {
    let engine = world.engine().await;
    for d in &mut world.state().model.devices {
        d.busy = false;
    }
    let mut ops = JoinSet::new();
    while *step < world.plan.steps {
        *step += 1;
        let n = *step;
        world.clock_ms.fetch_add(1, Ordering::SeqCst);
        if rng.chance(world.plan.restart_share) {
            let how = *rng.pick(&world.plan.restarts).expect("one");
            world.trace(format!("#{n} restart: {how:?}"));
            world.count(match how {
                Restart::Graceful => "restart graceful",
                Restart::Dropped => "restart dropped",
                Restart::Crash => "restart crash",
            });
            match how {
                Restart::Graceful => {
                    while ops.join_next().await.is_some() {}
                    engine.shutdown().await;
                }
                Restart::Dropped => {
                    // Clients of the old engine finish first: two engines
                    // allocating at once is not a supported deployment.
                    while ops.join_next().await.is_some() {}
                }
                Restart::Crash => {}
            }
            return EpochEnd::Restart(how);
        }
        if rng.chance(0.04) {
            let faults = if rng.chance(0.3) {
                Faults::default()
            } else {
                random_faults(rng)
            };
            world.trace(format!("#{n} faults {faults:?}"));
            world.store.set_faults(faults);
        } else if rng.chance(0.02) {
            let raises = rng.below(2) as u32 + 1;
            world.trace(format!("#{n} the next {raises} allocator raises fail"));
            world.seq_store.fail_next_raises(raises);
        } else {
            let line = start_op(&world, &engine, rng, n, &mut ops);
            world.trace(line);
        }
        while ops.len() >= MAX_IN_FLIGHT {
            ops.join_next().await;
        }
        tokio::time::sleep(Duration::from_micros(rng.below(2_000))).await;
        while ops.try_join_next().is_some() {}
        check_store(&world, n).await;
        if world.failed() {
            return EpochEnd::Done;
        }
    }
    // The end: faults off, background work settled, every device drained.
    while ops.join_next().await.is_some() {}
    world.store.set_faults(Faults::default());
    world.seq_store.fail_next_raises(0);
    world.trace("end: faults off, settling".into());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let last = *step + 1;
    let devices = world.state().model.devices.len();
    for index in 0..devices {
        let mut done = false;
        let before = world.state().violations.len();
        for _ in 0..200 {
            if world.state().violations.len() > before {
                break;
            }
            world.state().model.devices[index].busy = true;
            if op_sync(
                Arc::clone(&world),
                Arc::clone(&engine),
                last,
                index,
                50,
                true,
            )
            .await
            {
                done = true;
                break;
            }
        }
        if !done {
            let what = {
                let d = &world.state().model.devices[index];
                format!("{}/{} could not drain its inbox", d.user, d.name)
            };
            world.violate(last, what);
        }
    }
    check_store(&world, last).await;
    let snapshot = snapshot(&world).await;
    final_check(&world, &snapshot, last);
    engine.shutdown().await;
    EpochEnd::Done
}

struct Outcome {
    counts: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    trace: Vec<String>,
    restarts: usize,
    steps: usize,
}

fn run_seed(seed: u64, steps: usize) -> Outcome {
    let plan = plan_for(seed, steps);
    let store = FaultyStore::new(MemoryStore::new(), seed).with_faults(plan.faults.clone());
    let mut model = Model::default();
    for user in 1..=USERS {
        for (name, stored) in [("e", false), ("s", true)] {
            model.devices.push(Device {
                user,
                name: name.into(),
                stored,
                ..Device::default()
            });
        }
    }
    let world = Arc::new(World {
        store: Arc::new(store),
        seq_store: Arc::new(MemoryMaxSeqStore::new()),
        clock_ms: Arc::new(AtomicU64::new(EPOCH_MS + 1_000_000)),
        state: Mutex::new(State {
            model,
            trace: vec![format!("seed {seed}: {plan:?}")],
            violations: Vec::new(),
            counts: BTreeMap::new(),
        }),
        plan,
    });
    let mut rng = Rng::new(seed);
    let mut step = 0;
    let mut restarts = 0;
    loop {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let (restarted, over) =
            runtime.block_on(lifetimes(Arc::clone(&world), &mut rng, &mut step));
        // Dropping the runtime cancels whatever is still in flight: after a
        // crash, that is the point.
        drop(runtime);
        restarts += restarted;
        if over {
            break;
        }
    }
    let store = world.store.counters();
    world.count_n("store commits", store.commits);
    world.count_n("store injected failures", store.injected_failures);
    world.count_n("store held commits", store.held_commits);
    let state = world.state();
    Outcome {
        counts: state.counts.clone(),
        violations: state.violations.clone(),
        trace: state.trace.clone(),
        restarts,
        steps: step,
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn the_engine_survives_the_fault_space() {
    let steps = env("FAULT_SPACE_STEPS").map_or(DEFAULT_STEPS, |s| s as usize);
    let seeds: Vec<u64> = match env("FAULT_SPACE_SEED") {
        Some(seed) => vec![seed],
        None => (0..env("FAULT_SPACE_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let replaying = seeds.len() == 1;
    LIVE.store(replaying, Ordering::Relaxed);
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let restarts = AtomicU64::new(0);
    let counts = Mutex::new(BTreeMap::<&'static str, u64>::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    let Some(&seed) = seeds.get(i) else { return };
                    let outcome = run_seed(seed, steps);
                    restarts.fetch_add(outcome.restarts as u64, Ordering::SeqCst);
                    let mut total = counts.lock().unwrap();
                    for (what, n) in &outcome.counts {
                        *total.entry(what).or_insert(0) += n;
                    }
                    drop(total);
                    if !outcome.violations.is_empty() {
                        failures.lock().unwrap().push((seed, outcome));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    eprintln!("fault space counts: {:?}", counts.into_inner().unwrap());
    eprintln!(
        "fault space: {} seeds of {steps} steps, {} restarts, {} failed, in {:.1?}",
        seeds.len(),
        restarts.load(Ordering::SeqCst),
        failures.len(),
        started.elapsed()
    );
    if failures.is_empty() {
        return;
    }
    failures.sort_by_key(|(seed, o)| (o.steps, *seed));
    for (seed, outcome) in &failures {
        eprintln!(
            "seed {seed} (step {}): {}",
            outcome.steps, outcome.violations[0]
        );
    }
    let (seed, outcome) = &failures[0];
    if !replaying {
        let tail = outcome.trace.len().saturating_sub(TRACE_TAIL);
        eprintln!("--- trace of seed {seed} (last {TRACE_TAIL} lines) ---");
        for line in &outcome.trace[tail..] {
            eprintln!("{line}");
        }
    }
    panic!(
        "{} seeds failed; replay one with FAULT_SPACE_SEED={seed}",
        failures.len()
    );
}

/// A failing seed is only useful if it replays: the same seed must make
/// the same run, step for step.
#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17] {
        let first = run_seed(seed, 60);
        let again = run_seed(seed, 60);
        assert!(first.trace.len() > 60, "seed {seed} did little");
        assert_eq!(first.trace, again.trace, "seed {seed} did not replay");
    }
}
