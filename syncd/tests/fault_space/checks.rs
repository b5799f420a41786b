//! The checks: after every step the store agrees with everything any
//! device was shown; at the end, every device drained exactly what the
//! fanout rules put in its inbox, and every acknowledged send is stored once.

use super::*;

/// After every step: the store agrees with everything seen, and every
/// inbox follows its conversations' order.
pub(crate) async fn check_store(world: &World, step: usize) {
    let inner = world.store.inner();
    let bound = world.seq_store.stored(Namespace::Counter, 0);
    let known = world.state().model.existing.clone();
    let mut found = Vec::new();
    for id in (1..=bound).filter(|id| !known.contains(id)) {
        if inner.conversation(id).await.expect("memory read").is_some() {
            found.push(id);
        }
    }
    let mut timelines = Vec::new();
    for &id in known.iter().chain(&found) {
        timelines.push(timeline_of(inner, id).await);
    }
    let mut inboxes = Vec::new();
    for user in 1..=USERS {
        inboxes.push((user, inbox_of(inner, user).await));
    }
    let mut problems = Vec::new();
    {
        let mut state = world.state();
        let model = &mut state.model;
        model.existing.extend(found);
        for entry in timelines.iter().flatten() {
            if let Err(p) = model.see_timeline(entry, "the store") {
                problems.push(p);
            }
        }
        for (user, inbox) in &inboxes {
            let mut order: BTreeMap<u64, u64> = BTreeMap::new();
            for entry in inbox {
                if let Err(p) = model.see_inbox(*user, entry, "the store") {
                    problems.push(p);
                }
                if let Err(p) = model.see_timeline(entry, "an inbox in the store") {
                    problems.push(p);
                }
                let last = order.entry(entry.conversation_id).or_insert(0);
                if entry.conv_seq <= *last {
                    problems.push(format!(
                        "inbox of {user}: seq {} holds conv_seq {} of {} after conv_seq {}",
                        entry.seq, entry.conv_seq, entry.conversation_id, *last
                    ));
                }
                *last = entry.conv_seq;
            }
        }
    }
    for p in problems {
        world.violate(step, p);
    }
}

/// The record with its member list: a large group's from its member
/// table (its record lists nobody), walked a page at a time.
pub(crate) async fn with_members(store: &MemoryStore, mut record: Conversation) -> Conversation {
    use timeline_store::ConversationMembers;
    if record.lists_members() {
        return record;
    }
    let mut after = 0;
    loop {
        let page = store
            .list_members(record.conversation_id, after, 100)
            .await
            .expect("memory read");
        record.members.extend(&page);
        match page.last() {
            Some(&last) if page.len() == 100 => after = last,
            _ => break,
        }
    }
    record
}

pub(crate) async fn snapshot(world: &World) -> Snapshot {
    let inner = world.store.inner();
    let existing = world.state().model.existing.clone();
    let mut snapshot = Snapshot {
        inboxes: BTreeMap::new(),
        floors: BTreeMap::new(),
        timelines: BTreeMap::new(),
        records: BTreeMap::new(),
    };
    for user in 1..=USERS {
        snapshot.inboxes.insert(user, inbox_of(inner, user).await);
        let floor = inner.inbox_floor(user).await.expect("memory read");
        snapshot.floors.insert(user, floor);
    }
    for id in existing {
        snapshot.timelines.insert(id, timeline_of(inner, id).await);
        if let Some(record) = inner.conversation(id).await.expect("memory read") {
            snapshot
                .records
                .insert(id, with_members(inner, record).await);
        }
    }
    snapshot
}

/// The end of a run: everything settled and drained.
pub(crate) fn final_check(world: &World, snapshot: &Snapshot, step: usize) {
    let mut problems = Vec::new();
    let state = world.state();
    let model = &state.model;

    // No device skipped or saw twice what the store holds for it.
    for d in &model.devices {
        let inbox = &snapshot.inboxes[&d.user];
        let shown: BTreeSet<u64> = d.collected.iter().copied().collect();
        if shown.len() != d.collected.len() {
            problems.push(format!("{}/{} was shown a seq twice", d.user, d.name));
        }
        let top = inbox.last().map_or(0, |e| e.seq);
        if d.checkpoint < top {
            problems.push(format!(
                "{}/{} drained to {} but the inbox reaches {top}",
                d.user, d.name, d.checkpoint
            ));
        }
        let skipped: Vec<u64> = inbox
            .iter()
            .map(|e| e.seq)
            .filter(|&s| s <= d.checkpoint && !shown.contains(&s) && !d.in_gap(s))
            .collect();
        if !skipped.is_empty() {
            problems.push(format!(
                "{}/{} skipped {skipped:?} (gaps {:?}, shown {:?})",
                d.user, d.name, d.gaps, d.collected
            ));
        }
    }

    // Every event sits in exactly the inboxes the fanout rules name.
    let mut member_at: BTreeMap<(u64, u64), BTreeSet<u64>> = BTreeMap::new();
    let mut large_at: BTreeMap<(u64, u64), bool> = BTreeMap::new();
    // Per conversation, per user: the last conv_seq at which they joined.
    let mut final_members: BTreeMap<u64, (BTreeSet<u64>, bool)> = BTreeMap::new();
    let mut continuous_since: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for (&id, timeline) in &snapshot.timelines {
        let replayed = replay(timeline);
        for event in &replayed {
            let e = event.entry;
            member_at.insert((id, e.conv_seq), event.members_after.clone());
            large_at.insert((id, e.conv_seq), event.large_after);
            for &user in &event.members_after {
                if !event.members_before.contains(&user) {
                    continuous_since.insert((id, user), e.conv_seq);
                }
            }
            let recipients = event.recipients();
            for user in 1..=USERS {
                let inbox = &snapshot.inboxes[&user];
                let copies = inbox.iter().filter(|c| c.msg_id == e.msg_id).count();
                let owed = recipients.contains(&user);
                let ok = match (owed, copies) {
                    (true, 1) | (false, 0) => true,
                    (true, 0) => may_be_trimmed(inbox, snapshot.floors[&user], e),
                    _ => false,
                };
                if !ok {
                    problems.push(format!(
                        "{:?} at conv_seq {} of {id} (msg {}): user {user} holds {copies} copies, owed {owed} (members before {:?} after {:?}, large {}→{})",
                        e.kind,
                        e.conv_seq,
                        e.msg_id,
                        event.members_before,
                        event.members_after,
                        event.large_before,
                        event.large_after
                    ));
                }
            }
        }
        if let Some(last) = replayed.last() {
            final_members.insert(id, (last.members_after.clone(), last.large_after));
            if let Some(record) = snapshot.records.get(&id) {
                let members: BTreeSet<u64> = record.members.iter().copied().collect();
                if members != last.members_after
                    || record.read_fanout != last.large_after
                    || record.members.len() as u64 != record.member_count
                {
                    problems.push(format!(
                        "record of {id} says {:?} (read fanout {}, {} members), its timeline {:?} ({})",
                        record.members,
                        record.read_fanout,
                        record.member_count,
                        last.members_after,
                        last.large_after
                    ));
                }
            }
        }
        // A keyed message is stored once.
        let mut keys = BTreeSet::new();
        for e in timeline.iter().filter(|e| e.kind == EntryKind::Message) {
            if !keys.insert((e.sender_id, e.client_msg_id.clone())) {
                problems.push(format!(
                    "client_msg_id {} of user {} stored twice in {id}",
                    e.client_msg_id, e.sender_id
                ));
            }
        }
    }

    // Every acknowledged send is in its timeline, and large-group members
    // found it through History.
    for acked in &model.acked {
        let id = acked.conversation_id;
        let timeline = snapshot.timelines.get(&id).map_or(&[][..], Vec::as_slice);
        let found = timeline
            .iter()
            .filter(|e| e.conv_seq == acked.conv_seq && e.msg_id == acked.msg_id)
            .count();
        if found != 1 {
            problems.push(format!(
                "send acknowledged at #{} (conv_seq {} msg {} of {id}) is in its timeline {found} times",
                acked.step, acked.conv_seq, acked.msg_id
            ));
            continue;
        }
        if !large_at
            .get(&(id, acked.conv_seq))
            .copied()
            .unwrap_or(false)
        {
            continue;
        }
        let members = &member_at[&(id, acked.conv_seq)];
        let (now, _) = &final_members[&id];
        for d in &model.devices {
            // A device told that its checkpoint expired resyncs from
            // scratch: what it owes is no longer defined by its history.
            if !members.contains(&d.user) || !d.gaps.is_empty() {
                continue;
            }
            let stayed = now.contains(&d.user)
                && continuous_since
                    .get(&(id, d.user))
                    .is_some_and(|&since| since < acked.conv_seq);
            if !stayed && !CHECK_REMOVED_LARGE_MEMBERS_KEEP_THEIR_MESSAGES {
                continue;
            }
            let Some(&start) = d.conv_start.get(&id) else {
                if !d.gaps.is_empty() {
                    continue;
                }
                problems.push(format!(
                    "{}/{} never heard of large group {id} (gaps {:?})",
                    d.user, d.name, d.gaps
                ));
                continue;
            };
            if start >= acked.conv_seq {
                continue;
            }
            let seen = d
                .conv_seen
                .get(&id)
                .is_some_and(|s| s.contains(&acked.conv_seq));
            if !seen {
                problems.push(format!(
                    "{}/{} missed conv_seq {} (msg {}) of large group {id}: saw {:?}",
                    d.user,
                    d.name,
                    acked.conv_seq,
                    acked.msg_id,
                    d.conv_seen.get(&id)
                ));
            }
        }
    }
    drop(state);
    for p in problems {
        world.violate(step, p);
    }
}
