//! Replies stay under the transport's limits whatever the entries weigh:
//! 300 messages of 64 KiB (the largest text) make Sync, History and the
//! client's full sync of a large group page by bytes, and every entry is
//! reachable. (A page bounded only by count was 20 MiB: past the reply
//! limit, so the same call failed on every retry, forever.)

use client::{CheckpointFile, Client, pb};
use tests::Server;

const MESSAGES: usize = 300;
const TEXT_BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_the_largest_messages_fit_the_reply_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A threshold of 2: the 3-member group below uses read fanout.
    let server = Server::start_with(dir.path(), &["--large-group-threshold", "2"])?;
    let url = server.url();
    let alice = Client::connect(&url, &server.device_token(1, "phone")?).await?;
    let bob = Client::connect(&url, &server.device_token(2, "phone")?).await?;
    let direct = alice
        .create_conversation(pb::ConversationKind::Direct, vec![2], "")
        .await?
        .conversation_id;
    let large = alice
        .create_conversation(pb::ConversationKind::Group, vec![2, 3], "")
        .await?;
    assert!(large.read_fanout);
    let text = "m".repeat(TEXT_BYTES);
    for _ in 0..MESSAGES {
        alice.send(direct, &text, None).await?;
        alice.send(large.conversation_id, &text, None).await?;
    }

    // Sync with the largest page size pages by bytes and reaches all.
    let (mut after, mut messages, mut pages) = (0, 0, 0);
    loop {
        let page = bob.sync_page(Some(after), 1_000).await?;
        pages += 1;
        messages += page.entries.iter().filter(|e| e.text == text).count();
        after = page.checkpoint;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(messages, MESSAGES);
    assert!(pages > 1, "one page of {MESSAGES} x 64 KiB cannot fit");

    // History, forwards and backwards, with the largest page size.
    for backwards in [false, true] {
        let (mut cursor, mut seen) = (0, 0);
        loop {
            let page = if backwards {
                bob.history(large.conversation_id, cursor, None, 500)
                    .await?
            } else {
                bob.history(large.conversation_id, 0, Some(cursor), 500)
                    .await?
            };
            seen += page.entries.iter().filter(|e| e.text == text).count();
            cursor = if backwards {
                page.entries.first().map_or(0, |e| e.conv_seq)
            } else {
                page.entries.last().map_or(cursor, |e| e.conv_seq)
            };
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, MESSAGES, "history backwards={backwards}");
    }

    // The client's full sync (what `tl sync` runs) of a large-group member.
    let state = dir.path().join("bob.json");
    let mut checkpoint = CheckpointFile::open(&state)?;
    let mut delivered = 0;
    bob.sync_all(&mut checkpoint, |e| {
        delivered += usize::from(e.text == text);
        Ok(())
    })
    .await?;
    assert_eq!(delivered, 2 * MESSAGES);
    Ok(())
}
