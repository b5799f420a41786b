//! The message lifecycle across kill -9, against a model: random sends,
//! edits (sometimes two racing from two devices), recalls, service
//! deletes, deletes for me and clears, from several devices into a direct
//! conversation, a group and a large group, with the server killed in the
//! middle of calls. Every call carries its client id and is retried after
//! a restart as a client would. Devices sync at random points (offline in
//! between) and apply what they get with the client's view rules
//! (`client::view`). At the end every device's view = its History = the
//! model, unread counts follow, and the stored timelines (read from the
//! store itself, not the API) hold no text of a withdrawn message.
//!
//! `LIFECYCLE_SEED=N` replays one seed.

use client::view::{ConversationView, DeviceView, ShownMessage};
use client::{Client, pb};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tests::{SeededRng, Server, connect_retrying, json_lines, tl};
use timeline_store::{ConversationRange, InboxRange};

#[path = "lifecycle/model.rs"]
mod model;
use model::*;

const USERS: u64 = 4;
const DEVICES: [&str; 2] = ["phone", "laptop"];

/// Where the test reads the stored timelines after the server stopped.
enum Stored<'a> {
    Embedded,
    Cql(&'a tests::CqlKeyspace),
}

async fn lifecycle_matches_the_model(
    stored: Stored<'_>,
    steps: usize,
    kill_one_in: u64,
) -> anyhow::Result<()> {
    let seed = std::env::var("LIFECYCLE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 6151 + 7);
    eprintln!("lifecycle seed {seed} (replay with LIFECYCLE_SEED={seed})");
    let mut rng = SeededRng(seed);
    let dir = tempfile::tempdir()?;
    let mut args = vec![
        "--seq-step",
        "64",
        "--large-group-threshold",
        "3",
        "--recall-window-secs",
        "3600",
    ];
    if let Stored::Cql(keyspace) = &stored {
        args.extend(["--store", keyspace.url.as_str()]);
    }
    let mut server = Server::start_with(dir.path(), &args)?;
    let url = server.url();
    let mut tokens: HashMap<(u64, &str), String> = HashMap::new();
    for user in 1..=USERS {
        for device in DEVICES {
            tokens.insert((user, device), server.device_token(user, device)?);
        }
    }
    let service = server.service_token("moderation")?;
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
        let at = creator.history(id, 0, Some(0), 1).await?.entries[0].conv_seq;
        for &m in &members {
            model.read_through.insert((m, id), at);
        }
        model
            .conversations
            .insert(id, (members, created.read_fanout, BTreeMap::new()));
    }
    let ids: Vec<u64> = model.conversations.keys().copied().collect();
    let large: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| model.conversations[id].1)
        .collect();
    assert_eq!(large.len(), 1, "the 4-member group is a large group");
    let mut devices: BTreeMap<(u64, &str), Device> = BTreeMap::new();
    let mut kills = 0;
    // Every call and its answer, printed when a check fails.
    let mut log: Vec<String> = Vec::new();
    for step in 0..steps {
        let conversation = ids[rng.next(ids.len() as u64) as usize];
        let (members, _, messages) = &model.conversations[&conversation];
        let members = members.clone();
        let user = members[rng.next(members.len() as u64) as usize];
        let device = DEVICES[rng.next(2) as usize];
        let live: Vec<(u64, Message)> = messages
            .iter()
            .filter(|(_, m)| !m.removed)
            .map(|(s, m)| (*s, m.clone()))
            .collect();
        let own: Vec<u64> = live
            .iter()
            .filter(|(_, m)| m.sender == user)
            .map(|(s, _)| *s)
            .collect();
        let any: Vec<u64> = messages.keys().copied().collect();
        let pick = |rng: &mut SeededRng, from: &[u64]| from[rng.next(from.len() as u64) as usize];
        let op = rng.next(10);
        let id = uuid::Uuid::new_v4();
        let (token, calls): (String, Vec<Call>) = match op {
            1 | 2 if !own.is_empty() => {
                let target = pick(&mut rng, &own);
                let mut calls = vec![Call::Edit(
                    conversation,
                    target,
                    format!("e{step}a secret"),
                    id,
                )];
                if rng.next(2) == 0 {
                    // Two devices of the sender edit at once.
                    calls.push(Call::Edit(
                        conversation,
                        target,
                        format!("e{step}b secret"),
                        uuid::Uuid::new_v4(),
                    ));
                }
                (tokens[&(user, device)].clone(), calls)
            }
            3 if !own.is_empty() => (
                tokens[&(user, device)].clone(),
                vec![Call::Recall(conversation, pick(&mut rng, &own), id)],
            ),
            4 if !live.is_empty() => (
                service.clone(),
                vec![Call::Delete(
                    conversation,
                    live[rng.next(live.len() as u64) as usize].0,
                    false,
                    id,
                )],
            ),
            5 if !any.is_empty() => (
                tokens[&(user, device)].clone(),
                vec![Call::Delete(conversation, pick(&mut rng, &any), true, id)],
            ),
            6 if !any.is_empty() && rng.next(3) == 0 => (
                tokens[&(user, device)].clone(),
                vec![Call::Clear(conversation, pick(&mut rng, &any), id)],
            ),
            7 => {
                // A device comes online and catches up.
                let client = connect_retrying(&url, &tokens[&(user, device)]).await;
                devices
                    .entry((user, device))
                    .or_default()
                    .catch_up(&client, &large)
                    .await?;
                continue;
            }
            _ => (
                tokens[&(user, device)].clone(),
                vec![Call::Send(conversation, format!("m{step} secret"), id)],
            ),
        };
        let in_flight = futures_join(&url, &token, &calls);
        let outcomes = if rng.next(kill_one_in) == 0 {
            kills += 1;
            let delay = Duration::from_micros(rng.next(4_000));
            let kill = async {
                tokio::time::sleep(delay).await;
                server.restart_after_kill9().expect("restart");
            };
            let (outcomes, ()) = tokio::join!(in_flight, kill);
            outcomes
        } else {
            in_flight.await
        };
        let messages = &mut model.conversations.get_mut(&conversation).unwrap().2;
        for (call, conv_seq) in calls.iter().zip(outcomes) {
            log.push(format!("step {step}: user {user} {call:?} -> {conv_seq}"));
            match call {
                Call::Send(_, text, _) => {
                    messages.insert(
                        conv_seq,
                        Message {
                            sender: user,
                            text: text.clone(),
                            ..Message::default()
                        },
                    );
                    model
                        .texts
                        .insert((conversation, conv_seq), vec![text.clone()]);
                    let marker = model.read_through.get_mut(&(user, conversation)).unwrap();
                    *marker = (*marker).max(conv_seq);
                }
                Call::Edit(_, target, text, _) => {
                    let message = messages.get_mut(target).unwrap();
                    model
                        .texts
                        .get_mut(&(conversation, *target))
                        .unwrap()
                        .push(text.clone());
                    if conv_seq > message.version {
                        message.version = conv_seq;
                        message.text = text.clone();
                    }
                }
                Call::Recall(_, target, _) | Call::Delete(_, target, false, _) => {
                    let message = messages.get_mut(target).unwrap();
                    message.removed = true;
                    message.text.clear();
                    model
                        .withdrawn_texts
                        .extend(model.texts[&(conversation, *target)].iter().cloned());
                }
                Call::Delete(_, target, true, _) => {
                    model
                        .hidden
                        .entry((user, conversation))
                        .or_default()
                        .insert(*target);
                }
                Call::Clear(_, through, _) => {
                    let cleared = model.cleared.entry((user, conversation)).or_default();
                    *cleared = (*cleared).max(*through);
                    let marker = model.read_through.get_mut(&(user, conversation)).unwrap();
                    *marker = (*marker).max(*through);
                }
            }
        }
        let _ = step;
    }
    eprintln!("{steps} steps, {kills} kills");

    for user in 1..=USERS {
        for device in DEVICES {
            let client = connect_retrying(&url, &tokens[&(user, device)]).await;
            let state = devices.entry((user, device)).or_default();
            state.catch_up(&client, &large).await?;
            for (&conversation, (members, _, _)) in &model.conversations {
                if !members.contains(&user) {
                    continue;
                }
                let want = model.visible(user, conversation);
                let shown = state
                    .view
                    .conversations
                    .get(&conversation)
                    .map(ConversationView::visible)
                    .unwrap_or_default();
                assert_eq!(
                    shown, want,
                    "seed {seed}: user {user}'s {device} in conversation {conversation}"
                );
                let history = history_view(&client, conversation).await?.visible();
                assert_eq!(
                    history, want,
                    "seed {seed}: History of user {user} in {conversation}"
                );
            }
        }
        let client = connect_retrying(&url, &tokens[&(user, "phone")]).await;
        let page = client.list_conversations(50, "", "").await?;
        for state in &page.conversations {
            assert_eq!(
                state.unread,
                model.unread(user, state.conversation_id),
                "seed {seed}: unread of user {user} in {} (read through {} by the server, {} by the model)\n{}",
                state.conversation_id,
                state.read_through,
                model.read_through[&(user, state.conversation_id)],
                log.join("\n")
            );
        }
    }

    // The stored timelines, read from the store itself.
    server.terminate(Duration::from_secs(20))?;
    let store: Arc<dyn timeline_store::TimelineStore> = match stored {
        Stored::Embedded => Arc::new(timeline_store::EmbeddedStore::open(
            &dir.path().join("store"),
            timeline_store::EmbeddedStoreConfig::default(),
        )?),
        Stored::Cql(keyspace) => {
            let session = scylla::client::session_builder::SessionBuilder::new()
                .known_nodes(tests::cql_nodes().split(','))
                .build()
                .await?;
            Arc::new(
                timeline_store::ScyllaTimelineStore::open(Arc::new(session), &keyspace.name)
                    .await?,
            )
        }
    };
    let mut texts = Vec::new();
    for &conversation in &ids {
        let range = ConversationRange::oldest_first(0, u64::MAX, 100_000);
        for entry in store.read_conversation(conversation, range).await? {
            texts.extend(entry.state.previous.into_iter().map(|p| p.text));
            texts.push(entry.text);
        }
    }
    for user in 1..=USERS {
        let range = InboxRange::new(0, u64::MAX, 100_000);
        texts.extend(
            store
                .read_inbox(user, range)
                .await?
                .into_iter()
                .map(|e| e.text),
        );
    }
    assert!(
        !model.withdrawn_texts.is_empty() || steps < 20,
        "seed {seed}: nothing was withdrawn"
    );
    for text in &texts {
        assert!(
            !model.withdrawn_texts.contains(text),
            "seed {seed}: the store still holds withdrawn text {text:?}"
        );
    }
    Ok(())
}

/// The calls of one step, at once (two edits race), each to its end.
async fn futures_join(url: &str, token: &str, calls: &[Call]) -> Vec<u64> {
    let runs = calls
        .iter()
        .map(|call| tokio::spawn(complete(url.to_owned(), token.to_owned(), call.clone())));
    let mut outcomes = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        outcomes.push(run.await.expect("call task"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_survives_kill9_on_the_embedded_store() -> anyhow::Result<()> {
    lifecycle_matches_the_model(Stored::Embedded, 120, 5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_survives_kill9_on_the_scylla_store() -> anyhow::Result<()> {
    let keyspace = tests::CqlKeyspace::new("lifecycle");
    lifecycle_matches_the_model(Stored::Cql(&keyspace), 60, 12).await
}

#[test]
fn the_cli_recalls_edits_deletes_and_clears() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let url = server.url();
    let (alice, bob) = (
        server.device_token(1, "cli")?,
        server.device_token(2, "cli")?,
    );
    let service = server.service_token("moderation")?;
    let created = tl(&url, &alice, &["conversation", "create", "--members", "2"]);
    assert!(created.status.success(), "{created:?}");
    let conversation = String::from_utf8(created.stdout)?.trim().to_owned();
    let send = |token: &str, text: &str| -> anyhow::Result<String> {
        let sent = tl(
            &url,
            token,
            &["send", "--conversation", &conversation, "--text", text],
        );
        assert!(sent.status.success(), "{sent:?}");
        Ok(json_lines(&sent)[0]["conv_seq"].to_string())
    };
    let first = send(&alice, "first")?;
    let second = send(&alice, "second")?;
    let third = send(&bob, "third")?;
    let edited = tl(
        &url,
        &alice,
        &[
            "edit",
            "--conversation",
            &conversation,
            "--conv-seq",
            &first,
            "--text",
            "first!",
        ],
    );
    assert!(edited.status.success(), "{edited:?}");
    let version = json_lines(&edited)[0]["conv_seq"].clone();
    let op = uuid::Uuid::new_v4().to_string();
    let recall = [
        "recall",
        "--conversation",
        &conversation,
        "--conv-seq",
        &second,
        "--op-id",
        &op,
    ];
    let recalled = tl(&url, &alice, &recall);
    assert!(recalled.status.success(), "{recalled:?}");
    let again = tl(&url, &alice, &recall);
    assert_eq!(json_lines(&again)[0]["duplicate"], true, "{again:?}");
    // Refusals: not the sender, delete for everyone without a service.
    let refused = tl(
        &url,
        &bob,
        &[
            "recall",
            "--conversation",
            &conversation,
            "--conv-seq",
            &first,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only its sender"),
        "{refused:?}"
    );
    let refused = tl(
        &url,
        &bob,
        &[
            "delete",
            "--conversation",
            &conversation,
            "--conv-seq",
            &first,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("service token"),
        "{refused:?}"
    );
    let deleted = tl(
        &url,
        &service,
        &[
            "delete",
            "--conversation",
            &conversation,
            "--conv-seq",
            &third,
        ],
    );
    assert!(deleted.status.success(), "{deleted:?}");

    let history = tl(&url, &bob, &["history", "--conversation", &conversation]);
    assert!(history.status.success(), "{history:?}");
    let lines = json_lines(&history);
    let at = |seq: &str| {
        lines
            .iter()
            .find(|l| l["conv_seq"].to_string().as_str() == seq && l["kind"] == "message")
            .cloned()
            .unwrap()
    };
    assert_eq!(at(&first)["text"], "first!");
    assert_eq!(
        (at(&first)["edited"].clone(), at(&first)["version"].clone()),
        (true.into(), version)
    );
    assert_eq!(at(&second)["recalled"], true);
    assert_eq!(at(&second)["text"], "");
    assert_eq!(at(&third)["removal"], "deleted");
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    for kind in ["edit", "recall", "delete"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }

    // Delete for me and clear: bob's view only.
    let mine = tl(
        &url,
        &bob,
        &[
            "delete",
            "--conversation",
            &conversation,
            "--conv-seq",
            &first,
            "--for-me",
        ],
    );
    assert!(mine.status.success(), "{mine:?}");
    let cleared = tl(&url, &alice, &["clear", "--conversation", &conversation]);
    assert!(cleared.status.success(), "{cleared:?}");
    let count = |token: &str| {
        let history = tl(&url, token, &["history", "--conversation", &conversation]);
        json_lines(&history)
            .iter()
            .filter(|l| l["kind"] == "message")
            .count()
    };
    assert_eq!(count(&bob), 2, "bob hid one of three");
    assert_eq!(count(&alice), 0, "alice cleared everything");
    let state = dir.path().join("bob.checkpoint");
    let synced = tl(&url, &bob, &["sync", "--state", state.to_str().unwrap()]);
    assert!(synced.status.success(), "{synced:?}");
    let lines = json_lines(&synced);
    let recall_line = lines.iter().find(|l| l["kind"] == "recall").unwrap();
    assert_eq!(recall_line["target_conv_seq"].to_string(), second);
    Ok(())
}
