use super::*;
use crate::engine::{Engine, EngineConfig, Feed, MembershipChange, NewConversation, SendCommand};
use crate::horizon::Key;
use crate::testkit::*;
use std::time::Duration;
use timeline_store::{ConversationKind, EventCommit};

/// Groups past 3 members use read fanout.
fn small_threshold() -> EngineConfig {
    EngineConfig {
        large_group_threshold: 3,
        ..EngineConfig::default()
    }
}

/// A large group created by a service, its members added in pages of
/// `MAX_MEMBERS_PER_CALL`.
async fn large_group(engine: &Arc<Engine>, members: std::ops::RangeInclusive<u64>) -> u64 {
    let all: Vec<u64> = members.collect();
    let mut pages = all.chunks(crate::limits::MAX_MEMBERS_PER_CALL);
    let conversation = engine
        .create_conversation(
            service(),
            NewConversation {
                kind: ConversationKind::Group,
                members: pages.next().unwrap().to_vec(),
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
        .unwrap();
    assert!(conversation.read_fanout);
    for page in pages {
        engine
            .change_members(
                service(),
                conversation.conversation_id,
                page.to_vec(),
                MembershipChange::Add,
            )
            .await
            .unwrap();
    }
    conversation.conversation_id
}

fn announcement(conversation_id: u64, text: &str, priority: bool) -> SendCommand {
    SendCommand {
        priority,
        ..message(conversation_id, text, None)
    }
}

fn mentioning(conversation_id: u64, text: &str, users: &[u64]) -> SendCommand {
    SendCommand {
        mentions: crate::send::Mentions {
            users: users.to_vec(),
            everyone: false,
        },
        ..message(conversation_id, text, None)
    }
}

/// The feed's next large-group notice (inbox notices skipped); fails
/// instead of hanging when none comes.
async fn next_groups(feed: &mut Feed) -> crate::engine::PushNotice {
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("a large-group notice within 30 s")
            .unwrap()
            .expect("the feed is open");
        if !notice.groups.is_empty() || notice.groups_resync {
            return notice;
        }
    }
}

/// Lets the pusher drain its outbox (on a paused clock a sleep returns once
/// every task is idle).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// 2,000 of 10,000 members online: a message from a service is one commit
/// with no inbox copy, and every online member's stream names it.
#[tokio::test(start_paused = true)]
async fn a_large_group_message_writes_once_and_reaches_every_online_member() {
    let (engine, store) = memory_engine(small_threshold()).await;
    let conversation = large_group(&engine, 1..=10_000).await;
    let mut feeds = Vec::new();
    for user in 1..=2_000u64 {
        feeds.push(
            engine
                .subscribe(&device(user, "d"), 0, false)
                .await
                .unwrap(),
        );
    }
    let before = store.counters();
    let sent = engine
        .send(service(), message(conversation, "to everyone", None))
        .await
        .unwrap();
    let after = store.counters();
    assert_eq!(after.commits - before.commits, 1, "one event");
    assert_eq!(
        after.inbox_copies - before.inbox_copies,
        0,
        "nothing per member"
    );
    for (i, feed) in feeds.iter_mut().enumerate() {
        let notice = next_groups(feed).await;
        assert_eq!(
            notice.groups,
            [GroupNotice {
                conversation_id: conversation,
                conv_seq: sent.receipt.conv_seq,
                priority: false,
            }],
            "member {}",
            i + 1
        );
        assert!(notice.entries.is_empty());
    }
}

/// A burst into two groups while the device reads nothing: the priority
/// messages (a service's and a mention of this user) come first, each on
/// its own and in order; the ordinary ones are merged to one notice per
/// group naming its newest conv_seq.
#[tokio::test(start_paused = true)]
async fn priority_messages_reach_a_lagging_device_before_the_ordinary_ones() {
    let (engine, _store) = memory_engine(small_threshold()).await;
    let busy = large_group(&engine, 1..=5).await;
    let quiet = large_group(&engine, 1..=5).await;
    let mut feed = engine.subscribe(&device(2, "d"), 0, false).await.unwrap();
    // Drain the inbox notices of the creations.
    while tokio::time::timeout(Duration::from_millis(10), feed.next())
        .await
        .is_ok()
    {}
    let mut priority = Vec::new();
    let mut newest = HashMap::new();
    for i in 0..60 {
        let sent = if i % 10 == 5 {
            let sent = engine
                .send(service(), announcement(busy, &format!("p{i}"), true))
                .await
                .unwrap();
            priority.push((busy, sent.receipt.conv_seq));
            sent
        } else if i == 33 {
            let sent = engine
                .send(device(1, "d"), mentioning(quiet, "@2", &[2]))
                .await
                .unwrap();
            priority.push((quiet, sent.receipt.conv_seq));
            sent
        } else if i == 34 {
            // Mentions someone else: ordinary for user 2.
            engine
                .send(device(1, "d"), mentioning(quiet, "@3", &[3]))
                .await
                .unwrap()
        } else {
            engine
                .send(device(1, "d"), message(busy, &i.to_string(), None))
                .await
                .unwrap()
        };
        newest.insert(sent.receipt.conversation_id, sent.receipt.conv_seq);
    }
    settle().await;

    let mut got_priority = Vec::new();
    let mut got_ordinary = HashMap::new();
    while got_ordinary.len() < 2 {
        let notice = next_groups(&mut feed).await;
        for group in notice.groups {
            if group.priority {
                assert!(
                    got_ordinary.is_empty(),
                    "priority {group:?} after an ordinary notice"
                );
                got_priority.push((group.conversation_id, group.conv_seq));
            } else {
                assert!(
                    got_ordinary
                        .insert(group.conversation_id, group.conv_seq)
                        .is_none(),
                    "ordinary notices are merged per group"
                );
            }
        }
    }
    priority.sort_unstable();
    got_priority.sort_unstable();
    assert_eq!(
        got_priority, priority,
        "every priority message, none merged"
    );
    assert_eq!(got_ordinary, newest);
}

#[tokio::test(start_paused = true)]
async fn only_services_send_priority_messages() {
    let (engine, _store) = memory_engine(small_threshold()).await;
    let conversation = large_group(&engine, 1..=5).await;
    let refused = engine
        .send(device(1, "d"), announcement(conversation, "me first", true))
        .await;
    assert!(
        matches!(refused, Err(crate::error::SyncdError::PermissionDenied(_))),
        "{refused:?}"
    );
    let history = engine
        .history(
            &device(1, "d"),
            crate::engine::HistoryQuery {
                conversation_id: conversation,
                before: 0,
                after: Some(0),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(
        history.entries.iter().all(|e| e.text != "me first"),
        "nothing stored"
    );
    engine
        .send(service(), announcement(conversation, "notice", true))
        .await
        .unwrap();
    let history = engine
        .history(
            &device(1, "d"),
            crate::engine::HistoryQuery {
                conversation_id: conversation,
                before: 0,
                after: Some(0),
                limit: 100,
            },
        )
        .await
        .unwrap();
    let stored = history.entries.last().unwrap();
    assert_eq!(stored.text, "notice");
    assert!(stored.priority, "the mark is stored with the message");
}

/// Joining and leaving while subscribed moves the stream in and out of the
/// group's registry; a closed stream leaves nothing behind.
#[tokio::test(start_paused = true)]
async fn the_registry_follows_membership_and_streams() {
    let (engine, _store) = memory_engine(small_threshold()).await;
    let conversation = large_group(&engine, 1..=5).await;
    let mut feed = engine.subscribe(&device(9, "d"), 0, false).await.unwrap();
    engine
        .change_members(service(), conversation, vec![9], MembershipChange::Add)
        .await
        .unwrap();
    let sent = engine
        .send(device(1, "d"), message(conversation, "welcome", None))
        .await
        .unwrap();
    let notice = next_groups(&mut feed).await;
    assert_eq!(notice.groups[0].conversation_id, conversation);
    assert_eq!(notice.groups[0].conv_seq, sent.receipt.conv_seq);
    engine
        .change_members(service(), conversation, vec![9], MembershipChange::Remove)
        .await
        .unwrap();
    engine
        .send(device(1, "d"), message(conversation, "after", None))
        .await
        .unwrap();
    settle().await;
    let quiet = tokio::time::timeout(Duration::from_secs(5), next_groups(&mut feed)).await;
    assert!(quiet.is_err(), "a former member hears nothing: {quiet:?}");
}

// The hub on its own: fake commits, real lanes.

fn lifecycle() -> Lifecycle {
    Lifecycle::default()
}

fn index(user_id: u64, conversation_id: u64, member: bool) -> EventCommit {
    EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        large_group_index: vec![LargeGroupIndexChange {
            user_id,
            conversation_id,
            member,
        }],
        ..commit(Entry::new(EntryKind::MembersAdded, conversation_id))
    }
}

fn commit(entry: Entry) -> EventCommit {
    EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry,
        inbox: Vec::new(),
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    }
}

fn announce(hub: &GroupHub, commit: &EventCommit, top: u64) {
    let visible: Vec<(Key, u64)> = vec![((Scope::Conversation, commit.entry.conversation_id), top)];
    hub.committed(&Committed {
        commit,
        visible: &visible,
    });
}

fn message_at(conversation_id: u64, conv_seq: u64) -> Entry {
    Entry {
        conv_seq,
        ..Entry::new(EntryKind::Message, conversation_id)
    }
}

#[tokio::test(start_paused = true)]
async fn registry_state_is_freed_with_the_last_stream() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let a = hub.subscribe(1, &lifecycle);
    let b = hub.subscribe(1, &lifecycle);
    a.join([10, 11]);
    announce(&hub, &index(1, 12, true), 1);
    assert_eq!(hub.subscribers(10), 1);
    assert_eq!(hub.subscribers(12), 2, "both open streams of the user");
    announce(&hub, &index(1, 12, false), 2);
    assert_eq!(hub.subscribers(12), 0);
    drop(a);
    assert_eq!(hub.subscribers(10), 0);
    drop(b);
    assert!(hub.users.iter().all(|s| lock(s).is_empty()));
    assert!(hub.conversations.iter().all(|s| lock(s).is_empty()));
    settle().await;
    assert!(lock(&hub.outbox).is_empty(), "the pusher drained it");
    // Nobody subscribed: a message leaves nothing in the outbox.
    announce(&hub, &commit(message_at(10, 3)), 3);
    assert!(lock(&hub.outbox).is_empty());
}

/// A priority message past the group's safe top waits until the group is
/// readable through it.
#[tokio::test(start_paused = true)]
async fn a_priority_message_waits_until_readable() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    sub.join([10]);
    let urgent = Entry {
        priority: true,
        ..message_at(10, 8)
    };
    // Seq 7 is still in flight: the group is readable through 6 only.
    announce(&hub, &commit(urgent), 6);
    settle().await;
    assert_eq!(sub.mailbox().take_priority(), None);
    assert_eq!(
        sub.mailbox().take_ordinary().unwrap().notices[0].conv_seq,
        6
    );
    announce(&hub, &commit(message_at(10, 7)), 8);
    settle().await;
    let batch = sub.mailbox().take_priority().unwrap();
    assert_eq!(
        batch.notices,
        [GroupNotice {
            conversation_id: 10,
            conv_seq: 8,
            priority: true
        }]
    );
    assert_eq!(
        sub.mailbox().take_ordinary(),
        None,
        "the priority one says it all"
    );
}

/// The write holding a priority message back fails: the release of its
/// gap pushes the message, without waiting for the group's next one.
#[tokio::test]
async fn a_priority_message_held_behind_a_failed_write_is_pushed_at_its_release() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    sub.join([10]);
    let urgent = Entry {
        priority: true,
        ..message_at(10, 8)
    };
    announce(&hub, &commit(urgent), 6);
    settle().await;
    assert_eq!(sub.mailbox().take_priority(), None);
    sub.mailbox().take_ordinary();
    // Seq 7 failed: released, the group is readable through 8.
    hub.released(&[((Scope::Conversation, 10), 8)]);
    settle().await;
    let batch = sub
        .mailbox()
        .take_priority()
        .expect("pushed at the release");
    assert_eq!(batch.notices[0].conv_seq, 8);
}

/// A stream that reads nothing holds at most one value per group and a
/// bounded priority queue; past either bound it is told to pull.
#[tokio::test]
async fn a_lagging_mailbox_is_bounded_and_degrades_ordinary_first() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    let mailbox = sub.mailbox();
    for seq in 1..=10_000 {
        mailbox.deliver(5, seq, &[], &[]);
    }
    assert_eq!(mailbox.pending_len(), (0, 1), "merged per group");
    for group in 0..MAX_PENDING_GROUP_TOPS as u64 {
        mailbox.deliver(100 + group, 1, &[], &[]);
    }
    assert_eq!(mailbox.pending_len(), (0, 0), "past the bound: dropped");
    for seq in 1..=10u64 {
        mailbox.deliver(7, seq, &[seq], &[]);
    }
    assert_eq!(
        mailbox.pending_len(),
        (10, 0),
        "priority survives the resync"
    );
    let first = mailbox.take_priority().unwrap();
    assert_eq!(
        first.notices.iter().map(|n| n.conv_seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        mailbox.take_ordinary(),
        Some(GroupBatch {
            notices: Vec::new(),
            resync: true
        })
    );
    assert_eq!(mailbox.take_ordinary(), None);
    for seq in 1..=(MAX_PENDING_PRIORITY as u64 * 3) {
        mailbox.deliver(7, seq, &[seq], &[]);
        assert!(mailbox.pending_len().0 <= MAX_PENDING_PRIORITY);
    }
    while let Some(batch) = mailbox.take_priority() {
        assert!(batch.notices.len() <= MAX_GROUP_NOTICES);
    }
    assert!(mailbox.take_ordinary().unwrap().resync);
}

/// A member's mention of everyone is an ordinary notice: with the priority
/// lane any member of a 100,000-member group could put a notice ahead of
/// everything else on every online member's stream, as often as it sends.
#[tokio::test(start_paused = true)]
async fn a_mention_of_everyone_takes_the_ordinary_lane() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    sub.join([10]);
    let everyone = Entry {
        mention_all: true,
        ..message_at(10, 1)
    };
    announce(&hub, &commit(everyone), 1);
    settle().await;
    assert_eq!(sub.mailbox().take_priority(), None);
    assert_eq!(
        sub.mailbox().take_ordinary().unwrap().notices,
        [GroupNotice {
            conversation_id: 10,
            conv_seq: 1,
            priority: false
        }]
    );
}

/// Named mentions keep the priority lane, but a flood of them never pushes
/// a service's priority notice out of it and never costs the stream a
/// resync: past their own share of the lane the oldest become the group's
/// ordinary notice.
#[tokio::test(start_paused = true)]
async fn mentions_never_evict_a_services_priority_notice() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    sub.join([10]);
    let urgent = Entry {
        priority: true,
        ..message_at(10, 1)
    };
    announce(&hub, &commit(urgent), 1);
    settle().await;
    let flood = MAX_PENDING_PRIORITY as u64 * 2;
    for conv_seq in 2..=flood + 1 {
        let mention = Entry {
            mentions: vec![1],
            ..message_at(10, conv_seq)
        };
        announce(&hub, &commit(mention), conv_seq);
        if conv_seq % 32 == 0 {
            settle().await;
        }
    }
    settle().await;
    let mut priority = Vec::new();
    while let Some(batch) = sub.mailbox().take_priority() {
        assert!(!batch.resync);
        priority.extend(batch.notices);
    }
    assert_eq!(
        priority.first(),
        Some(&GroupNotice {
            conversation_id: 10,
            conv_seq: 1,
            priority: true
        }),
        "the service's notice is kept, first"
    );
    let mentions: Vec<u64> = priority[1..].iter().map(|n| n.conv_seq).collect();
    assert!(mentions.len() < MAX_PENDING_PRIORITY, "{}", mentions.len());
    assert_eq!(mentions.last(), Some(&(flood + 1)), "the newest are kept");
    let ordinary = sub.mailbox().take_ordinary().unwrap();
    assert!(!ordinary.resync, "no resync for a flood of mentions");
    assert_eq!(ordinary.notices.len(), 1);
    assert!(ordinary.notices[0].conv_seq >= mentions[0] - 1);
}

/// Priority messages queued for one pass of the pusher are bounded per
/// group; past the bound the group's subscribers are told to resync.
#[tokio::test(start_paused = true)]
async fn queued_priority_messages_per_group_are_bounded() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    sub.join([10]);
    let burst = MAX_PENDING_PRIORITY as u64 * 4;
    for conv_seq in 1..=burst {
        let urgent = Entry {
            priority: true,
            ..message_at(10, conv_seq)
        };
        announce(&hub, &commit(urgent), conv_seq);
    }
    let queued = lock(&hub.outbox).get(&10).map_or(0, |m| m.priority.len());
    assert!(queued <= MAX_PENDING_PRIORITY, "{queued} queued");
    settle().await;
    while sub.mailbox().take_priority().is_some() {}
    assert!(
        sub.mailbox().take_ordinary().unwrap().resync,
        "what was not queued is pulled"
    );
}

/// A stream pushed for as many large groups as it may be is told so when
/// the user joins one more (at subscription or later): it resyncs instead of
/// silently missing the group's notices.
#[tokio::test(start_paused = true)]
async fn a_stream_past_its_pushed_groups_is_told_to_resync() {
    let hub = GroupHub::new();
    let lifecycle = lifecycle();
    let sub = hub.subscribe(1, &lifecycle);
    sub.join(1..=MAX_PUSHED_GROUPS_PER_STREAM as u64);
    assert_eq!(sub.mailbox().take_ordinary(), None, "all of them pushed");
    announce(&hub, &index(1, 5_000, true), 1);
    assert_eq!(hub.subscribers(5_000), 0);
    assert!(sub.mailbox().take_ordinary().unwrap().resync);
    let other = hub.subscribe(1, &lifecycle);
    other.join(1..=MAX_PUSHED_GROUPS_PER_STREAM as u64 + 1);
    assert!(other.mailbox().take_ordinary().unwrap().resync);
}
