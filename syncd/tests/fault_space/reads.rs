//! The device operations: syncs and acks, large-group reads through
//! History, and push subscriptions, each checking what it is shown (seqs
//! increase, checkpoints never go down, nothing seen twice).

use super::*;

/// One device's sync (and, for a stored checkpoint, its ack), checked as
/// it arrives. `drain`: the final pass, where no error is expected.
pub(crate) async fn op_sync(
    world: Arc<World>,
    engine: Arc<Engine>,
    step: usize,
    index: usize,
    limit: usize,
    drain: bool,
) -> bool {
    let (user, name, stored, after, pending) = {
        let state = world.state();
        let d = &state.model.devices[index];
        (
            d.user,
            d.name.clone(),
            d.stored,
            d.checkpoint,
            d.pending_ack,
        )
    };
    let me = device(user, &name);
    if let Some(seq) = pending {
        let done = ack(&world, &engine, step, index, &me, seq).await;
        world.state().model.devices[index].busy = false;
        return done && !drain;
    }
    let result = engine.sync(&me, (!stored).then_some(after), limit).await;
    let page = match result {
        Ok(page) => page,
        Err(error) => {
            world.trace(format!("#{step} sync {user}/{name} failed: {error:?}"));
            if drain || !expected(&error) {
                world.violate(step, format!("sync of {user}/{name} answered {error:?}"));
            }
            world.state().model.devices[index].busy = false;
            return false;
        }
    };
    world.trace(format!(
        "#{step} sync {user}/{name} after {after}: {:?} checkpoint {} more {} expired {:?} large {:?}",
        seqs(&page.entries),
        page.checkpoint,
        page.has_more,
        page.expired_below,
        page.large_groups
    ));
    world.count(if page.entries.is_empty() {
        "sync empty"
    } else {
        "sync with entries"
    });
    if page.expired_below.is_some() {
        world.count("sync expired");
    }
    let mut problems = Vec::new();
    let mut new_checkpoint = page.checkpoint;
    {
        let mut state = world.state();
        let State { model, .. } = &mut *state;
        for entry in &page.entries {
            if let Err(p) = model.see_inbox(user, entry, "sync") {
                problems.push(p);
            }
            if let Err(p) = model.see_timeline(entry, "sync") {
                problems.push(p);
            }
        }
        let d = &mut model.devices[index];
        if page.checkpoint < after {
            problems.push(format!(
                "checkpoint of {user}/{name} went down: {after} then {}",
                page.checkpoint
            ));
        }
        let mut last = d.last_seen();
        for entry in &page.entries {
            if entry.seq <= last || entry.seq <= after {
                problems.push(format!(
                    "{user}/{name} was shown seq {} again (after {after}, had {last})",
                    entry.seq
                ));
            }
            last = last.max(entry.seq);
            d.collected.push(entry.seq);
            if let Err(p) = d.see_conversation_entry(entry, "in the inbox") {
                problems.push(p);
            }
        }
        if let Some(last) = page.entries.last()
            && page.checkpoint != last.seq
        {
            problems.push(format!(
                "page of {user}/{name} ends at {} but says checkpoint {}",
                last.seq, page.checkpoint
            ));
        }
        if let Some(floor) = page.expired_below {
            if !page.entries.is_empty() || floor <= after.saturating_add(1) {
                problems.push(format!(
                    "{user}/{name} told expired below {floor} after {after} with {:?}",
                    seqs(&page.entries)
                ));
            }
            d.gaps.push((after, floor - 1));
            new_checkpoint = floor - 1;
        }
        if !stored {
            d.checkpoint = new_checkpoint;
        }
    }
    for p in problems {
        world.violate(step, p);
    }
    let mut complete = !page.has_more && page.expired_below.is_none();
    if stored && new_checkpoint > after {
        complete &= ack(&world, &engine, step, index, &me, new_checkpoint).await;
    }
    // Groups the user is in, and those it left (read up to its removal).
    let tops: Vec<(u64, u64, u64)> = page
        .large_groups
        .iter()
        .chain(&page.left_large_groups)
        .map(|g| (g.conversation_id, g.conv_seq, g.joined_conv_seq))
        .collect();
    if complete && !tops.is_empty() {
        complete &=
            read_large_groups(&world, &engine, step, index, &tops, new_checkpoint, drain).await;
    }
    world.state().model.devices[index].busy = false;
    complete
}

pub(crate) async fn ack(
    world: &World,
    engine: &Engine,
    step: usize,
    index: usize,
    me: &Principal,
    seq: u64,
) -> bool {
    match engine.ack(me, seq).await {
        Ok(stored) => {
            world.trace(format!("#{step} ack {seq}: stored {stored}"));
            let problem = {
                let mut state = world.state();
                let d = &mut state.model.devices[index];
                let problem = (stored < d.acked || stored < seq).then(|| {
                    format!(
                        "stored checkpoint of {}/{} went down: {} then {stored} (acked {seq})",
                        d.user, d.name, d.acked
                    )
                });
                d.acked = d.acked.max(stored);
                d.checkpoint = d.checkpoint.max(stored);
                d.pending_ack = None;
                problem
            };
            if let Some(p) = problem {
                world.violate(step, p);
            }
            true
        }
        Err(error) => {
            world.trace(format!("#{step} ack {seq} failed: {error:?}"));
            if !expected(&error) {
                world.violate(step, format!("ack of {seq} answered {error:?}"));
            }
            world.state().model.devices[index].pending_ack = Some(seq);
            false
        }
    }
}

/// Reads each large group from the device's cursor up to the top the sync
/// reply named, through History. Returns whether it reached every top.
pub(crate) async fn read_large_groups(
    world: &World,
    engine: &Engine,
    step: usize,
    index: usize,
    tops: &[(u64, u64, u64)],
    checkpoint: u64,
    drain: bool,
) -> bool {
    let (user, name) = {
        let state = world.state();
        let d = &state.model.devices[index];
        (d.user, d.name.clone())
    };
    let me = device(user, &name);
    let mut complete = true;
    for &(id, top, joined) in tops {
        let inner = world.store.inner();
        let timeline = timeline_of(inner, id).await;
        let inbox = inbox_of(inner, user).await;
        let points = entry_points(&timeline, &inbox, user);
        let (gaps, reached) = {
            let state = world.state();
            let d = &state.model.devices[index];
            let seen = d.conv_seen.get(&id);
            let reached = points.iter().any(|&(conv_seq, seq)| {
                seq.is_some_and(|s| s <= checkpoint) || seen.is_some_and(|s| s.contains(&conv_seq))
            });
            (!d.gaps.is_empty(), reached)
        };
        if !reached && gaps {
            // Its entry event may have been trimmed before it saw it: a real
            // client resyncs from scratch; this one leaves the group alone.
            continue;
        }
        if !reached {
            let entry = &points;
            let what = format!(
                "sync of {user}/{name} to {checkpoint} lists large group {id} (top {top}) before its entry event ((conv_seq, inbox seq): {entry:?})"
            );
            if CHECK_LARGE_GROUPS_LISTED_ONLY_AFTER_THEIR_ENTRY_EVENT || drain {
                world.violate(step, what);
            } else {
                world.count("large group listed early (item 6)");
                world.trace(format!("#{step} ignored: {what}"));
            }
            complete = false;
            continue;
        }
        for _page in 0..4 {
            let cursor = world.state().model.devices[index]
                .conv_cursor
                .get(&id)
                .copied();
            // A group it has not heard of in its inbox: the event that tells
            // it where to start is still ahead, or was trimmed (then a real
            // client resyncs from scratch; this one gives up on the group).
            // Like the client library: never before the membership began.
            let cursor = cursor.map(|c| c.max(joined));
            let Some(cursor) = cursor else {
                let gaps = !world.state().model.devices[index].gaps.is_empty();
                if drain && !gaps {
                    world.violate(
                        step,
                        format!("{user}/{name} is listed in large group {id} but its inbox never named it"),
                    );
                }
                complete &= gaps;
                break;
            };
            if cursor >= top {
                break;
            }
            let query = HistoryQuery {
                conversation_id: id,
                before: 0,
                after: Some(cursor),
                limit: 3,
            };
            let page = match engine.history(&me, query).await {
                Ok(page) => page,
                Err(error) => {
                    world.trace(format!(
                        "#{step} history {user}/{name} of {id} failed: {error:?}"
                    ));
                    if drain || !expected(&error) {
                        world.violate(
                            step,
                            format!("history of {id} for {user} answered {error:?}"),
                        );
                    }
                    complete = false;
                    break;
                }
            };
            world.count("large-group history page");
            world.trace(format!(
                "#{step} history {user}/{name} of {id} after {cursor}: {:?}",
                page.entries.iter().map(|e| e.conv_seq).collect::<Vec<_>>()
            ));
            let mut problems = Vec::new();
            {
                let mut state = world.state();
                let State { model, .. } = &mut *state;
                let mut last = cursor;
                for entry in &page.entries {
                    if let Err(p) = model.see_timeline(entry, "history") {
                        problems.push(p);
                    }
                    if entry.conv_seq <= last {
                        problems.push(format!(
                            "history of {id} after {cursor} returned conv_seq {} out of order",
                            entry.conv_seq
                        ));
                    }
                    last = entry.conv_seq;
                    if let Err(p) = model.devices[index].see_conversation_entry(entry, "in History")
                    {
                        problems.push(p);
                    }
                }
            }
            for p in problems {
                world.violate(step, p);
            }
            if page.entries.is_empty() {
                break;
            }
        }
        let d = &world.state().model.devices[index];
        let reached = d
            .conv_cursor
            .get(&id)
            .map_or(!d.gaps.is_empty(), |&c| c.max(joined) >= top);
        complete &= reached;
    }
    complete
}

/// Subscribes from the device's position and reads a few notices.
pub(crate) async fn op_subscribe(
    world: Arc<World>,
    engine: Arc<Engine>,
    step: usize,
    user: u64,
    after: u64,
    include_entries: bool,
) {
    let me = device(user, "push");
    let mut feed = match engine.subscribe(&me, after, include_entries).await {
        Ok(feed) => feed,
        Err(error) => {
            world.trace(format!("#{step} subscribe {user} failed: {error:?}"));
            if !expected(&error) {
                world.violate(step, format!("subscribe answered {error:?}"));
            }
            return;
        }
    };
    let mut last = after;
    for _ in 0..3 {
        let notice = match tokio::time::timeout(Duration::from_millis(5), feed.next()).await {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Ok(Some(notice))) => notice,
            Ok(Err(error)) => {
                world.trace(format!("#{step} push {user} failed: {error:?}"));
                if !expected(&error) {
                    world.violate(step, format!("push answered {error:?}"));
                }
                return;
            }
        };
        if !notice.groups.is_empty() || notice.groups_resync {
            // A large group moved: such a notice repeats the inbox's
            // up_to_seq by design (the group is read with History).
            world.count("push groups");
            world.trace(format!(
                "#{step} push {user} groups {:?}",
                notice
                    .groups
                    .iter()
                    .map(|g| (g.conversation_id, g.conv_seq))
                    .collect::<Vec<_>>()
            ));
            if notice.up_to_seq != last || !notice.entries.is_empty() {
                world.violate(
                    step,
                    format!("a group notice of {user} moved the inbox: {notice:?}"),
                );
            }
            continue;
        }
        world.count(if notice.entries.is_empty() {
            "push bare"
        } else {
            "push with entries"
        });
        world.trace(format!(
            "#{step} push {user} up to {}: {:?}",
            notice.up_to_seq,
            seqs(&notice.entries)
        ));
        let mut problems = Vec::new();
        if notice.up_to_seq <= last {
            problems.push(format!(
                "push of {user} went from {last} to {}",
                notice.up_to_seq
            ));
        }
        let mut prev = last;
        for entry in &notice.entries {
            if entry.seq <= prev || entry.seq > notice.up_to_seq {
                problems.push(format!(
                    "push of {user} after {last} up to {} carried seq {}",
                    notice.up_to_seq, entry.seq
                ));
            }
            prev = entry.seq;
        }
        if !notice.entries.is_empty() {
            // Everything the store holds in the announced range (and above
            // the floor) must be in the notice: the range is complete.
            let inner = world.store.inner();
            let floor = inner.inbox_floor(user).await.expect("memory read");
            let held: Vec<u64> = inbox_of(inner, user)
                .await
                .iter()
                .filter(|e| e.seq > last && e.seq <= notice.up_to_seq && e.seq >= floor)
                .map(|e| e.seq)
                .collect();
            let carried = seqs(&notice.entries);
            let missing: Vec<u64> = held
                .iter()
                .filter(|s| !carried.contains(s))
                .copied()
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "push of {user} after {last} up to {} carried {carried:?}, skipping {missing:?}",
                    notice.up_to_seq
                ));
            }
        }
        {
            let mut state = world.state();
            for entry in &notice.entries {
                if let Err(p) = state.model.see_inbox(user, entry, "push") {
                    problems.push(p);
                }
            }
        }
        for p in problems {
            world.violate(step, p);
        }
        last = notice.up_to_seq;
    }
}
