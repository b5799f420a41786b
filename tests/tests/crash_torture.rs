//! Nothing lost, nothing doubled: sustained sends into direct and group
//! conversations while the server is killed with SIGKILL again and again.
//! An independent checker then verifies every acknowledged message against
//! every member's inbox, and a device that synced in a tight loop throughout.

use client::{Client, pb};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tests::{Server, connect_retrying};

const USERS: u64 = 6;
const KILLS: usize = 20;
const SENDERS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_torture_on_the_embedded_store() -> anyhow::Result<()> {
    acknowledged_sends_survive_repeated_kill9_exactly_once(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_torture_on_the_scylla_store() -> anyhow::Result<()> {
    let keyspace = tests::CqlKeyspace::new("torture");
    acknowledged_sends_survive_repeated_kill9_exactly_once(&["--store", &keyspace.url]).await
}

async fn acknowledged_sends_survive_repeated_kill9_exactly_once(
    store_args: &[&str],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A small step makes every restart jump seqs, as in production, and
    // makes max_seq writes frequent.
    // The 6-member group is a large group: read fanout.
    let mut args = vec!["--seq-step", "64", "--large-group-threshold", "5"];
    args.extend_from_slice(store_args);
    let mut server = Server::start_with(dir.path(), &args)?;
    let url = server.url();
    let tokens: HashMap<u64, String> = (1..=USERS)
        .map(|u| Ok((u, server.device_token(u, "torture")?)))
        .collect::<anyhow::Result<_>>()?;
    let setup = Client::connect(&url, &tokens[&1]).await?;
    let mut conversations = Vec::new();
    for members in [
        vec![1, 2],
        vec![1, 3],
        vec![2, 3],
        vec![1, 2, 3, 4, 5, 6],
        vec![1, 4, 5],
        vec![3, 4, 5, 6],
    ] {
        let kind = if members.len() == 2 {
            pb::ConversationKind::Direct
        } else {
            pb::ConversationKind::Group
        };
        let creator = members[0];
        let client = Client::connect(&url, &tokens[&creator]).await?;
        let mut created = client
            .create_conversation(kind, members.clone(), "")
            .await?;
        if created.read_fanout {
            // A large group's record lists nobody (its members are in the
            // member table, read by pages); the checks below need them.
            assert_eq!(created.member_count, members.len() as u64);
            created.members = members;
        }
        conversations.push(created);
    }
    drop(setup);

    let stop = Arc::new(AtomicBool::new(false));
    // Set once every sender has finished, so the device's last read comes
    // after the last acknowledged send.
    let senders_done = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    // Senders: every message keeps its client_msg_id across retries until
    // acknowledged, exactly as a real client does.
    let mut senders = tokio::task::JoinSet::new();
    for sender in 1..=SENDERS {
        let (url, token, stop, retries) = (
            url.clone(),
            tokens[&sender].clone(),
            stop.clone(),
            retries.clone(),
        );
        let mine = tests::conversations_of(&conversations, sender);
        senders.spawn(async move {
            let client = connect_retrying(&url, &token).await;
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                let conversation_id = mine[i % mine.len()];
                let client_msg_id = uuid::Uuid::new_v4();
                let text = format!("{sender}:{i}");
                loop {
                    match client
                        .send(conversation_id, &text, Some(client_msg_id))
                        .await
                    {
                        Ok(reply) => {
                            acked.push((sender, client_msg_id, reply));
                            break;
                        }
                        Err(_) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                i += 1;
            }
            acked
        });
    }
    // A device of user 1 syncing in a tight loop through every crash.
    let watcher = {
        let (url, token, stop) = (
            url.clone(),
            server.device_token(1, "tight")?,
            senders_done.clone(),
        );
        tokio::spawn(async move {
            let client = connect_retrying(&url, &token).await;
            let (mut checkpoint, mut seen) = (0u64, Vec::new());
            loop {
                let finishing = stop.load(Ordering::Acquire);
                match client.sync_page(Some(checkpoint), 5).await {
                    Ok(page) => {
                        for entry in &page.entries {
                            assert!(
                                entry.seq > checkpoint,
                                "seq {} not above checkpoint {checkpoint}",
                                entry.seq
                            );
                            checkpoint = entry.seq;
                        }
                        seen.extend(page.entries);
                        if finishing && !page.has_more {
                            return seen;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
    };

    // The killer.
    let mut restart_times = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(100 + rng % 300)).await;
        let restarted = std::time::Instant::now();
        server = tokio::task::spawn_blocking(move || {
            server.restart_after_kill9().expect("restart");
            server
        })
        .await?;
        restart_times.push(restarted.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    while let Some(result) = senders.join_next().await {
        acked.extend(result?);
    }
    senders_done.store(true, Ordering::Release);
    let seen = watcher.await?;

    // The checker: independent reads through the client library.
    let mut inboxes = HashMap::new();
    for user in 1..=USERS {
        let client = Client::connect(&url, &tokens[&user]).await?;
        inboxes.insert(user, tests::read_whole_inbox(&client).await?);
    }
    let members: HashMap<u64, Vec<u64>> = conversations
        .iter()
        .map(|c| (c.conversation_id, c.members.clone()))
        .collect();
    for (user, inbox) in &inboxes {
        assert!(
            inbox.windows(2).all(|w| w[0].seq < w[1].seq),
            "user {user}: seqs not strictly increasing"
        );
        let messages: Vec<&pb::Entry> = inbox
            .iter()
            .filter(|e| e.kind == pb::EntryKind::Message as i32)
            .collect();
        let ids: HashSet<u64> = messages.iter().map(|e| e.msg_id).collect();
        assert_eq!(
            ids.len(),
            messages.len(),
            "user {user}: a message appears twice"
        );
        let cmids: HashSet<(u64, &str)> = messages
            .iter()
            .map(|e| (e.sender_id, e.client_msg_id.as_str()))
            .collect();
        assert_eq!(
            cmids.len(),
            messages.len(),
            "user {user}: a retried send appears twice"
        );
        // Each conversation's entries appear in conv_seq order in the inbox.
        let mut last_conv_seq: HashMap<u64, u64> = HashMap::new();
        for entry in inbox {
            let last = last_conv_seq.entry(entry.conversation_id).or_default();
            assert!(
                entry.conv_seq > *last,
                "user {user}: conv_seq order differs from seq order"
            );
            *last = entry.conv_seq;
        }
    }
    let mut copies_of: HashMap<(u64, u64), usize> = HashMap::new();
    for (user, inbox) in &inboxes {
        for entry in inbox {
            *copies_of.entry((*user, entry.msg_id)).or_default() += 1;
        }
    }
    // Large-group messages live once in their conversation timeline and in
    // no inbox; read them back as a member does.
    let large: Vec<&pb::Conversation> = conversations.iter().filter(|c| c.read_fanout).collect();
    assert_eq!(large.len(), 1, "the torture includes one large group");
    let mut timeline_copies: HashMap<u64, usize> = HashMap::new();
    let reader = Client::connect(&url, &tokens[&large[0].members[0]]).await?;
    let mut after = 0;
    loop {
        let page = reader
            .history(large[0].conversation_id, 0, Some(after), 500)
            .await?;
        for entry in &page.entries {
            assert!(entry.conv_seq > after, "history out of conv_seq order");
            after = entry.conv_seq;
            *timeline_copies.entry(entry.msg_id).or_default() += 1;
        }
        if !page.has_more {
            break;
        }
    }
    let mut large_group_sends = 0;
    for (sender, client_msg_id, reply) in &acked {
        if reply.conversation_id == large[0].conversation_id {
            large_group_sends += 1;
            let copies = timeline_copies.get(&reply.msg_id).copied().unwrap_or(0);
            assert_eq!(
                copies, 1,
                "large-group message {client_msg_id} from {sender}: {copies} copies"
            );
            // Only its sender has an inbox copy (the sender's read marker
            // moves with it).
            for member in large[0].members.iter().filter(|&m| m != sender) {
                assert!(
                    !copies_of.contains_key(&(*member, reply.msg_id)),
                    "a large-group message was fanned out"
                );
            }
            assert_eq!(
                copies_of.get(&(*sender, reply.msg_id)),
                Some(&1),
                "the sender's own copy of {client_msg_id}"
            );
            continue;
        }
        for member in &members[&reply.conversation_id] {
            let copies = copies_of
                .get(&(*member, reply.msg_id))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                copies, 1,
                "message {client_msg_id} from {sender} has {copies} copies in user {member}'s inbox"
            );
        }
    }
    let expected_for_1: Vec<u64> = inboxes[&1].iter().map(|e| e.seq).collect();
    let seen_seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    if seen_seqs != expected_for_1 {
        let seen_set: HashSet<u64> = seen_seqs.iter().copied().collect();
        let missed: Vec<u64> = expected_for_1
            .iter()
            .copied()
            .filter(|s| !seen_set.contains(s))
            .take(20)
            .collect();
        panic!(
            "the tight-loop device saw {} entries, the inbox holds {}; first missed seqs: {missed:?}",
            seen_seqs.len(),
            expected_for_1.len()
        );
    }
    let total: usize = inboxes.values().map(Vec::len).sum();
    let duplicates = acked.iter().filter(|(_, _, reply)| reply.duplicate).count();
    eprintln!(
        "torture {store_args:?}: {KILLS} kill -9s (restart p50 {:?}, max {:?}), {} acknowledged sends ({} to the large group, \
         {duplicates} answered from a receipt after a retry, {} retried after the client gave up), {total} inbox entries checked, {} seen by the tight-loop device",
        {
            restart_times.sort();
            restart_times[restart_times.len() / 2]
        },
        restart_times.last().unwrap(),
        acked.len(),
        large_group_sends,
        retries.load(Ordering::Relaxed),
        seen.len()
    );
    assert!(
        acked.len() > 100,
        "too little traffic to mean anything: {}",
        acked.len()
    );
    Ok(())
}
