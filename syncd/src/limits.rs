//! Named bounds on everything a client can make the server hold or do.

/// Largest user id: CQL's bigint is signed, so a larger one has no faithful
/// key on ScyllaDB (all of them would share one inbox). Refused on every
/// backend, so a deployment can move between them.
pub const MAX_USER_ID: u64 = i64::MAX as u64;
/// Largest message text, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Most members one message may mention by name. In a large group each
/// one gets an inbox copy, so this bounds what one message writes there.
pub const MAX_MENTIONS: usize = 100;
/// Edits one message may have; a recall rewrites every one of them, so
/// this bounds what a recall writes too.
pub const MAX_EDITS_PER_MESSAGE: usize = 20;
/// Bytes of replaced texts a message keeps as its edit history (the
/// oldest versions go first).
pub const MAX_EDIT_HISTORY_BYTES: usize = 64 * 1024;
/// Messages one user may hide in one conversation one by one (delete for
/// me); clearing the history hides everything up to a point at once.
pub const MAX_HIDDEN_PER_CONVERSATION: usize = 1_000;
/// Largest conversation title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;
/// Largest encoded gRPC request the server decodes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest encoded gRPC reply (a full sync page of maximal messages fits).
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Members of one conversation. Past the large-group threshold a message
/// costs nothing per member and the members are paged in the store's
/// member table (the record keeps a count), so this bounds the table and
/// a full listing, not the cost of a send or of a membership change.
pub const MAX_CONVERSATION_MEMBERS: usize = 100_000;
/// Members named in one create/add/remove call: what one membership event
/// writes (inbox copies, index and member-table rows) and holds.
pub const MAX_MEMBERS_PER_CALL: usize = 1_000;
/// Conversations one user may be a member of at once. A user's read state
/// (every conversation list, every sync with counts) folds a row per
/// conversation, and any device may create a conversation naming anyone:
/// without this, others could make each of a user's calls as costly as
/// they liked. A join past it is refused; a removal frees a place.
pub const MAX_CONVERSATIONS_PER_USER: usize = 10_000;
/// Members whose conversations one create or add counts at once.
pub const ADMISSION_COUNTS_IN_FLIGHT: usize = 16;
/// ListMembers page size when the request leaves it at 0, and the cap.
pub const DEFAULT_MEMBERS_LIMIT: usize = 500;
pub const MAX_MEMBERS_LIMIT: usize = 1_000;
/// Members one GetReadReceipts page covers when the request leaves it at
/// 0, and the cap: each costs one point lookup of a reader mark.
pub const DEFAULT_RECEIPTS_LIMIT: usize = 1_000;
pub const MAX_RECEIPTS_LIMIT: usize = 1_000;
/// Sync page size when the request leaves it at 0, and the cap.
pub const DEFAULT_SYNC_LIMIT: usize = 100;
pub const MAX_SYNC_LIMIT: usize = 1_000;
/// CatchUp streams open at once per node (in a cluster, at the writer, so
/// for the whole cluster). Each holds at most three pages of at most
/// `paging::MAX_PAGE_BYTES`: the one being sent, `CATCH_UP_READ_AHEAD`
/// queued, and one read and waiting for room; so at most about 1.1 GiB
/// for all of them with the largest pages (pages of small messages are a
/// few hundred KiB).
pub const MAX_CATCH_UPS: usize = 128;
/// Catch-up streams one user may hold open at once (a few devices coming
/// back together); past it they page with Sync, and the node's slots stay
/// for everyone else.
pub const MAX_CATCH_UPS_PER_USER: usize = 4;
pub const CATCH_UP_READ_AHEAD: usize = 1;
/// Replies of one CatchUp call (a million entries at the largest pages);
/// the last then says has_more and the device calls again.
pub const MAX_CATCH_UP_REPLIES: usize = 1_000;
/// History page size when the request leaves it at 0, and the cap.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
pub const MAX_HISTORY_LIMIT: usize = 500;
/// Client input quoted back in an error message, in bytes: enough to
/// recognise it, never a whole oversized field echoed to the caller and
/// into logs.
pub const MAX_QUOTED_BYTES: usize = 64;
/// Device and service names: length in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Sends being processed at once; more wait for a slot.
pub const MAX_INFLIGHT_SENDS: usize = 4_096;
/// Open TCP connections; further connections wait to be accepted.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Concurrent HTTP/2 streams (calls) per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Open Subscribe streams, in total and per user.
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
pub const MAX_SUBSCRIPTIONS_PER_USER: usize = 32;
/// Notices queued per subscriber before newer ones are coalesced into the
/// last one (the subscriber's queue never grows past this).
pub const SUBSCRIBER_QUEUE: usize = 8;
/// How long a subscriber's queue may stay full before it is disconnected
/// with RESOURCE_EXHAUSTED (configurable per node).
pub const DEFAULT_SUBSCRIBER_STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Large groups whose newest `conv_seq` one Sync reads at once: the reads
/// overlap (a user in hundreds of large groups would otherwise wait for
/// hundreds of round trips in a row) without one Sync taking over the
/// store's connections.
pub const LARGE_GROUP_READS_IN_FLIGHT: usize = 16;
/// How often stores that do not expire idempotency receipts by themselves
/// delete the ones past `timeline_store::RECEIPT_RETENTION` (reads already
/// ignore them; this only reclaims the space, so hourly is plenty).
pub const RECEIPT_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Inboxes remembered for the next retention pass.
pub const MAX_TRIM_CANDIDATES: usize = 100_000;
/// How often retention trims the inboxes written since the last pass.
pub const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Entries read per store call while retention walks an inbox (their
/// seqs and times only, not their payloads).
pub const RETENTION_SCAN_PAGE: usize = 1_000;
/// Entries retention walks per inbox per pass; an inbox with more is
/// trimmed conservatively (never below what the policy keeps) and walked
/// again on the next pass.
pub const RETENTION_SCAN_MAX: usize = 100_000;
/// Entries deleted per store call while trimming.
pub const RETENTION_TRIM_BATCH: usize = 10_000;
/// Entries pushed inline per notice; a subscriber further behind than this
/// gets a bare notice and pulls with Sync.
pub const MAX_PUSH_ENTRIES: usize = 64;
/// The newest inbox entries kept in memory per subscribed user, so a feed
/// that keeps up pushes them without reading the store: at most this many
/// and this many bytes per user, and [`RECENT_PUSH_BYTES`] for all users
/// together (past it a user's are dropped and its feeds read the store).
pub const RECENT_PUSH_ENTRIES_PER_USER: usize = 32;
pub const RECENT_PUSH_BYTES_PER_USER: usize = 64 * 1024;
pub const RECENT_PUSH_BYTES: usize = 64 * 1024 * 1024;
/// Large-group notices per pushed notice (about 20 bytes each encoded).
pub const MAX_GROUP_NOTICES: usize = 64;
/// Large groups whose ordinary notices one stream holds while its device
/// lags (merged per group); past it they are dropped for one
/// `groups_resync` and the device pulls.
pub const MAX_PENDING_GROUP_TOPS: usize = 256;
/// Priority notices of services one stream holds while its device lags;
/// they are never merged, and dropped (for `groups_resync`) only past this.
pub const MAX_PENDING_PRIORITY: usize = 256;
/// Notices of named mentions one stream holds beside them: a share of its
/// own, so mentions (which any member may send) never push a service's
/// notice out. Past it the oldest becomes its group's ordinary notice,
/// which names a conv_seq at or above it.
pub const MAX_PENDING_MENTIONS: usize = 64;
/// Priority messages (a service's, or naming members) queued per group for
/// one pass of the pusher; past it the rest are not queued and the group's
/// online subscribers are told to resync, so a pass costs at most this many
/// messages per group however slow the passes get.
pub const MAX_QUEUED_PRIORITY: usize = 256;
/// Priority messages of one group held until the group's safe top reaches
/// them (an earlier event still in flight); past it the oldest are dropped
/// from the priority lane (counted as degraded): the group's ordinary
/// notice, sent once it is readable through them, names a conv_seq at or
/// above them.
pub const MAX_HELD_PRIORITY: usize = 1_024;
/// Large groups one Subscribe stream is pushed notices for. A join past it
/// is not pushed: the stream gets a `groups_resync`, and a device whose
/// Sync lists more large groups than this polls Sync for them.
pub const MAX_PUSHED_GROUPS_PER_STREAM: usize = 1_000;
/// Subscribers the pusher visits before yielding to other tasks, so a
/// group with many online members never holds a worker thread for long.
pub const GROUP_PUSH_YIELD_EVERY: usize = 1_024;
/// Conversation records cached in memory, counted in member slots (8 bytes
/// each): about 80 MB at the limit.
pub const CACHED_CONVERSATION_MEMBERS: u64 = 10_000_000;
/// Large groups' member-table answers cached, (conversation, user) each:
/// about 40 MB at the limit.
pub const CACHED_MEMBER_ANSWERS: u64 = 262_144;
/// Bytes of events being committed at once, counted as text bytes times
/// (1 + inbox copies) plus [`COMMIT_BYTES_PER_COPY`] per copy: a store that
/// keeps one whole entry per inbox row holds about that much for an event
/// until it is durable (the embedded store puts a whole group of them into
/// one batch). 32 members sending 8 messages of 64 KiB to a 500-member
/// group at once were 8 GiB of copies in flight without this; with it,
/// about 8 such events are and the rest wait.
pub const MAX_INFLIGHT_COMMIT_BYTES: usize = 256 * 1024 * 1024;
/// One user's events hold at most this fraction of the commit budget
/// (32 MiB of 256 MiB) while not yet stored: past it their next event is
/// refused at once (UNAVAILABLE, retried by clients), so one member's flood of heavy
/// sends cannot make every other user's sends wait out the admission
/// limit. A user with nothing in flight may always take one event.
pub const COMMIT_BUDGET_SHARES_PER_USER: usize = 8;
/// Bytes one event may cost by that count. A 64 KiB text to the largest
/// write-fanout group of the default threshold (500 members) costs 32 MiB;
/// larger texts to larger write-fanout groups (a node configured with a
/// higher threshold) are refused with INVALID_ARGUMENT naming the largest
/// text that group takes.
pub const MAX_EVENT_COMMIT_BYTES: usize = 64 * 1024 * 1024;
/// What an inbox copy costs besides its text: keys, ids and encoding.
pub const COMMIT_BYTES_PER_COPY: usize = 128;
/// Longest a send or membership change waits for a lock (a retried send's
/// idempotency key, a conversation's membership) or for commit bytes before
/// answering UNAVAILABLE: what holds them may be an event stuck in the
/// background while the store fails, and a waiting send holds one of the
/// server's send slots.
pub const MAX_ADMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Events finished in the background at once, after the store failed them
/// in a way that may have written part of them. Each keeps its idempotency
/// key, its seqs in the horizon and its commit bytes until it lands; when
/// all are taken the store has been failing for a while, and further events
/// are refused with UNAVAILABLE before they allocate anything.
pub const MAX_BACKGROUND_FINISHERS: usize = 256;
/// Groups larger than this switch to read fanout (configurable per node).
pub const DEFAULT_LARGE_GROUP_THRESHOLD: usize = 500;
/// The highest `--large-group-threshold` a node takes: a write-fanout
/// group's record lists every member and each message writes a copy per
/// member, so past this a group costs per message what read fanout exists
/// to avoid (and the switch to read fanout writes that many rows at once).
pub const MAX_LARGE_GROUP_THRESHOLD: usize = 10_000;

/// A requested page size: 0 asks for the default, anything above `max` is
/// cut to `max`.
pub fn clamp_limit(requested: usize, default: usize, max: usize) -> usize {
    if requested == 0 {
        default
    } else {
        requested.min(max)
    }
}
/// Conversations the search feed remembers as having news for the index;
/// past this it forgets new ones and the indexer scans the store instead.
pub const SEARCH_PENDING_CONVERSATIONS: usize = 100_000;
/// Conversations one index commit may touch (each adds a checkpoint to
/// the commit); the indexer takes them in turn, the longest waiting first.
pub const SEARCH_BATCH_CONVERSATIONS: usize = 4_096;
/// The shortest time between two index commits fed by hints (like a
/// search engine's refresh interval): under load, what is sent meanwhile
/// is indexed by the next commit, whose fixed cost it shares. A message
/// becomes searchable at most about this much later than without it.
pub const SEARCH_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Timeline entries gathered for one index commit: a commit's fixed cost
/// is shared by up to this many, and under load the lag stays about one
/// commit (or one `SEARCH_COMMIT_INTERVAL`) long.
pub const SEARCH_BATCH_ENTRIES: usize = 16_384;
/// Timeline entries read per conversation per store read; a conversation
/// further behind is read again, after the others, in the same commit
/// while the budget lasts.
pub const SEARCH_READ_ENTRIES: usize = 256;
/// Store reads of one index commit in flight at once (a read is a round
/// trip on a CQL store).
pub const SEARCH_READ_CONCURRENCY: usize = 4;
/// Message text bytes gathered for one index commit. The reads in flight
/// when it is reached may add up to `SEARCH_READ_CONCURRENCY` reads of
/// `SEARCH_READ_ENTRIES` entries of at most `MAX_TEXT_BYTES` each: 64 MiB
/// more in the worst case, every text at the limit.
pub const SEARCH_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Conversation ids per page of the indexer's scan of the store.
pub const SEARCH_SCAN_PAGE: usize = 512;
/// How often the indexer scans every conversation (to learn what other
/// nodes sharing the store committed).
pub const SEARCH_SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Before the indexer tries again after a failure.
pub const SEARCH_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Pending conversations a search reply's lag counts at most.
pub const SEARCH_LAG_CONVERSATIONS: usize = 1_000;
/// Searches one node runs at once. Each holds a blocking thread for up to
/// the query deadline (5 s), and the embedded store's reads share that
/// pool: without a bound, a flood of slow searches would stall every
/// Sync and History behind them. Past it a search is refused with
/// RESOURCE_EXHAUSTED at once (a user retries; nothing queues).
pub const MAX_CONCURRENT_SEARCHES: usize = 16;
/// Searches one user's devices run at once; past it RESOURCE_EXHAUSTED,
/// and the node's others stay for everyone else.
pub const MAX_SEARCHES_PER_USER: usize = 4;
