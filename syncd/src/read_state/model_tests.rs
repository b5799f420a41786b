//! A seeded model-based test of read state: random groups, sends, marks
//! (duplicated, stale, from two devices), joins, leaves, rejoins, large
//! groups and restarts, on the in-memory and the embedded store. After
//! every step the server's list equals the model's counts, no read marker
//! goes down, and a device that took the list at an earlier step and
//! replays its inbox from there computes the same counts.
//!
//! `READ_STATE_SEED=N` replays one seed; `READ_STATE_SEEDS` and
//! `READ_STATE_STEPS` size the run.

mod model;

use crate::engine::{Engine, EngineConfig, ListQuery, MembershipChange, NewConversation};
use crate::testkit::*;
use model::{ConversationModel, DeviceRow, Model, replay};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use timeline_store::testsuite::{MemoryStore, SplitMix64};
use timeline_store::{ConversationKind, TimelineStore};

const USERS: u64 = 5;
const LARGE_GROUP_THRESHOLD: usize = 3;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run<S: TimelineStore> {
    store: Arc<S>,
    seqs: Arc<dyn seqsvc::MaxSeqStore>,
    engine: Arc<Engine>,
    model: Model,
    rng: SplitMix64,
    /// Highest read marker the server ever showed, per (user, conversation).
    shown: BTreeMap<(u64, u64), u64>,
    /// Per user: a list taken at an earlier step (its as_of_seq and rows).
    earlier: BTreeMap<u64, (u64, BTreeMap<u64, DeviceRow>)>,
    seed: u64,
}

fn config() -> EngineConfig {
    EngineConfig {
        large_group_threshold: LARGE_GROUP_THRESHOLD,
        ..EngineConfig::default()
    }
}

async fn start(store: Arc<dyn TimelineStore>, seqs: Arc<dyn seqsvc::MaxSeqStore>) -> Arc<Engine> {
    let (allocator, ids) = allocator_on(seqs, seqsvc::AllocatorConfig::default()).await;
    Engine::new(store, allocator, ids, config())
}

impl<S: TimelineStore> Run<S> {
    async fn new(store: Arc<S>, seed: u64) -> Self {
        let seqs: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(seqsvc::MemoryMaxSeqStore::new());
        let engine = start(store.clone(), Arc::clone(&seqs)).await;
        Self {
            store,
            seqs,
            engine,
            model: Model::default(),
            rng: SplitMix64::new(seed),
            shown: BTreeMap::new(),
            earlier: BTreeMap::new(),
            seed,
        }
    }

    fn pick(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn user(&mut self) -> u64 {
        1 + self.pick(USERS)
    }

    fn conversation(&mut self) -> Option<u64> {
        let ids: Vec<u64> = self.model.conversations.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.pick(ids.len() as u64) as usize])
    }

    fn member_of(&mut self, conversation: u64) -> Option<u64> {
        let members: Vec<u64> = self.model.conversations[&conversation]
            .members
            .iter()
            .copied()
            .collect();
        (!members.is_empty()).then(|| members[self.pick(members.len() as u64) as usize])
    }

    async fn step(&mut self) -> String {
        let roll = self.pick(100);
        let conversation = self.conversation();
        match (roll, conversation) {
            (0..10, _) | (_, None) => {
                let creator = self.user();
                let mut members: BTreeSet<u64> =
                    (0..self.pick(4)).map(|_| 1 + self.pick(USERS)).collect();
                members.insert(creator);
                let direct = members.len() == 2 && self.pick(2) == 0;
                let kind = match direct {
                    true => ConversationKind::Direct,
                    false => ConversationKind::Group,
                };
                let created = self
                    .engine
                    .create_conversation(
                        device(creator, "d"),
                        NewConversation {
                            kind,
                            members: members.iter().copied().collect(),
                            title: String::new(),
                            client_request_id: None,
                        },
                    )
                    .await
                    .unwrap();
                let id = created.conversation_id;
                let page = self
                    .engine
                    .history(&device(creator, "d"), history_all(id))
                    .await
                    .unwrap();
                let at = page.entries[0].conv_seq;
                self.model.conversations.insert(
                    id,
                    ConversationModel {
                        direct,
                        members: members.clone(),
                        messages: Vec::new(),
                        top: at,
                    },
                );
                for member in &members {
                    self.model.join(*member, id, at);
                }
                format!("create {id} {members:?}")
            }
            (10..55, Some(id)) => {
                let Some(sender) = self.member_of(id) else {
                    return "no member to send".into();
                };
                let members: Vec<u64> = self.model.conversations[&id]
                    .members
                    .iter()
                    .copied()
                    .collect();
                let named: BTreeSet<u64> = members
                    .iter()
                    .copied()
                    .filter(|_| self.rng.next_u64().is_multiple_of(4))
                    .collect();
                let everyone = !self.model.conversations[&id].direct && self.pick(6) == 0;
                let command = crate::engine::SendCommand {
                    mentions: crate::send::Mentions {
                        users: named.iter().copied().collect(),
                        everyone,
                    },
                    ..message(id, "m", None)
                };
                let sent = self
                    .engine
                    .send(device(sender, "d"), command)
                    .await
                    .unwrap();
                let at = sent.receipt.conv_seq;
                let mut named = named;
                named.remove(&sender);
                let conversation = self.model.conversations.get_mut(&id).unwrap();
                conversation
                    .messages
                    .push((at, sender, named.clone(), everyone));
                conversation.top = at;
                let reader = self.model.readers.get_mut(&(sender, id)).unwrap();
                reader.read_through = reader.read_through.max(at);
                self.model.raise_index(id, sender, at);
                format!("send {id} from {sender} at {at} mentioning {named:?} everyone {everyone}")
            }
            (55..80, Some(id)) => {
                let Some(user) = self.member_of(id) else {
                    return "no member to mark".into();
                };
                let top = self.model.conversations[&id].top;
                let through = match self.pick(3) {
                    0 => None,
                    _ => Some(1 + self.pick(top)),
                };
                let device_id = if self.pick(2) == 0 { "phone" } else { "laptop" };
                let ask = through.unwrap_or(top);
                let before = self.model.readers[&(user, id)].read_through;
                // Sometimes another device marks at the same time, through
                // somewhere else: the marker ends at the higher one.
                let other = (self.pick(3) == 0).then(|| 1 + self.pick(top));
                let highest = ask.max(other.unwrap_or(0));
                match other {
                    None => {
                        let marked = self
                            .engine
                            .mark_read(device(user, device_id), id, through)
                            .await
                            .unwrap();
                        assert_eq!(marked.read_through, before.max(ask), "seed {}", self.seed);
                        assert_eq!(
                            marked.seq != 0,
                            ask > before,
                            "seed {}: only a raise writes",
                            self.seed
                        );
                    }
                    Some(other) => {
                        let (a, b) = tokio::join!(
                            self.engine.mark_read(device(user, device_id), id, through),
                            self.engine
                                .mark_read(device(user, "tablet"), id, Some(other)),
                        );
                        let (a, b) = (a.unwrap(), b.unwrap());
                        assert!(a.read_through >= before.max(ask), "seed {}", self.seed);
                        assert!(b.read_through >= before.max(other), "seed {}", self.seed);
                        assert_eq!(a.read_through.max(b.read_through), before.max(highest));
                    }
                }
                let reader = self.model.readers.get_mut(&(user, id)).unwrap();
                reader.read_through = before.max(highest);
                if highest > before {
                    self.model.raise_index(id, user, highest);
                    let marked = self.model.marked.entry((id, user)).or_default();
                    *marked = (*marked).max(highest);
                }
                format!("mark {id} by {user} through {through:?}")
            }
            (80..96, Some(id)) if self.model.conversations[&id].direct => {
                "a direct conversation keeps its members".into()
            }
            (80..88, Some(id)) => {
                let user = self.user();
                let (_, at) = self
                    .engine
                    .change_members(service(), id, vec![user], MembershipChange::Add)
                    .await
                    .unwrap();
                let conversation = self.model.conversations.get_mut(&id).unwrap();
                if conversation.members.insert(user) {
                    conversation.top = at;
                    self.model.join(user, id, at);
                }
                format!("add {user} to {id} at {at}")
            }
            (88..96, Some(id)) => {
                let Some(user) = self.member_of(id) else {
                    return "no member to remove".into();
                };
                let (_, at) = self
                    .engine
                    .change_members(service(), id, vec![user], MembershipChange::Remove)
                    .await
                    .unwrap();
                let conversation = self.model.conversations.get_mut(&id).unwrap();
                conversation.members.remove(&user);
                conversation.top = at;
                self.model.readers.get_mut(&(user, id)).unwrap().member = false;
                format!("remove {user} from {id} at {at}")
            }
            _ => {
                self.engine.begin_shutdown();
                self.engine.shutdown().await;
                self.engine = start(self.store.clone(), Arc::clone(&self.seqs)).await;
                "restart".into()
            }
        }
    }

    /// The whole list of `user`, page by page.
    async fn list(&self, user: u64) -> (u64, u64, Vec<crate::engine::ConversationState>) {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let query = ListQuery {
                limit: 2,
                cursor: cursor.clone(),
                known_version: String::new(),
            };
            let page = self
                .engine
                .list_conversations(&device(user, "d"), query)
                .await
                .unwrap();
            all.extend(page.conversations);
            if page.cursor.is_empty() {
                return (page.as_of_seq, page.total_unread, all);
            }
            cursor = page.cursor;
        }
    }

    async fn check(&mut self, step: &str) {
        let seed = self.seed;
        for user in 1..=USERS {
            let (as_of, total, states) = self.list(user).await;
            let mut expected_total = 0;
            let listed: BTreeSet<u64> = states.iter().map(|s| s.conversation_id).collect();
            let known: BTreeSet<u64> = self
                .model
                .readers
                .keys()
                .filter(|(u, _)| *u == user)
                .map(|&(_, c)| c)
                .collect();
            assert_eq!(
                listed, known,
                "seed {seed}, after {step}: the conversations of {user}"
            );
            for state in &states {
                let conversation = &self.model.conversations[&state.conversation_id];
                if conversation.direct {
                    let peer = conversation.members.iter().find(|&&m| m != user).copied();
                    let peer_marked = peer
                        .and_then(|p| self.model.marked.get(&(state.conversation_id, p)))
                        .copied()
                        .unwrap_or(0);
                    assert_eq!(
                        state.peer_read_through, peer_marked,
                        "seed {seed}, after {step}: receipt of {user} in {}",
                        state.conversation_id
                    );
                }
                let id = state.conversation_id;
                let (expected, mentions) = self.model.unread(user, id);
                assert_eq!(
                    state.unread, expected,
                    "seed {seed}, after {step}: user {user} conversation {id}"
                );
                assert_eq!(
                    state.mentions, mentions,
                    "seed {seed}, after {step}: mentions of {user} in {id}"
                );
                expected_total += expected;
                let reader = self.model.readers[&(user, id)];
                assert_eq!(
                    state.read_through, reader.read_through,
                    "seed {seed}, after {step}: marker of {user} in {id}"
                );
                let shown = self.shown.entry((user, id)).or_default();
                assert!(
                    state.read_through >= *shown,
                    "seed {seed}: a marker went down"
                );
                *shown = state.read_through;
            }
            assert_eq!(
                total, expected_total,
                "seed {seed}, after {step}: total of {user}"
            );
            self.check_replay(user, as_of, &states, step).await;
        }
        self.check_receipts(step).await;
    }

    /// Receipts of one message per conversation equal the model's.
    async fn check_receipts(&mut self, step: &str) {
        let picks: Vec<(u64, u64, u64)> = self
            .model
            .conversations
            .iter()
            .filter(|(_, c)| !c.messages.is_empty())
            .map(|(&id, c)| {
                let (seq, sender, _, _) =
                    &c.messages[(id as usize * 7 + c.messages.len()) % c.messages.len()];
                (id, *seq, *sender)
            })
            .collect();
        for (id, conv_seq, sender) in picks {
            // Small pages, so the cursor is walked as in a huge group.
            let limit = 1 + (self.seed as usize + id as usize) % 3;
            let (member_count, read_by, _) =
                super::tests::all_receipts(&self.engine, id, conv_seq, limit).await;
            let receipts = crate::read_state::ReadReceipts {
                member_count,
                read_by,
                next_after_member: 0,
            };
            let expected = self.model.read_by(id, conv_seq, sender);
            assert_eq!(
                receipts.read_by, expected,
                "members {:?} index {:?} sender {sender} seed {}, after {step}: receipts of {id}/{conv_seq}",
                self.model.conversations[&id].members, self.model.index, self.seed
            );
            let others = self.model.receivers(id, conv_seq, sender).len();
            assert_eq!(receipts.member_count, others as u64, "seed {}", self.seed);
        }
    }

    /// A device that took the list earlier replays its inbox from there
    /// (write-fanout conversations: their messages are all in the inbox).
    async fn check_replay(
        &mut self,
        user: u64,
        as_of: u64,
        states: &[crate::engine::ConversationState],
        step: &str,
    ) {
        let now: BTreeMap<u64, DeviceRow> = states
            .iter()
            .map(|s| {
                let row = DeviceRow {
                    member: s.member,
                    read_through: s.read_through,
                    unread: s.unread,
                    mentions: s.mentions,
                };
                (s.conversation_id, row)
            })
            .collect();
        if let Some((from, mut rows)) = self.earlier.get(&user).cloned() {
            let page = self
                .engine
                .sync(&device(user, "replay"), Some(from), 10_000)
                .await
                .unwrap();
            for entry in page.entries.iter().filter(|e| e.seq <= as_of) {
                replay(&mut rows, entry, user);
            }
            for (id, row) in &rows {
                let large = states
                    .iter()
                    .any(|s| s.conversation_id == *id && s.read_fanout);
                if !large {
                    assert_eq!(
                        Some(row),
                        now.get(id),
                        "seed {}, after {step}: replay of {user}'s inbox from {from}, conversation {id}",
                        self.seed
                    );
                }
            }
        }
        if self.pick(4) == 0 || !self.earlier.contains_key(&user) {
            self.earlier.insert(user, (as_of, now));
        }
    }
}

fn history_all(conversation_id: u64) -> crate::engine::HistoryQuery {
    crate::engine::HistoryQuery {
        conversation_id,
        before: 0,
        after: Some(0),
        limit: 1,
    }
}

async fn run_seed<S: TimelineStore>(store: Arc<S>, seed: u64, steps: u64) {
    let mut run = Run::new(store, seed).await;
    for _ in 0..steps {
        let step = run.step().await;
        run.check(&step).await;
    }
    eprintln!(
        "read-state seed {seed}: {steps} steps, {} conversations",
        run.model.conversations.len()
    );
}

fn seeds(default: u64) -> Vec<u64> {
    match std::env::var("READ_STATE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (1..=env("READ_STATE_SEEDS", default)).collect(),
    }
}

#[tokio::test]
async fn read_state_matches_the_model_on_the_memory_store() {
    for seed in seeds(50) {
        eprintln!("read-state seed {seed} (replay with READ_STATE_SEED={seed})");
        run_seed(
            Arc::new(MemoryStore::new()),
            seed,
            env("READ_STATE_STEPS", 100),
        )
        .await;
    }
}

#[tokio::test]
async fn read_state_matches_the_model_on_the_embedded_store() {
    for seed in seeds(6) {
        eprintln!("read-state seed {seed} (replay with READ_STATE_SEED={seed})");
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), false);
        run_seed(store, 1_000 + seed, env("READ_STATE_STEPS", 100)).await;
    }
}
