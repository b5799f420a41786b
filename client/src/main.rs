//! `tl`: the Timeline command line, a thin layer over the client library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{CheckpointFile, Client, entry_json, pb};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tl",
    version,
    about = "Talk to a Timeline server: send, sync, watch, page history"
)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        env = "TL_SERVER",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    server: String,
    /// Device or service token (see `syncd token`).
    #[arg(long, env = "TL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// For an https:// server: trust certificates signed by this CA (PEM)
    /// instead of the system's roots.
    #[arg(long, env = "TL_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, inspect and change conversations.
    #[command(subcommand)]
    Conversation(ConversationCommand),
    /// Send a message; prints the result as JSON.
    Send(SendArgs),
    /// Append a message as a backend service (service token).
    Append(AppendArgs),
    /// Print new inbox entries as JSON lines, then save and acknowledge the checkpoint.
    Sync(SyncArgs),
    /// Stay connected and print inbox entries as they arrive (JSON lines).
    Watch(SyncArgs),
    /// Print a page of a conversation's history as JSON lines (oldest first).
    History(HistoryArgs),
    /// Manage users' devices (service token).
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Mark a conversation read (through the newest entry by default).
    Read(ReadArgs),
    /// Print the conversation list, most recent activity first (JSON lines,
    /// then a line with the totals and the next page's cursor).
    Conversations(ConversationsArgs),
    /// Print how many and which members have read a message.
    Receipts(ReceiptsArgs),
    /// Print a page of a conversation's members as JSON: the ids, the
    /// member count and the next page's cursor (0: the last page).
    Members(ListMembersArgs),
    /// Withdraw your message for everyone (within the server's recall
    /// window; a service token: any message); prints the event as JSON.
    Recall(TargetArgs),
    /// Replace your message's text (within the edit window); prints the
    /// event as JSON (its conv_seq is the new version).
    Edit(EditArgs),
    /// Delete a message: for your own devices only (--for-me), or for
    /// everyone (a service token).
    Delete(DeleteArgs),
    /// Hide a conversation's history through a conv_seq (default: all of
    /// it) from your own devices, and mark it read.
    Clear(ClearArgs),
    /// Search message history: hits as JSON lines, then a line with the
    /// next page's cursor and how far the index lags.
    Search(SearchArgs),
}

#[derive(Args)]
struct TargetArgs {
    #[arg(long)]
    conversation: u64,
    #[arg(long)]
    conv_seq: u64,
    /// A UUID naming this operation: repeating the command with it changes
    /// nothing more (default: a new one).
    #[arg(long)]
    op_id: Option<uuid::Uuid>,
}

#[derive(Args)]
struct EditArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long)]
    text: String,
}

#[derive(Args)]
struct DeleteArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Hide it from your own devices only.
    #[arg(long)]
    for_me: bool,
}

#[derive(Args)]
struct ClearArgs {
    #[arg(long)]
    conversation: u64,
    #[arg(long)]
    through: Option<u64>,
    #[arg(long)]
    op_id: Option<uuid::Uuid>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SearchOrderArg {
    Newest,
    Relevance,
}

#[derive(Args)]
struct SearchArgs {
    /// Words and "quoted phrases", all required.
    #[arg(long)]
    query: String,
    /// Only this conversation.
    #[arg(long)]
    conversation: Option<u64>,
    /// Only messages from this sender.
    #[arg(long)]
    sender: Option<u64>,
    /// Only messages sent at or after this time (ms since the epoch).
    #[arg(long)]
    from_ms: Option<i64>,
    /// Only messages sent before this time (ms since the epoch).
    #[arg(long)]
    before_ms: Option<i64>,
    #[arg(long, value_enum, default_value = "newest")]
    order: SearchOrderArg,
    /// Hits per page (at most 100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// The cursor a previous page printed.
    #[arg(long, default_value = "")]
    cursor: String,
}

#[derive(Args)]
struct ReceiptsArgs {
    #[arg(long)]
    conversation: u64,
    #[arg(long)]
    conv_seq: u64,
    /// One page only: the members after this user id (a previous page's
    /// next_cursor). Without it or --limit, every page is summed.
    #[arg(long)]
    after_member: Option<u64>,
    /// One page only, of at most this many members (the server caps it at
    /// 1,000).
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Args)]
struct ListMembersArgs {
    #[arg(long)]
    conversation: u64,
    /// Members per page (the server caps it at 1,000; 0: its default, 500).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// The cursor printed by the previous page (0: the first page).
    #[arg(long, default_value_t = 0)]
    cursor: u64,
}

#[derive(Args)]
struct ReadArgs {
    #[arg(long)]
    conversation: u64,
    /// Read through this conv_seq (default: the newest).
    #[arg(long)]
    through: Option<u64>,
}

#[derive(Args)]
struct ConversationsArgs {
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// The cursor printed by the previous page.
    #[arg(long, default_value = "")]
    cursor: String,
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Refuse the tokens of a device, or of every device of a user, issued
    /// up to now (a new login works); prints the result as JSON.
    Revoke(RevokeArgs),
}

#[derive(Args)]
struct RevokeArgs {
    /// The user whose device tokens are revoked.
    #[arg(long)]
    user: u64,
    /// The device; omitted: every device of the user (logout everywhere).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Subcommand)]
enum ConversationCommand {
    /// Create a conversation; prints its id.
    Create(CreateArgs),
    /// Print a conversation as JSON.
    Show(ConversationArg),
    /// Add members (service token).
    AddMembers(MembersArgs),
    /// Remove members (service token).
    RemoveMembers(MembersArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Direct,
    Group,
}

#[derive(Args)]
struct CreateArgs {
    /// Comma-separated user ids; with a device token you are added too.
    #[arg(long, value_delimiter = ',', required = true)]
    members: Vec<u64>,
    #[arg(long, value_enum, default_value = "group")]
    kind: Kind,
    #[arg(long, default_value = "")]
    title: String,
    /// UUID making the creation idempotent: running the command again with
    /// it prints the same conversation (generated when omitted).
    #[arg(long)]
    client_id: Option<uuid::Uuid>,
}

#[derive(Args)]
struct ConversationArg {
    #[arg(long)]
    conversation: u64,
}

#[derive(Args)]
struct MembersArgs {
    #[arg(long)]
    conversation: u64,
    #[arg(long, value_delimiter = ',', required = true)]
    members: Vec<u64>,
}

#[derive(Args)]
struct SendArgs {
    #[arg(long)]
    conversation: u64,
    #[arg(long)]
    text: String,
    /// UUID making the send idempotent (generated when omitted).
    #[arg(long)]
    client_msg_id: Option<uuid::Uuid>,
    /// Comma-separated user ids to mention.
    #[arg(long, value_delimiter = ',')]
    mention: Vec<u64>,
    /// Mention every member (groups only).
    #[arg(long)]
    mention_all: bool,
}

#[derive(Args)]
struct AppendArgs {
    #[arg(long)]
    conversation: u64,
    /// The user the message is from; 0 for a system message.
    #[arg(long, default_value_t = 0)]
    sender: u64,
    #[arg(long)]
    text: String,
    #[arg(long)]
    client_msg_id: Option<uuid::Uuid>,
    /// High priority (announcements): pushed to a large group's watching
    /// devices ahead of ordinary messages, never merged away.
    #[arg(long)]
    priority: bool,
}

#[derive(Args)]
struct SyncArgs {
    /// File holding this device's checkpoint (created when missing).
    #[arg(long)]
    state: PathBuf,
    /// When retention trimmed entries after the checkpoint, continue from
    /// the oldest kept entry (after a warning) instead of failing.
    #[arg(long)]
    resync: bool,
}

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

#[derive(Args)]
struct HistoryArgs {
    #[arg(long)]
    conversation: u64,
    /// Entries before this conv_seq (default: the newest).
    #[arg(long, conflicts_with = "after")]
    before: Option<u64>,
    /// Entries after this conv_seq, oldest first.
    #[arg(long)]
    after: Option<u64>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

fn conversation_json(c: &pb::Conversation) -> serde_json::Value {
    let kind = match pb::ConversationKind::try_from(c.kind) {
        Ok(pb::ConversationKind::Direct) => "direct",
        Ok(pb::ConversationKind::Group) => "group",
        _ => "unknown",
    };
    serde_json::json!({
        "conversation_id": c.conversation_id,
        "kind": kind,
        "members": c.members,
        "member_count": c.member_count,
        "read_fanout": c.read_fanout,
        "title": c.title,
        "created_at_ms": c.created_at_ms,
    })
}

fn send_json(r: &pb::SendReply) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": r.conversation_id,
        "conv_seq": r.conv_seq,
        "msg_id": r.msg_id,
        "client_msg_id": r.client_msg_id,
        "sent_at_ms": r.sent_at_ms,
        "duplicate": r.duplicate,
    })
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

fn change_json(reply: &client::pb::MessageChangeReply) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": reply.conversation_id,
        "conv_seq": reply.conv_seq,
        "msg_id": reply.msg_id,
        "sent_at_ms": reply.sent_at_ms,
        "duplicate": reply.duplicate,
    })
}
