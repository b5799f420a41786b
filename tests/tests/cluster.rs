//! Several syncd nodes over one keyspace (docs/ARCHITECTURE.md, "Several
//! nodes"): senders and devices use any node and switch nodes at random
//! while the writer node is killed (-9), frozen past its lease (SIGSTOP,
//! then SIGCONT), another node is restarted on another port and, with a
//! seqsvc cluster, the AllocSvr serving the users' section is killed. An
//! independent checker then reads every inbox: every acknowledged message
//! is there exactly once for every member, and every device saw its inbox
//! exactly, in order (no skip, no duplicate). A third run makes the
//! everyone-group a large group (read fanout: devices read it from its
//! timeline) and keeps only the newest inbox entries (retention trims the
//! rest while the faults happen): what is kept is exactly what devices saw,
//! and they saw every acknowledged message once. Needs the CQL server
//! (fails, never skips, without one). `CLUSTER_SEED=N` replays the node
//! choices.

use anyhow::{Context, bail, ensure};
use client::{Client, pb};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{CqlKeyspace, SeededRng, Server};

#[path = "cluster/harness.rs"]
mod harness;
use harness::*;

const NODES: usize = 3;
const USERS: u64 = 6;
const LEASE_MS: u64 = 1_500;
const RENEW_MS: u64 = 300;
/// A call through a node that is frozen, or passes it on to a frozen
/// writer, waits for nothing: devices and senders give up and switch.
const CALL_DEADLINE: Duration = Duration::from_secs(3);
/// A send must be acknowledged within this, whatever the faults.
const SEND_DEADLINE: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_serves_any_call_through_kills_freezes_and_restarts() -> anyhow::Result<()> {
    run(None, Variant::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_and_a_large_group_keep_their_guarantees_through_the_faults() -> anyhow::Result<()>
{
    let variant = Variant {
        large_group_threshold: Some(USERS - 2),
        retention_entries: Some(RETAINED),
    };
    run(None, variant).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_on_seqsvc_survives_the_loss_of_its_allocsvr_too() -> anyhow::Result<()> {
    let mut seqs = tests::seq_cluster::Cluster::start(1, 2)?;
    seqs.wait_balanced().await?;
    run(Some(&mut seqs), Variant::default()).await
}

/// Inbox entries kept in the retention run: a few seconds of a user's
/// share of the load, so trims happen all through the faults, while a
/// device keeping up never falls below them.
const RETAINED: u64 = 150;

async fn run(
    mut seqs: Option<&mut tests::seq_cluster::Cluster>,
    variant: Variant,
) -> anyhow::Result<()> {
    let seed = std::env::var("CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    eprintln!("CLUSTER_SEED={seed}");
    let rng = Arc::new(Mutex::new(SeededRng(seed)));
    let keyspace = CqlKeyspace::new("cluster");
    let arbiters = seqs.as_ref().map_or(Vec::new(), |s| s.arbiter_addrs());
    let mut cluster = Cluster::start(&keyspace, arbiters, variant)?;
    let live = cluster.live.clone();
    let writer = cluster.writer().await?;
    eprintln!("writer: node {writer}");

    // Conversations: everyone, and pairs around the ring.
    let admin_token = cluster.nodes[0].service_token("setup")?;
    let mut memberships: Vec<Vec<u64>> = vec![(1..=USERS).collect()];
    memberships.extend((1..=USERS).map(|u| vec![u, u % USERS + 1]));
    let mut conversations: Vec<(u64, Vec<u64>)> = Vec::new();
    for members in &memberships {
        let started = Instant::now();
        let client_id = uuid::Uuid::new_v4();
        let conversation = loop {
            let url = live.pick(&rng);
            let attempt = async {
                let client = with_deadline(Client::connect(&url, &admin_token)).await?;
                let kind = if members.len() == 2 {
                    pb::ConversationKind::Direct
                } else {
                    pb::ConversationKind::Group
                };
                with_deadline(client.create_conversation_with_id(
                    kind,
                    members.clone(),
                    "",
                    Some(client_id),
                ))
                .await
            };
            match attempt.await {
                Ok(conversation) => break conversation.conversation_id,
                Err(error) => {
                    ensure!(started.elapsed() < SEND_DEADLINE, "create: {error:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        conversations.push((conversation, members.clone()));
    }

    let sending = Arc::new(AtomicBool::new(true));
    // Set once every sender has finished its last send (and recorded it).
    let senders_done = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for user in 1..=USERS {
        let token = cluster.token(user, "sender")?;
        let mine: Vec<u64> = conversations
            .iter()
            .filter(|(_, members)| members.contains(&user))
            .map(|(id, _)| *id)
            .collect();
        let (live, rng, sending, acked) = (
            live.clone(),
            Arc::clone(&rng),
            Arc::clone(&sending),
            Arc::clone(&acked),
        );
        senders.spawn(async move {
            let mut n = 0u64;
            while sending.load(Ordering::Acquire) {
                let conversation = mine[(n as usize) % mine.len()];
                let text = format!("u{user} #{n}");
                let reply = send_acknowledged(&live, &rng, &token, conversation, &text).await?;
                acked.lock().unwrap().push((conversation, reply.msg_id));
                n += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            anyhow::Ok(n)
        });
    }
    let mut devices = tokio::task::JoinSet::new();
    for user in 1..=USERS {
        let token = cluster.token(user, "phone")?;
        let (live, rng, done, acked) = (
            live.clone(),
            Arc::clone(&rng),
            Arc::clone(&senders_done),
            Arc::clone(&acked),
        );
        let mine: HashSet<u64> = conversations
            .iter()
            .filter(|(_, members)| members.contains(&user))
            .map(|(id, _)| *id)
            .collect();
        devices.spawn(async move {
            let mut seen: Vec<pb::Entry> = Vec::new();
            // Large groups: where reading started, what was read.
            let mut groups: BTreeMap<u64, (u64, Vec<pb::Entry>)> = BTreeMap::new();
            let mut checkpoint = 0u64;
            let mut finishing_since = None;
            loop {
                // Once the senders are done, the device reads on until it
                // holds every acknowledged message of its conversations (an
                // event still finishing is not readable yet: that is the
                // horizon at work, not a loss).
                let finishing = done.load(Ordering::Acquire) && {
                    let have: HashSet<u64> = seen
                        .iter()
                        .chain(groups.values().flat_map(|(_, read)| read))
                        .map(|e| e.msg_id)
                        .collect();
                    let acked = acked.lock().unwrap();
                    let missing = acked
                        .iter()
                        .filter(|(c, m)| mine.contains(c) && !have.contains(m))
                        .count();
                    let since = *finishing_since.get_or_insert_with(Instant::now);
                    ensure!(
                        since.elapsed() < SEND_DEADLINE,
                        "user {user}: {missing} acknowledged messages never readable"
                    );
                    missing == 0
                };
                let url = live.pick(&rng);
                let Ok(client) = with_deadline(Client::connect(&url, &token)).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // Half the reads are CatchUp streams, passed on by
                // followers like any call.
                let streamed = rng.lock().unwrap().next(2) == 0;
                let Ok(pages) = with_deadline(read_inbox(&client, checkpoint, streamed)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                for page in &pages {
                    ensure!(
                        !page.checkpoint_expired,
                        "user {user}: checkpoint {checkpoint} expired (oldest kept {}, from {url}): \
                         a device keeping up fell below retention",
                        page.oldest_seq
                    );
                    for entry in &page.entries {
                        ensure!(
                            entry.seq > checkpoint,
                            "user {user}: seq {} at checkpoint {checkpoint} (from {url}, {})",
                            entry.seq,
                            if streamed { "CatchUp" } else { "Sync" }
                        );
                        checkpoint = entry.seq;
                    }
                    seen.extend(page.entries.iter().cloned());
                }
                let Some(page) = pages.last() else {
                    bail!("user {user}: a CatchUp from {url} ended without a reply");
                };
                // Large groups, from the timeline: each entry once, in
                // conv_seq order, from where the membership began.
                let mut groups_read = true;
                for top in &page.large_groups {
                    let (start, read) = groups
                        .entry(top.conversation_id)
                        .or_insert_with(|| (top.joined_conv_seq, Vec::new()));
                    let mut at = read.last().map_or(*start, |e| e.conv_seq);
                    while at < top.conv_seq {
                        let history = client.history(top.conversation_id, 0, Some(at), 40);
                        let Ok(history) = with_deadline(history).await else {
                            groups_read = false;
                            break;
                        };
                        for entry in &history.entries {
                            ensure!(
                                entry.conv_seq > at,
                                "user {user}: conv_seq {} of group {} after {at} (from {url})",
                                entry.conv_seq,
                                top.conversation_id
                            );
                            at = entry.conv_seq;
                        }
                        let more = history.has_more && !history.entries.is_empty();
                        read.extend(history.entries);
                        if !more {
                            break;
                        }
                    }
                }
                if finishing && !page.has_more && groups_read {
                    return anyhow::Ok((
                        user,
                        DeviceRead {
                            inbox: seen,
                            groups,
                        },
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    let probe_token = cluster.token(1, "probe")?;
    let probe_conversation = conversations[0].0;
    let mut windows = BTreeMap::new();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. kill -9 of the writer.
    let writer = cluster.writer().await?;
    eprintln!("fault 1: kill -9 of the writer, node {writer}");
    cluster.nodes[writer].kill9();
    cluster.refresh_live(Some(writer));
    let window = unavailable_for(&live, &rng, &probe_token, probe_conversation, &acked).await?;
    windows.insert("1 writer kill -9", window);
    let new_writer = cluster.writer().await?;
    ensure!(new_writer != writer, "a killed node still holds the lease");
    cluster.restart_elsewhere(writer)?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. SIGSTOP of the writer past its lease, then SIGCONT.
    let writer = cluster.writer().await?;
    eprintln!("fault 2: SIGSTOP of the writer, node {writer}");
    let pid = cluster.nodes[writer].pid();
    signal(pid, "-STOP")?;
    let frozen_at = Instant::now();
    cluster.refresh_live(Some(writer));
    let window = unavailable_for(&live, &rng, &probe_token, probe_conversation, &acked).await?;
    windows.insert("2 writer SIGSTOP", window);
    let lease = Duration::from_millis(LEASE_MS * 3);
    if let Some(rest) = lease.checked_sub(frozen_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    signal(pid, "-CONT")?;
    cluster.refresh_live(None);
    ensure!(
        cluster.writer().await? != writer,
        "the frozen node kept the lease"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. A follower restarted on another port.
    let writer = cluster.writer().await?;
    let follower = (writer + 1) % NODES;
    eprintln!("fault 3: restart of follower node {follower}");
    cluster.restart_elsewhere(follower)?;
    let window = unavailable_for(&live, &rng, &probe_token, probe_conversation, &acked).await?;
    windows.insert("3 follower restart", window);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. kill -9 of the AllocSvr owning the users' section (slot 0: users
    // 1..=6 are in section 0, and slot 0 also leases the node ids).
    if let Some(seqs) = seqs.as_mut() {
        let (_, victim, _) = seqs.kill_owner_of_slot(0).await?;
        eprintln!("fault 4: kill -9 of AllocSvr {victim}");
        let window = unavailable_for(&live, &rng, &probe_token, probe_conversation, &acked).await?;
        windows.insert("4 AllocSvr kill -9", window);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    if let Some(entries) = variant.retention_entries {
        // Retention is tested only if some inbox outgrew what it keeps: on
        // a slow machine the faults can be over before that. Counted from
        // the acknowledged sends each inbox got a row of (a large group's
        // reach no member's inbox but the sender's, not counted), with a
        // margin for the pass that trims them to run.
        let large_group = variant.large_group_threshold.map(|_| conversations[0].0);
        let fullest_inbox = || {
            let mut rows: HashMap<u64, u64> = HashMap::new();
            for (conversation, _) in acked.lock().unwrap().iter() {
                if Some(*conversation) == large_group {
                    continue;
                }
                let (_, members) = conversations
                    .iter()
                    .find(|(id, _)| id == conversation)
                    .expect("sends go to the test's conversations");
                for member in members {
                    *rows.entry(*member).or_default() += 1;
                }
            }
            rows.into_values().max().unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while fullest_inbox() <= entries + entries / 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A retention pass runs every second.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("faults done: {windows:?}; stopping the load");
    sending.store(false, Ordering::Release);
    let mut sent = 0;
    while let Some(result) = senders.join_next().await {
        sent += result??;
    }
    senders_done.store(true, Ordering::Release);
    let mut seen_by: HashMap<u64, DeviceRead> = HashMap::new();
    while let Some(result) = devices.join_next().await {
        let (user, seen) = result??;
        seen_by.insert(user, seen);
    }

    // The checker: every inbox as kept now and every large group's
    // timeline, read from one node.
    let acked = acked.lock().unwrap().clone();
    let url = cluster.live.pick(&rng);
    let mut trimmed_users = 0;
    let mut large_groups = HashSet::new();
    for user in 1..=USERS {
        let reader = Client::connect(&url, &cluster.token(user, "checker")?).await?;
        let device = &seen_by[&user];
        let inbox = read_kept_inbox(&reader).await?;
        let mut ids: HashMap<u64, &pb::Entry> = HashMap::new();
        // A large group's message in an inbox is its sender's copy (or a
        // mention's): the message itself is read from the group's timeline.
        let delivered = device
            .inbox
            .iter()
            .filter(|e| !(e.read_fanout && e.kind == pb::EntryKind::Message as i32))
            .chain(device.groups.values().flat_map(|(_, read)| read));
        for entry in delivered {
            if entry.kind == pb::EntryKind::Message as i32
                && let Some(first) = ids.insert(entry.msg_id, entry)
            {
                bail!(
                    "user {user}: the device got msg {} twice: seq {} conv_seq {} of {} {:?}, then \
                     seq {} conv_seq {} of {} {:?}",
                    entry.msg_id,
                    first.seq,
                    first.conv_seq,
                    first.conversation_id,
                    first.text,
                    entry.seq,
                    entry.conv_seq,
                    entry.conversation_id,
                    entry.text
                );
            }
        }
        for (conversation, msg_id) in &acked {
            let member = conversations
                .iter()
                .any(|(id, members)| id == conversation && members.contains(&user));
            if member {
                ensure!(
                    ids.contains_key(msg_id),
                    "user {user}: acknowledged msg {msg_id} of conversation {conversation} never \
                     reached the device"
                );
            }
        }
        // Within retention the inbox holds exactly what the device saw.
        let kept_from = inbox.first().map_or(u64::MAX, |e| e.seq);
        let seen: Vec<u64> = device
            .inbox
            .iter()
            .map(|e| e.seq)
            .filter(|&seq| seq >= kept_from)
            .collect();
        let stored: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
        if seen.len() < device.inbox.len() {
            ensure!(
                variant.retention_entries.is_some(),
                "user {user}: entries the device saw are gone without retention"
            );
            trimmed_users += 1;
        }
        if seen != stored {
            let seen: HashSet<u64> = seen.into_iter().collect();
            let unseen: Vec<String> = inbox
                .iter()
                .filter(|e| !seen.contains(&e.seq))
                .map(|e| {
                    format!(
                        "seq {} kind {} msg {} {:?}",
                        e.seq, e.kind, e.msg_id, e.text
                    )
                })
                .collect();
            bail!(
                "user {user}: the device saw {} entries from seq {kept_from}, the inbox holds {}; \
                 not seen: {unseen:?} (device checkpoint {:?})",
                seen.len(),
                stored.len(),
                device.inbox.last().map(|e| e.seq)
            );
        }
        // A large group's timeline after the membership began is exactly
        // what the device read of it.
        for (conversation, (start, read)) in &device.groups {
            large_groups.insert(*conversation);
            let timeline = read_timeline(&reader, *conversation, *start).await?;
            let stored: Vec<u64> = timeline.iter().map(|e| e.conv_seq).collect();
            let read: Vec<u64> = read.iter().map(|e| e.conv_seq).collect();
            ensure!(
                read == stored,
                "user {user}: read {} entries of large group {conversation}, its timeline holds {}",
                read.len(),
                stored.len()
            );
        }
    }
    if let Some(entries) = variant.retention_entries {
        ensure!(
            trimmed_users > 0,
            "no inbox was trimmed to {entries} entries: the run did not test retention"
        );
    }
    if variant.large_group_threshold.is_some() {
        ensure!(
            large_groups.contains(&conversations[0].0),
            "the everyone-group was not read as a large group"
        );
    }
    eprintln!("inboxes trimmed by retention: {trimmed_users} of {USERS}");

    // Push across nodes: a stream held on one node hears of a message sent
    // through another.
    let writer = cluster.writer().await?;
    let (on, via) = ((writer + 1) % NODES, (writer + 2) % NODES);
    let watcher = Client::connect(&cluster.nodes[on].url(), &cluster.token(2, "watch")?).await?;
    let sender = Client::connect(&cluster.nodes[via].url(), &cluster.token(1, "push")?).await?;
    let mut known = read_kept_inbox(&watcher).await?.last().map_or(0, |e| e.seq);
    let mut stream = watcher.subscribe(known, false).await?;
    // Users 1 and 2: inbox copies (a large group's notices are group
    // notices, not inbox seqs).
    let pair_conversation = conversations[1].0;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        sender
            .send(pair_conversation, &format!("push {i}"), None)
            .await?;
        loop {
            let notice = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .context("no notice in 5 s")??
                .context("stream ended")?;
            if notice.up_to_seq > known {
                known = notice.up_to_seq;
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "sent {sent} messages ({} acknowledged) over {NODES} nodes; unavailable: {windows:?}; \
         notice through another node (send to notice): p50 {:?}, max {:?}",
        acked.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    Ok(())
}
