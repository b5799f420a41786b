//! `tl`: the Timeline command line, a thin layer over the client library.

mod args;
mod output;

use anyhow::Context;
use args::*;
use clap::Parser;
use client::{CheckpointFile, Client, entry_json, pb};
use output::{change_json, conversation_json, print_json, send_json};
use std::io::Write;

/// Moves an expired checkpoint to the oldest kept entry when allowed.
fn accept_expired(
    error: client::ClientError,
    resync: bool,
    checkpoint: &mut CheckpointFile,
) -> anyhow::Result<()> {
    match error {
        client::ClientError::CheckpointExpired { oldest_seq, .. } if resync => {
            eprintln!("warning: {error}; continuing from {oldest_seq}");
            checkpoint.save(oldest_seq.saturating_sub(1))?;
            Ok(())
        }
        other => Err(other.into()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ran = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The one place an error is printed; the reason itself never
            // starts with "error".
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(token) = cli.token.as_deref() else {
        anyhow::bail!("no token: pass --token or set TL_TOKEN (mint one with `syncd token`)");
    };
    let options = client::ConnectOptions {
        ca_cert_pem: match &cli.ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read CA certificate {}", path.display()))?,
            ),
            None => None,
        },
        ..Default::default()
    };
    let client = Client::connect_with(&cli.server, token, options).await?;
    match cli.command {
        Command::Conversation(ConversationCommand::Create(args)) => {
            let kind = match args.kind {
                Kind::Direct => pb::ConversationKind::Direct,
                Kind::Group => pb::ConversationKind::Group,
            };
            let conversation = client
                .create_conversation_with_id(kind, args.members, &args.title, args.client_id)
                .await?;
            println!("{}", conversation.conversation_id);
        }
        Command::Conversation(ConversationCommand::Show(args)) => {
            print_json(&conversation_json(
                &client.conversation(args.conversation).await?,
            ))?;
        }
        Command::Conversation(ConversationCommand::AddMembers(args)) => {
            let reply = client.add_members(args.conversation, args.members).await?;
            print_json(&conversation_json(&reply.conversation.unwrap_or_default()))?;
        }
        Command::Conversation(ConversationCommand::RemoveMembers(args)) => {
            let reply = client
                .remove_members(args.conversation, args.members)
                .await?;
            print_json(&conversation_json(&reply.conversation.unwrap_or_default()))?;
        }
        Command::Send(args) => {
            let reply = client
                .send_mentioning(
                    args.conversation,
                    &args.text,
                    args.client_msg_id,
                    &args.mention,
                    args.mention_all,
                )
                .await?;
            print_json(&send_json(&reply))?;
        }
        Command::Append(args) => {
            let reply = client
                .append_with_priority(
                    args.conversation,
                    args.sender,
                    &args.text,
                    args.client_msg_id,
                    args.priority,
                )
                .await?;
            print_json(&send_json(&reply))?;
        }
        Command::Sync(args) => {
            let mut checkpoint = CheckpointFile::open(&args.state)?;
            let mut out = std::io::stdout().lock();
            loop {
                let synced = client
                    .sync_all(&mut checkpoint, |entry| {
                        writeln!(out, "{}", entry_json(entry))?;
                        out.flush()
                    })
                    .await;
                match synced {
                    Ok(_) => break,
                    Err(error) => accept_expired(error, args.resync, &mut checkpoint)?,
                }
            }
        }
        Command::Watch(args) => {
            let mut checkpoint = CheckpointFile::open(&args.state)?;
            loop {
                let watched = client
                    .watch(&mut checkpoint, |entry| {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", entry_json(entry))?;
                        out.flush()
                    })
                    .await;
                if let Err(error) = watched {
                    accept_expired(error, args.resync, &mut checkpoint)?;
                }
            }
        }
        Command::Devices(DevicesCommand::Revoke(args)) => {
            let reply = client
                .revoke_devices(args.user, args.device.as_deref())
                .await?;
            print_json(&serde_json::json!({
                "user_id": reply.user_id,
                "device_id": (!reply.device_id.is_empty()).then_some(&reply.device_id),
                "revoked_before": reply.revoked_before,
            }))?;
        }
        Command::Read(args) => {
            let marked = client.mark_read(args.conversation, args.through).await?;
            print_json(&serde_json::json!({
                "conversation_id": marked.conversation_id,
                "read_through": marked.read_through,
                "unread": marked.unread,
                "mentions": marked.mentions,
                "seq": marked.seq,
            }))?;
        }
        Command::Recall(args) => {
            let reply = client
                .recall_message(args.conversation, args.conv_seq, args.op_id)
                .await?;
            print_json(&change_json(&reply))?;
        }
        Command::Edit(args) => {
            let target = args.target;
            let reply = client
                .edit_message(
                    target.conversation,
                    target.conv_seq,
                    &args.text,
                    target.op_id,
                )
                .await?;
            print_json(&change_json(&reply))?;
        }
        Command::Delete(args) => {
            let target = args.target;
            let reply = client
                .delete_message(
                    target.conversation,
                    target.conv_seq,
                    args.for_me,
                    target.op_id,
                )
                .await?;
            print_json(&change_json(&reply))?;
        }
        Command::Clear(args) => {
            let reply = client
                .clear_history(args.conversation, args.through, args.op_id)
                .await?;
            print_json(&change_json(&reply))?;
        }
        Command::Members(args) => {
            let page = client
                .list_members(args.conversation, args.cursor, args.limit)
                .await?;
            print_json(&serde_json::json!({
                "members": page.members,
                "member_count": page.member_count,
                "next_cursor": page.next_after,
            }))?;
        }
        Command::Receipts(args) => {
            if args.after_member.is_none() && args.limit.is_none() {
                let receipts = client
                    .read_receipts(args.conversation, args.conv_seq)
                    .await?;
                print_json(&serde_json::json!({
                    "read_count": receipts.read_count,
                    "member_count": receipts.member_count,
                    "read_by": receipts.read_by,
                }))?;
            } else {
                let page = client
                    .read_receipts_page(
                        args.conversation,
                        args.conv_seq,
                        args.after_member.unwrap_or(0),
                        args.limit.unwrap_or(0),
                    )
                    .await?;
                print_json(&serde_json::json!({
                    "read_count": page.read_count,
                    "member_count": page.member_count,
                    "read_by": page.read_by,
                    "next_cursor": page.next_after_member,
                }))?;
            }
        }
        Command::Search(args) => {
            let order = match args.order {
                SearchOrderArg::Newest => pb::SearchOrder::NewestFirst,
                SearchOrderArg::Relevance => pb::SearchOrder::Relevance,
            };
            let reply = client
                .search(pb::SearchRequest {
                    query: args.query,
                    conversation_id: args.conversation,
                    sender_id: args.sender,
                    sent_from_ms: args.from_ms,
                    sent_before_ms: args.before_ms,
                    order: order as i32,
                    limit: args.limit,
                    cursor: args.cursor,
                })
                .await?;
            for hit in &reply.hits {
                print_json(&client::search_hit_json(hit))?;
            }
            print_json(&serde_json::json!({
                "next_cursor": reply.next_cursor,
                "timed_out": reply.timed_out,
                "lagging_events": reply.lagging_events,
                "catching_up": reply.catching_up,
            }))?;
        }
        Command::Conversations(args) => {
            let page = client
                .list_conversations(args.limit, &args.cursor, "")
                .await?;
            for conversation in &page.conversations {
                print_json(&client::conversation_state_json(conversation))?;
            }
            print_json(&serde_json::json!({
                "total_unread": page.total_unread,
                "total_mentions": page.total_mentions,
                "cursor": page.cursor,
                "as_of_seq": page.as_of_seq,
            }))?;
        }
        Command::History(args) => {
            let reply = client
                .history(
                    args.conversation,
                    args.before.unwrap_or(0),
                    args.after,
                    args.limit,
                )
                .await?;
            for entry in &reply.entries {
                print_json(&entry_json(entry))?;
            }
        }
    }
    Ok(())
}
