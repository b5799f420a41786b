//! The command line as clap parses it: every subcommand and its flags.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tl",
    version,
    about = "Talk to a Timeline server: send, sync, watch, page history"
)]
pub(crate) struct Cli {
    /// Server address.
    #[arg(
        long,
        env = "TL_SERVER",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    pub(crate) server: String,
    /// Device or service token (see `syncd token`).
    #[arg(long, env = "TL_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// For an https:// server: trust certificates signed by this CA (PEM)
    /// instead of the system's roots.
    #[arg(long, env = "TL_CA_CERT", global = true)]
    pub(crate) ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct TargetArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    #[arg(long)]
    pub(crate) conv_seq: u64,
    /// A UUID naming this operation: repeating the command with it changes
    /// nothing more (default: a new one).
    #[arg(long)]
    pub(crate) op_id: Option<uuid::Uuid>,
}

#[derive(Args)]
pub(crate) struct EditArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[arg(long)]
    pub(crate) text: String,
}

#[derive(Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Hide it from your own devices only.
    #[arg(long)]
    pub(crate) for_me: bool,
}

#[derive(Args)]
pub(crate) struct ClearArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    #[arg(long)]
    pub(crate) through: Option<u64>,
    #[arg(long)]
    pub(crate) op_id: Option<uuid::Uuid>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SearchOrderArg {
    Newest,
    Relevance,
}

#[derive(Args)]
pub(crate) struct SearchArgs {
    /// Words and "quoted phrases", all required.
    #[arg(long)]
    pub(crate) query: String,
    /// Only this conversation.
    #[arg(long)]
    pub(crate) conversation: Option<u64>,
    /// Only messages from this sender.
    #[arg(long)]
    pub(crate) sender: Option<u64>,
    /// Only messages sent at or after this time (ms since the epoch).
    #[arg(long)]
    pub(crate) from_ms: Option<i64>,
    /// Only messages sent before this time (ms since the epoch).
    #[arg(long)]
    pub(crate) before_ms: Option<i64>,
    #[arg(long, value_enum, default_value = "newest")]
    pub(crate) order: SearchOrderArg,
    /// Hits per page (at most 100).
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: u32,
    /// The cursor a previous page printed.
    #[arg(long, default_value = "")]
    pub(crate) cursor: String,
}

#[derive(Args)]
pub(crate) struct ReceiptsArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    #[arg(long)]
    pub(crate) conv_seq: u64,
    /// One page only: the members after this user id (a previous page's
    /// next_cursor). Without it or --limit, every page is summed.
    #[arg(long)]
    pub(crate) after_member: Option<u64>,
    /// One page only, of at most this many members (the server caps it at
    /// 1,000).
    #[arg(long)]
    pub(crate) limit: Option<u32>,
}

#[derive(Args)]
pub(crate) struct ListMembersArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    /// Members per page (the server caps it at 1,000; 0: its default, 500).
    #[arg(long, default_value_t = 0)]
    pub(crate) limit: u32,
    /// The cursor printed by the previous page (0: the first page).
    #[arg(long, default_value_t = 0)]
    pub(crate) cursor: u64,
}

#[derive(Args)]
pub(crate) struct ReadArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    /// Read through this conv_seq (default: the newest).
    #[arg(long)]
    pub(crate) through: Option<u64>,
}

#[derive(Args)]
pub(crate) struct ConversationsArgs {
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
    /// The cursor printed by the previous page.
    #[arg(long, default_value = "")]
    pub(crate) cursor: String,
}

#[derive(Subcommand)]
pub(crate) enum DevicesCommand {
    /// Refuse the tokens of a device, or of every device of a user, issued
    /// up to now (a new login works); prints the result as JSON.
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub(crate) struct RevokeArgs {
    /// The user whose device tokens are revoked.
    #[arg(long)]
    pub(crate) user: u64,
    /// The device; omitted: every device of the user (logout everywhere).
    #[arg(long)]
    pub(crate) device: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum ConversationCommand {
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
pub(crate) enum Kind {
    Direct,
    Group,
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Comma-separated user ids; with a device token you are added too.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) members: Vec<u64>,
    #[arg(long, value_enum, default_value = "group")]
    pub(crate) kind: Kind,
    #[arg(long, default_value = "")]
    pub(crate) title: String,
    /// UUID making the creation idempotent: running the command again with
    /// it prints the same conversation (generated when omitted).
    #[arg(long)]
    pub(crate) client_id: Option<uuid::Uuid>,
}

#[derive(Args)]
pub(crate) struct ConversationArg {
    #[arg(long)]
    pub(crate) conversation: u64,
}

#[derive(Args)]
pub(crate) struct MembersArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) members: Vec<u64>,
}

#[derive(Args)]
pub(crate) struct SendArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    #[arg(long)]
    pub(crate) text: String,
    /// UUID making the send idempotent (generated when omitted).
    #[arg(long)]
    pub(crate) client_msg_id: Option<uuid::Uuid>,
    /// Comma-separated user ids to mention.
    #[arg(long, value_delimiter = ',')]
    pub(crate) mention: Vec<u64>,
    /// Mention every member (groups only).
    #[arg(long)]
    pub(crate) mention_all: bool,
}

#[derive(Args)]
pub(crate) struct AppendArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    /// The user the message is from; 0 for a system message.
    #[arg(long, default_value_t = 0)]
    pub(crate) sender: u64,
    #[arg(long)]
    pub(crate) text: String,
    #[arg(long)]
    pub(crate) client_msg_id: Option<uuid::Uuid>,
    /// High priority (announcements): pushed to a large group's watching
    /// devices ahead of ordinary messages, never merged away.
    #[arg(long)]
    pub(crate) priority: bool,
}

#[derive(Args)]
pub(crate) struct SyncArgs {
    /// File holding this device's checkpoint (created when missing).
    #[arg(long)]
    pub(crate) state: PathBuf,
    /// When retention trimmed entries after the checkpoint, continue from
    /// the oldest kept entry (after a warning) instead of failing.
    #[arg(long)]
    pub(crate) resync: bool,
}

#[derive(Args)]
pub(crate) struct HistoryArgs {
    #[arg(long)]
    pub(crate) conversation: u64,
    /// Entries before this conv_seq (default: the newest).
    #[arg(long, conflicts_with = "after")]
    pub(crate) before: Option<u64>,
    /// Entries after this conv_seq, oldest first.
    #[arg(long)]
    pub(crate) after: Option<u64>,
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
}
