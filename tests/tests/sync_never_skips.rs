//! Never skip (docs/ARCHITECTURE.md, "Sync: never skip"): a device that
//! syncs from checkpoint N and advances its checkpoint never skips an entry,
//! even while many sends fan out to the same user concurrently and complete
//! out of order.

use client::{Client, pb};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tests::Server;

const USERS: u64 = 8;
const SENDERS_PER_USER: usize = 3;
const SENDS_PER_SENDER: usize = 40;

/// Applies a page as a device does: each seq above the checkpoint, which
/// moves to it, and the reply's checkpoint where the entries end.
fn take_page(
    page: pb::SyncReply,
    checkpoint: &mut u64,
    seen: &mut Vec<pb::Entry>,
) -> anyhow::Result<()> {
    for entry in &page.entries {
        anyhow::ensure!(
            entry.seq > *checkpoint,
            "seq {} at checkpoint {checkpoint}",
            entry.seq
        );
        *checkpoint = entry.seq;
    }
    anyhow::ensure!(page.checkpoint == *checkpoint, "reply checkpoint disagrees");
    seen.extend(page.entries);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tight_loop_sync_sees_every_entry_exactly_once_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A small step makes max_seq raises (and so uneven allocation latency)
    // frequent during the run.
    let server = Server::start_with(dir.path(), &["--seq-step", "16", "--seq-section-size", "4"])?;
    let url = server.url();
    let mut clients = HashMap::new();
    for user in 1..=USERS {
        let token = server.device_token(user, "sender")?;
        clients.insert(user, Client::connect(&url, &token).await?);
    }
    // Overlapping conversations, all including user 1.
    let memberships: Vec<Vec<u64>> = vec![
        (1..=USERS).collect(),
        vec![1, 2, 3],
        vec![1, 4, 5, 6],
        vec![1, 2],
        vec![1, 7],
        vec![1, 3, 5, 7],
    ];
    let mut conversations = Vec::new();
    for members in &memberships {
        let conversation = clients[&1]
            .create_conversation(pb::ConversationKind::Group, members.clone(), "")
            .await?;
        conversations.push(conversation);
    }

    let watcher = Client::connect(&url, &server.device_token(1, "tight-loop")?).await?;
    let sending = Arc::new(AtomicBool::new(true));
    let syncer = {
        let sending = Arc::clone(&sending);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut checkpoint = 0;
            let mut rounds = 0u64;
            loop {
                let still_sending = sending.load(Ordering::Acquire);
                // Small pages make the device advance in many steps.
                let page = watcher.sync_page(Some(checkpoint), 7).await?;
                let more = page.has_more;
                take_page(page, &mut checkpoint, &mut seen)?;
                rounds += 1;
                if !still_sending && !more {
                    return anyhow::Ok((seen, rounds));
                }
            }
        })
    };

    // Another device of the same user catches up with streams of pages
    // (CatchUp), each read ahead of the device, while the sends land.
    let streamer = Client::connect(&url, &server.device_token(1, "streamed")?).await?;
    let catcher = {
        let sending = Arc::clone(&sending);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut checkpoint = 0;
            loop {
                let still_sending = sending.load(Ordering::Acquire);
                let mut replies = streamer.catch_up(Some(checkpoint), 5).await?;
                let mut complete = false;
                while let Some(page) = replies.message().await? {
                    anyhow::ensure!(!complete, "a reply after the complete one");
                    complete = !page.has_more;
                    take_page(page, &mut checkpoint, &mut seen)?;
                }
                anyhow::ensure!(complete, "the stream ended before a complete reply");
                if !still_sending {
                    return anyhow::Ok(seen);
                }
            }
        })
    };

    let mut sends = tokio::task::JoinSet::new();
    for user in 1..=USERS {
        for sender in 0..SENDERS_PER_USER {
            let client = clients[&user].clone();
            let mine = tests::conversations_of(&conversations, user);
            sends.spawn(async move {
                let mut receipts = Vec::new();
                for i in 0..SENDS_PER_SENDER {
                    let conversation_id = mine[(i + sender) % mine.len()];
                    let reply = client
                        .send(conversation_id, &format!("u{user} s{sender} #{i}"), None)
                        .await?;
                    receipts.push(reply);
                }
                anyhow::Ok(receipts)
            });
        }
    }
    let mut receipts = Vec::new();
    while let Some(result) = sends.join_next().await {
        receipts.extend(result??);
    }
    sending.store(false, Ordering::Release);
    let (seen, rounds) = syncer.await??;
    let streamed = catcher.await??;

    // The tight loop saw exactly what a fresh full read sees, in seq order.
    let fresh = Client::connect(&url, &server.device_token(1, "fresh")?).await?;
    let full = tests::read_whole_inbox(&fresh).await?;
    let seqs = |entries: &[pb::Entry]| entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&seen),
        seqs(&full),
        "tight-loop device skipped or repeated entries"
    );
    assert_eq!(
        seqs(&streamed),
        seqs(&full),
        "the device catching up by streams skipped or repeated entries"
    );
    assert!(seqs(&full).windows(2).all(|w| w[0] < w[1]));

    // Every message to a conversation of user 1 is in their inbox exactly once.
    let messages: Vec<u64> = full
        .iter()
        .filter(|e| e.kind == pb::EntryKind::Message as i32)
        .map(|e| e.msg_id)
        .collect();
    let unique: HashSet<u64> = messages.iter().copied().collect();
    assert_eq!(unique.len(), messages.len(), "a message appears twice");
    let expected: HashSet<u64> = receipts.iter().map(|r| r.msg_id).collect();
    assert_eq!(
        unique, expected,
        "user 1 is in every conversation and must have every message"
    );
    assert_eq!(
        receipts.len(),
        USERS as usize * SENDERS_PER_USER * SENDS_PER_SENDER
    );

    // And every other member got exactly the messages of their conversations.
    let by_conversation: HashMap<u64, Vec<u64>> = conversations
        .iter()
        .map(|c| (c.conversation_id, c.members.clone()))
        .collect();
    for user in 2..=USERS {
        let inbox = tests::read_whole_inbox(
            &Client::connect(&url, &server.device_token(user, "check")?).await?,
        )
        .await?;
        let got: Vec<u64> = inbox
            .iter()
            .filter(|e| e.kind == pb::EntryKind::Message as i32)
            .map(|e| e.msg_id)
            .collect();
        let want: HashSet<u64> = receipts
            .iter()
            .filter(|r| by_conversation[&r.conversation_id].contains(&user))
            .map(|r| r.msg_id)
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "user {user} has duplicates or misses"
        );
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), want, "user {user}");
    }
    eprintln!(
        "{} sends, {} inbox entries for user 1, {rounds} sync rounds",
        receipts.len(),
        full.len()
    );
    Ok(())
}
