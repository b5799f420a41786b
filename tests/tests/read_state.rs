//! Read state across kill -9: random sends (with mentions) and marks from
//! two devices into a direct conversation, a group and a large group,
//! with the server killed in the middle of calls (between commit and
//! reply, or before the commit). Every call is retried after the restart as
//! a client would (sends with their client message id, marks as they
//! were); after every step the server's counts equal the model's and no
//! read marker goes down. Then the CLI contract (`tl read`, `tl
//! conversations`, `tl receipts`, `tl send --mention`).
//!
//! `READ_STATE_KILL_SEED=N` replays one seed.

use client::{Client, pb};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tests::{SeededRng, Server, connect_retrying, json_lines, tl};

const USERS: u64 = 4;

/// A message as the model keeps it: conv_seq, sender, named mentions,
/// everyone.
type Message = (u64, u64, Vec<u64>, bool);

#[derive(Default)]
struct Model {
    /// Per conversation: members, and every message (conv_seq, sender,
    /// named mentions, everyone).
    conversations: BTreeMap<u64, (BTreeSet<u64>, Vec<Message>)>,
    /// Per (user, conversation): the read marker.
    read_through: BTreeMap<(u64, u64), u64>,
}

impl Model {
    fn counts(&self, user: u64, conversation: u64) -> (u64, u64) {
        let (members, messages) = &self.conversations[&conversation];
        if !members.contains(&user) {
            return (0, 0);
        }
        let from = self.read_through[&(user, conversation)];
        let unread: Vec<_> = messages
            .iter()
            .filter(|(seq, sender, _, _)| *seq > from && *sender != user)
            .collect();
        let mentions = unread
            .iter()
            .filter(|(_, _, named, all)| *all || named.contains(&user))
            .count();
        (unread.len() as u64, mentions as u64)
    }
}

enum Call {
    Send {
        conversation: u64,
        id: uuid::Uuid,
        mentions: Vec<u64>,
        all: bool,
    },
    Mark {
        conversation: u64,
        through: Option<u64>,
    },
}

/// One call, retried until it is answered (the server may be down).
async fn complete(url: &str, token: &str, call: &Call) -> (u64, u64) {
    loop {
        let client = connect_retrying(url, token).await;
        let outcome = match call {
            Call::Send {
                conversation,
                id,
                mentions,
                all,
            } => client
                .send_mentioning(*conversation, "m", Some(*id), mentions, *all)
                .await
                .map(|r| (r.conv_seq, 0)),
            Call::Mark {
                conversation,
                through,
            } => client
                .mark_read(*conversation, *through)
                .await
                .map(|r| (r.read_through, r.seq)),
        };
        match outcome {
            Ok(outcome) => return outcome,
            Err(error) => {
                let text = error.to_string();
                assert!(
                    text.contains("unavailable")
                        || text.contains("transport")
                        || text.contains("connect"),
                    "only the server's absence may fail a call: {text}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn all_conversations(client: &Client) -> (u64, u64, Vec<pb::ConversationState>) {
    let mut states = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client.list_conversations(2, &cursor, "").await.unwrap();
        states.extend(page.conversations);
        if page.cursor.is_empty() {
            return (page.total_unread, page.total_mentions, states);
        }
        cursor = page.cursor;
    }
}

/// `steps` random calls, one in `kill_one_in` with a kill -9 during it.
async fn counts_match_the_model_across_kill9(
    store_args: &[&str],
    steps: usize,
    kill_one_in: u64,
) -> anyhow::Result<()> {
    let seed = std::env::var("READ_STATE_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 7919 + 13);
    eprintln!("read-state kill -9 seed {seed} (replay with READ_STATE_KILL_SEED={seed})");
    let mut rng = SeededRng(seed);
    let dir = tempfile::tempdir()?;
    let mut args = vec!["--seq-step", "64", "--large-group-threshold", "3"];
    args.extend_from_slice(store_args);
    let mut server = Server::start_with(dir.path(), &args)?;
    let url = server.url();
    let tokens: HashMap<(u64, &str), String> = (1..=USERS)
        .flat_map(|u| [(u, "phone"), (u, "laptop")])
        .map(|(u, d)| Ok(((u, d), server.device_token(u, d)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut model = Model::default();
    for members in [vec![1, 2], vec![1, 2, 3], vec![1, 2, 3, 4]] {
        let kind = match members.len() {
            2 => pb::ConversationKind::Direct,
            _ => pb::ConversationKind::Group,
        };
        let creator = connect_retrying(&url, &tokens[&(members[0], "phone")]).await;
        let created = creator
            .create_conversation(kind, members.clone(), "")
            .await?;
        let id = created.conversation_id;
        let history = creator.history(id, 0, Some(0), 1).await?;
        let at = history.entries[0].conv_seq;
        for &m in &members {
            model.read_through.insert((m, id), at);
        }
        model
            .conversations
            .insert(id, (members.into_iter().collect(), Vec::new()));
    }
    let ids: Vec<u64> = model.conversations.keys().copied().collect();
    let mut shown: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut kills = 0;
    for step in 0..steps {
        let conversation = ids[rng.next(ids.len() as u64) as usize];
        let members: Vec<u64> = model.conversations[&conversation]
            .0
            .iter()
            .copied()
            .collect();
        let user = members[rng.next(members.len() as u64) as usize];
        let device = if rng.next(2) == 0 { "phone" } else { "laptop" };
        let top = model.conversations[&conversation]
            .1
            .last()
            .map_or(0, |m| m.0)
            .max(model.read_through[&(user, conversation)]);
        let call = if rng.next(3) < 2 {
            let mentions: Vec<u64> = members
                .iter()
                .copied()
                .filter(|_| rng.next(3) == 0)
                .collect();
            Call::Send {
                conversation,
                id: uuid::Uuid::new_v4(),
                mentions,
                all: members.len() > 2 && rng.next(5) == 0,
            }
        } else {
            Call::Mark {
                conversation,
                through: (rng.next(2) == 0 && top > 0).then(|| 1 + rng.next(top)),
            }
        };
        let token = tokens[&(user, device)].clone();
        let outcome = if rng.next(kill_one_in) == 0 {
            // Kill the server while the call is in flight.
            kills += 1;
            let (url2, token2) = (url.clone(), token.clone());
            let call_ref = &call;
            let in_flight = async move { complete(&url2, &token2, call_ref).await };
            let delay = Duration::from_micros(rng.next(4_000));
            let kill = async {
                tokio::time::sleep(delay).await;
                server.restart_after_kill9().expect("restart");
            };
            let (outcome, ()) = tokio::join!(in_flight, kill);
            outcome
        } else {
            complete(&url, &token, &call).await
        };
        let what = match &call {
            Call::Send { mentions, all, .. } => {
                let (conv_seq, _) = outcome;
                let mut named = mentions.clone();
                named.retain(|&m| m != user);
                model
                    .conversations
                    .get_mut(&conversation)
                    .unwrap()
                    .1
                    .push((conv_seq, user, named, *all));
                let marker = model.read_through.get_mut(&(user, conversation)).unwrap();
                *marker = (*marker).max(conv_seq);
                format!("send into {conversation} by {user} at {conv_seq}")
            }
            Call::Mark { through, .. } => {
                let (read_through, _) = outcome;
                let marker = model.read_through.get_mut(&(user, conversation)).unwrap();
                let newest = model.conversations[&conversation]
                    .1
                    .last()
                    .map_or(0, |m| m.0);
                *marker = (*marker).max(through.unwrap_or(newest.max(*marker)));
                assert_eq!(
                    read_through, *marker,
                    "seed {seed} step {step}: mark answer"
                );
                format!("mark {conversation} by {user} through {through:?}")
            }
        };
        for reader in 1..=USERS {
            let client = connect_retrying(&url, &tokens[&(reader, "phone")]).await;
            let (total, total_mentions, states) = all_conversations(&client).await;
            let (mut want_total, mut want_mentions) = (0, 0);
            for state in &states {
                let id = state.conversation_id;
                let (unread, mentions) = model.counts(reader, id);
                assert_eq!(
                    (state.unread, state.mentions),
                    (unread, mentions),
                    "seed {seed} step {step} after {what}: user {reader} in {id}"
                );
                assert_eq!(state.read_through, model.read_through[&(reader, id)]);
                let before = shown.entry((reader, id)).or_default();
                assert!(state.read_through >= *before, "a marker went down");
                *before = state.read_through;
                want_total += unread;
                want_mentions += mentions;
            }
            assert_eq!((total, total_mentions), (want_total, want_mentions));
        }
    }
    eprintln!("{steps} steps, {kills} kills");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_state_survives_kill9_on_the_embedded_store() -> anyhow::Result<()> {
    counts_match_the_model_across_kill9(&[], 80, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_state_survives_kill9_on_the_scylla_store() -> anyhow::Result<()> {
    let keyspace = tests::CqlKeyspace::new("read_state");
    // A restart on CQL opens a session and checks the schema (seconds):
    // fewer kills.
    counts_match_the_model_across_kill9(&["--store", &keyspace.url], 40, 10).await
}

#[test]
fn the_cli_marks_lists_and_counts_receipts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let url = server.url();
    let (alice, bob, carol) = (
        server.device_token(1, "cli")?,
        server.device_token(2, "cli")?,
        server.device_token(3, "cli")?,
    );
    let created = tl(
        &url,
        &alice,
        &[
            "conversation",
            "create",
            "--members",
            "2,3",
            "--title",
            "team",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let conversation = String::from_utf8(created.stdout)?.trim().to_owned();
    let sent = tl(
        &url,
        &alice,
        &[
            "send",
            "--conversation",
            &conversation,
            "--text",
            "hi @bob",
            "--mention",
            "2",
        ],
    );
    assert!(sent.status.success(), "{sent:?}");
    let conv_seq = json_lines(&sent)[0]["conv_seq"]
        .as_u64()
        .unwrap()
        .to_string();

    let list = json_lines(&tl(&url, &bob, &["conversations"]));
    assert_eq!(list[0]["conversation_id"].to_string(), conversation);
    assert_eq!(list[0]["title"], "team");
    assert_eq!(
        (list[0]["unread"].as_u64(), list[0]["mentions"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(list[0]["last_message"]["text"], "hi @bob");
    assert_eq!(list[1]["total_unread"], 1);
    assert_eq!(list[1]["total_mentions"], 1);
    assert_eq!(list[1]["cursor"], "");

    let read = json_lines(&tl(&url, &bob, &["read", "--conversation", &conversation]));
    assert_eq!(read[0]["read_through"].to_string(), conv_seq);
    assert_eq!(read[0]["unread"], 0);

    let receipts = json_lines(&tl(
        &url,
        &carol,
        &[
            "receipts",
            "--conversation",
            &conversation,
            "--conv-seq",
            &conv_seq,
        ],
    ));
    assert_eq!(
        receipts[0],
        serde_json::json!({"read_count": 1, "member_count": 2, "read_by": [2]})
    );
    // One member per page: the sender (alice, 1) is on the first page and
    // not counted; the last member's page says no more follow.
    let page = |after: &str| {
        json_lines(&tl(
            &url,
            &carol,
            &[
                "receipts",
                "--conversation",
                &conversation,
                "--conv-seq",
                &conv_seq,
                "--limit",
                "1",
                "--after-member",
                after,
            ],
        ))[0]
            .clone()
    };
    assert_eq!(
        page("0"),
        serde_json::json!({"read_count": 0, "member_count": 0, "read_by": [], "next_cursor": 1})
    );
    assert_eq!(
        page("1"),
        serde_json::json!({"read_count": 1, "member_count": 1, "read_by": [2], "next_cursor": 2})
    );
    assert_eq!(
        page("2"),
        serde_json::json!({"read_count": 0, "member_count": 1, "read_by": [], "next_cursor": 0})
    );

    let state = dir.path().join("bob.json");
    let synced = json_lines(&tl(
        &url,
        &bob,
        &["sync", "--state", state.to_str().unwrap()],
    ));
    let marker = synced
        .iter()
        .find(|e| e["kind"] == "read_marker")
        .expect("the marker is an inbox entry");
    assert_eq!(marker["read_through"].to_string(), conv_seq);

    let stranger = tl(
        &url,
        &bob,
        &[
            "send",
            "--conversation",
            &conversation,
            "--text",
            "x",
            "--mention",
            "9",
        ],
    );
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("not a member"));
    let beyond = tl(
        &url,
        &bob,
        &[
            "read",
            "--conversation",
            &conversation,
            "--through",
            "99999",
        ],
    );
    assert!(!beyond.status.success());
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("past the newest"));
    Ok(())
}
