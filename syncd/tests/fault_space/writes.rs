//! The operations that change things: sends (keyed, unkeyed, retried),
//! conversation creation, membership changes and retention passes, each
//! checking its reply against the model as it arrives.

use super::*;

pub(crate) async fn op_send(
    world: Arc<World>,
    engine: Arc<Engine>,
    step: usize,
    send: KeyedSend,
    keyed: bool,
) {
    let command = SendCommand {
        conversation_id: send.conversation_id,
        text: send.text.clone(),
        client_msg_id: keyed.then_some(send.id),
        sender_id: None,
        mentions: Default::default(),
        priority: false,
    };
    let result = engine.send(device(send.user, "s"), command).await;
    let mut state = world.state();
    match result {
        Ok(outcome) => {
            *state
                .counts
                .entry(if outcome.duplicate {
                    "send ok (duplicate)"
                } else {
                    "send ok"
                })
                .or_insert(0) += 1;
            let receipt = outcome.receipt;
            state.trace.push(format!(
                "#{step} send done: conv_seq {} msg {} duplicate {}",
                receipt.conv_seq, receipt.msg_id, outcome.duplicate
            ));
            let mut problem = None;
            if receipt.conversation_id != send.conversation_id {
                problem = Some(format!(
                    "receipt names conversation {}",
                    receipt.conversation_id
                ));
            }
            if keyed
                && state
                    .model
                    .texts
                    .get(&(send.user, send.id))
                    .is_some_and(|t| *t != send.text)
            {
                *state
                    .counts
                    .entry("retry with another text answered ok (item 12)")
                    .or_insert(0) += 1;
                if CHECK_RETRY_WITH_OTHER_TEXT_IS_REFUSED {
                    problem = Some(format!(
                        "retry of {} with another text answered ok",
                        send.id
                    ));
                }
            }
            if keyed {
                let key = (send.user, send.id);
                let got = (receipt.conv_seq, receipt.msg_id);
                match state.model.receipts.get(&key) {
                    Some(&first) if first != got => {
                        problem = Some(format!(
                            "retry of {} answered {got:?}, the first Ok was {first:?}",
                            send.id
                        ));
                    }
                    Some(_) if !outcome.duplicate => {
                        problem = Some(format!("{} written twice (not a duplicate)", send.id));
                    }
                    Some(_) => {}
                    None => {
                        state.model.receipts.insert(key, got);
                        state.model.texts.insert(key, send.text.clone());
                        state.model.unanswered.retain(|s| s.id != send.id);
                        state.model.answered.push(send.clone());
                    }
                }
            }
            state.model.acked.push(Acked {
                step,
                conversation_id: receipt.conversation_id,
                conv_seq: receipt.conv_seq,
                msg_id: receipt.msg_id,
            });
            drop(state);
            if let Some(problem) = problem {
                world.violate(step, problem);
            }
        }
        Err(error) => {
            *state.counts.entry("send failed").or_insert(0) += 1;
            state.trace.push(format!("#{step} send failed: {error:?}"));
            // The answer item 12 asks for.
            let other_text = keyed
                && matches!(error, SyncdError::InvalidArgument(_))
                && state
                    .model
                    .texts
                    .get(&(send.user, send.id))
                    .is_some_and(|t| *t != send.text);
            drop(state);
            if !expected(&error) && !other_text {
                world.violate(step, format!("send answered {error:?}"));
            }
        }
    }
}

pub(crate) async fn op_create(
    world: Arc<World>,
    engine: Arc<Engine>,
    step: usize,
    principal: Principal,
    kind: ConversationKind,
    members: Vec<u64>,
) {
    let request = NewConversation {
        kind,
        members,
        title: String::new(),
        client_request_id: None,
    };
    let result = engine.create_conversation(principal, request).await;
    match result {
        Ok(record) => {
            let record = with_members(world.store.inner(), record).await;
            world.trace(format!(
                "#{step} created {} members {:?} read_fanout {}",
                record.conversation_id, record.members, record.read_fanout
            ));
            let mut state = world.state();
            state.model.conversations.push(KnownConversation {
                id: record.conversation_id,
                direct: kind == ConversationKind::Direct,
                members: record.members,
            });
        }
        Err(error) => {
            world.trace(format!("#{step} create failed: {error:?}"));
            if !expected(&error) {
                world.violate(step, format!("create answered {error:?}"));
            }
        }
    }
}

pub(crate) async fn op_change(
    world: Arc<World>,
    engine: Arc<Engine>,
    step: usize,
    id: u64,
    members: Vec<u64>,
    change: MembershipChange,
) {
    let result = engine.change_members(service(), id, members, change).await;
    match result {
        Ok((record, conv_seq)) => {
            let record = with_members(world.store.inner(), record).await;
            world.trace(format!(
                "#{step} members of {id} now {:?} (conv_seq {conv_seq}, read_fanout {})",
                record.members, record.read_fanout
            ));
            let mut state = world.state();
            if let Some(known) = state.model.conversations.iter_mut().find(|c| c.id == id) {
                known.members = record.members;
            }
        }
        Err(error) => {
            world.trace(format!("#{step} change failed: {error:?}"));
            if !expected(&error) {
                world.violate(step, format!("membership change answered {error:?}"));
            }
        }
    }
}

pub(crate) async fn op_trim(world: Arc<World>, engine: Arc<Engine>, step: usize, user: u64) {
    let result = engine.trim_user(user).await;
    match result {
        Ok(floor) => {
            world.count(if floor > 0 {
                "trim with a floor"
            } else {
                "trim"
            });
            world.trace(format!("#{step} trim {user}: floor {floor}"));
            let inbox = inbox_of(world.store.inner(), user).await;
            let keep = world.plan.keep_entries;
            let kept = inbox.iter().filter(|e| e.seq >= floor).count() as u64;
            let mut problems = Vec::new();
            if floor > 0 && keep > 0 && kept < keep {
                problems.push(format!(
                    "trim of {user} to floor {floor} kept {kept} entries, the policy keeps {keep}: {:?}",
                    seqs(&inbox)
                ));
            }
            let previous = {
                let mut state = world.state();
                let stored = state.model.floors.entry(user).or_insert(0);
                let previous = *stored;
                *stored = previous.max(floor);
                previous
            };
            if floor < previous {
                problems.push(format!(
                    "floor of {user} went down: {previous} then {floor}"
                ));
            }
            for problem in problems {
                world.violate(step, problem);
            }
        }
        Err(error) => {
            world.trace(format!("#{step} trim {user} failed: {error:?}"));
            if !expected(&error) {
                world.violate(step, format!("trim answered {error:?}"));
            }
        }
    }
}
