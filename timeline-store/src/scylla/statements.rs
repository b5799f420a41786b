//! The tables of the timelines and every statement on them, prepared once
//! per keyspace (the cluster's tables are in `fencing`, the node intent log's
//! in `node_intents`, the revocations' in `revocations`).

use super::{StoreError, cql};
use crate::Result;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use std::sync::Arc;

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.inbox (user_id bigint, bucket bigint, seq bigint, entry blob, PRIMARY KEY ((user_id, bucket), seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.inbox_buckets (user_id bigint, bucket bigint, PRIMARY KEY (user_id, bucket))",
    "CREATE TABLE IF NOT EXISTS {ks}.conv (conversation_id bigint, bucket bigint, conv_seq bigint, entry blob, PRIMARY KEY ((conversation_id, bucket), conv_seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.conv_buckets (conversation_id bigint, bucket bigint, PRIMARY KEY (conversation_id, bucket))",
    "CREATE TABLE IF NOT EXISTS {ks}.conversations (conversation_id bigint PRIMARY KEY, record blob)",
    "CREATE TABLE IF NOT EXISTS {ks}.receipts (principal text, client_msg_id blob, receipt blob, PRIMARY KEY ((principal, client_msg_id)))",
    "CREATE TABLE IF NOT EXISTS {ks}.checkpoints (user_id bigint, device_id text, seq bigint, PRIMARY KEY (user_id, device_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.large_groups (user_id bigint, conversation_id bigint, PRIMARY KEY (user_id, conversation_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.large_group_members (user_id bigint, conversation_id bigint, joined_seq bigint, joined_conv_seq bigint, left_seq bigint, left_conv_seq bigint, PRIMARY KEY (user_id, conversation_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.inbox_floors (user_id bigint PRIMARY KEY, floor bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.conversation_members (conversation_id bigint, user_id bigint, member boolean, PRIMARY KEY (conversation_id, user_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.read_states (user_id bigint, conversation_id bigint, state blob, PRIMARY KEY (user_id, conversation_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.read_state_applied (user_id bigint PRIMARY KEY, applied_seq bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.conversation_readers (conversation_id bigint, user_id bigint, read_through bigint, joined bigint, PRIMARY KEY (conversation_id, user_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.event_copies (conversation_id bigint, bucket bigint, conv_seq bigint, copies blob, PRIMARY KEY ((conversation_id, bucket), conv_seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.pending_events (shard int, event_id bigint, event blob, PRIMARY KEY (shard, event_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.revocations (user_id bigint, device_id text, before bigint, PRIMARY KEY (user_id, device_id))",
    "CREATE TABLE IF NOT EXISTS {ks}.revocation_feed (hour bigint, recorded_at_ms bigint, user_id bigint, device_id text, before bigint, PRIMARY KEY ((hour), recorded_at_ms, user_id, device_id))",
];

pub(super) struct Statements {
    pub(super) insert_inbox: PreparedStatement,
    pub(super) insert_inbox_bucket: PreparedStatement,
    pub(super) insert_conv: PreparedStatement,
    pub(super) insert_copies: PreparedStatement,
    pub(super) select_copies: PreparedStatement,
    pub(super) insert_conv_bucket: PreparedStatement,
    pub(super) insert_conversation: PreparedStatement,
    pub(super) insert_receipt: PreparedStatement,
    pub(super) select_conversation: PreparedStatement,
    pub(super) scan_conversations_first: PreparedStatement,
    pub(super) scan_conversations_after: PreparedStatement,
    pub(super) select_receipt: PreparedStatement,
    pub(super) select_inbox_buckets: PreparedStatement,
    pub(super) select_last_inbox_bucket: PreparedStatement,
    pub(super) select_inbox_range: PreparedStatement,
    pub(super) select_last_inbox_seq: PreparedStatement,
    pub(super) select_conv_buckets: PreparedStatement,
    pub(super) select_conv_buckets_desc: PreparedStatement,
    pub(super) select_conv_range: PreparedStatement,
    pub(super) select_conv_range_desc: PreparedStatement,
    pub(super) select_checkpoint: PreparedStatement,
    pub(super) insert_checkpoint_if_absent: PreparedStatement,
    pub(super) raise_checkpoint_if: PreparedStatement,
    pub(super) join_large_group: PreparedStatement,
    /// A join of a user with a row already: the first join stays.
    pub(super) rejoin_large_group: PreparedStatement,
    pub(super) select_large_group_member: PreparedStatement,
    pub(super) leave_large_group: PreparedStatement,
    pub(super) select_large_group_members: PreparedStatement,
    /// A member-table row; a leave is `member = false`, not a delete, so
    /// a walk of a churning group reads no tombstones.
    pub(super) upsert_member: PreparedStatement,
    pub(super) delete_member: PreparedStatement,
    pub(super) select_member: PreparedStatement,
    pub(super) select_members_page: PreparedStatement,
    /// Indexes written before positions were kept: read as memberships
    /// joined at position zero, deleted when the member leaves.
    pub(super) delete_legacy_large_group: PreparedStatement,
    pub(super) select_legacy_large_groups: PreparedStatement,
    pub(super) select_inbox_floor: PreparedStatement,
    /// Floors are raised by compare-and-set only, so a lower one written
    /// late (by a trimmer that was frozen, or a retry) never lowers a
    /// higher one: a lowered floor would hide a trimmed range.
    pub(super) insert_inbox_floor: PreparedStatement,
    pub(super) raise_inbox_floor: PreparedStatement,
    pub(super) select_trimmable: PreparedStatement,
    pub(super) delete_inbox_through: PreparedStatement,
    pub(super) delete_inbox_bucket: PreparedStatement,
    pub(super) insert_read_state: PreparedStatement,
    pub(super) select_read_states: PreparedStatement,
    pub(super) insert_read_state_applied: PreparedStatement,
    pub(super) select_read_state_applied: PreparedStatement,
    /// Written with the marker as the write timestamp: last-write-wins
    /// then keeps the highest marker, in any order, with no read and no
    /// tombstone (nothing else writes the table).
    pub(super) insert_reader: PreparedStatement,
    /// The same for the latest join (its own cell, its own timestamp).
    pub(super) insert_reader_join: PreparedStatement,
    pub(super) select_readers: PreparedStatement,
    pub(super) delete_pending: PreparedStatement,
    pub(super) select_pending: PreparedStatement,
}

impl Statements {
    /// Prepares every statement on `keyspace`, each marked idempotent but
    /// the conditional ones.
    pub(super) async fn prepare(session: &Arc<Session>, keyspace: &str) -> Result<Self> {
        let prepare = |text: &str| {
            let session = Arc::clone(session);
            let text = text.replace("{ks}", keyspace);
            async move {
                let mut statement = session.prepare(text).await.map_err(cql)?;
                statement.set_is_idempotent(true);
                Ok::<_, StoreError>(statement)
            }
        };
        let mut raise_checkpoint_if = prepare(
            "UPDATE {ks}.checkpoints SET seq = ? WHERE user_id = ? AND device_id = ? IF seq = ?",
        )
        .await?;
        // A conditional update is not idempotent: a retry after a lost reply
        // would see its own write and report a failed condition.
        raise_checkpoint_if.set_is_idempotent(false);
        let mut insert_checkpoint_if_absent = prepare(
            "INSERT INTO {ks}.checkpoints (user_id, device_id, seq) VALUES (?, ?, ?) IF NOT EXISTS",
        )
        .await?;
        insert_checkpoint_if_absent.set_is_idempotent(false);
        Ok(Statements {
            insert_inbox: prepare("INSERT INTO {ks}.inbox (user_id, bucket, seq, entry) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
            insert_inbox_bucket: prepare("INSERT INTO {ks}.inbox_buckets (user_id, bucket) VALUES (?, ?) USING TIMESTAMP ?").await?,
            insert_conv: prepare("INSERT INTO {ks}.conv (conversation_id, bucket, conv_seq, entry) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
            insert_copies: prepare("INSERT INTO {ks}.event_copies (conversation_id, bucket, conv_seq, copies) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
            select_copies: prepare("SELECT copies FROM {ks}.event_copies WHERE conversation_id = ? AND bucket = ? AND conv_seq = ?").await?,
            insert_conv_bucket: prepare("INSERT INTO {ks}.conv_buckets (conversation_id, bucket) VALUES (?, ?) USING TIMESTAMP ?").await?,
            insert_conversation: prepare("INSERT INTO {ks}.conversations (conversation_id, record) VALUES (?, ?) USING TIMESTAMP ?").await?,
            // The row expires by itself after the retention window.
            insert_receipt: prepare(&format!(
                "INSERT INTO {{ks}}.receipts (principal, client_msg_id, receipt) VALUES (?, ?, ?) USING TTL {} AND TIMESTAMP ?",
                crate::RECEIPT_RETENTION.as_secs()
            ))
            .await?,
            select_conversation: prepare("SELECT record FROM {ks}.conversations WHERE conversation_id = ?").await?,
            // Token order: the order a full scan of the table can page in.
            scan_conversations_first: prepare("SELECT conversation_id FROM {ks}.conversations LIMIT ?").await?,
            scan_conversations_after: prepare(
                "SELECT conversation_id FROM {ks}.conversations WHERE token(conversation_id) > token(?) LIMIT ?",
            )
            .await?,
            select_receipt: prepare("SELECT receipt FROM {ks}.receipts WHERE principal = ? AND client_msg_id = ?").await?,
            select_inbox_buckets: prepare("SELECT bucket FROM {ks}.inbox_buckets WHERE user_id = ? AND bucket >= ? AND bucket <= ?").await?,
            select_last_inbox_bucket: prepare("SELECT bucket FROM {ks}.inbox_buckets WHERE user_id = ? AND bucket <= ? ORDER BY bucket DESC LIMIT 1").await?,
            select_inbox_range: prepare("SELECT entry FROM {ks}.inbox WHERE user_id = ? AND bucket = ? AND seq > ? AND seq <= ? LIMIT ?").await?,
            select_last_inbox_seq: prepare("SELECT seq FROM {ks}.inbox WHERE user_id = ? AND bucket = ? ORDER BY seq DESC LIMIT 1").await?,
            select_conv_buckets: prepare("SELECT bucket FROM {ks}.conv_buckets WHERE conversation_id = ? AND bucket >= ? AND bucket <= ?").await?,
            select_conv_buckets_desc: prepare("SELECT bucket FROM {ks}.conv_buckets WHERE conversation_id = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket DESC").await?,
            select_conv_range: prepare("SELECT entry FROM {ks}.conv WHERE conversation_id = ? AND bucket = ? AND conv_seq > ? AND conv_seq < ? LIMIT ?").await?,
            select_conv_range_desc: prepare("SELECT entry FROM {ks}.conv WHERE conversation_id = ? AND bucket = ? AND conv_seq > ? AND conv_seq < ? ORDER BY conv_seq DESC LIMIT ?").await?,
            select_checkpoint: prepare("SELECT seq FROM {ks}.checkpoints WHERE user_id = ? AND device_id = ?").await?,
            insert_checkpoint_if_absent,
            raise_checkpoint_if,
            join_large_group: prepare(
                "UPDATE {ks}.large_group_members USING TIMESTAMP ? SET joined_seq = ?, joined_conv_seq = ?, left_seq = null, left_conv_seq = null WHERE user_id = ? AND conversation_id = ?",
            )
            .await?,
            rejoin_large_group: prepare(
                "UPDATE {ks}.large_group_members USING TIMESTAMP ? SET left_seq = null, left_conv_seq = null WHERE user_id = ? AND conversation_id = ?",
            )
            .await?,
            select_large_group_member: prepare(
                "SELECT joined_seq FROM {ks}.large_group_members WHERE user_id = ? AND conversation_id = ?",
            )
            .await?,
            leave_large_group: prepare(
                "UPDATE {ks}.large_group_members USING TIMESTAMP ? SET left_seq = ?, left_conv_seq = ? WHERE user_id = ? AND conversation_id = ?",
            )
            .await?,
            select_large_group_members: prepare(
                "SELECT conversation_id, joined_seq, joined_conv_seq, left_seq, left_conv_seq FROM {ks}.large_group_members WHERE user_id = ? AND conversation_id > ? LIMIT ?",
            )
            .await?,
            upsert_member: prepare(
                "INSERT INTO {ks}.conversation_members (conversation_id, user_id, member) VALUES (?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            delete_member: prepare(
                "DELETE FROM {ks}.conversation_members USING TIMESTAMP ? WHERE conversation_id = ? AND user_id = ?",
            )
            .await?,
            select_member: prepare(
                "SELECT member FROM {ks}.conversation_members WHERE conversation_id = ? AND user_id = ?",
            )
            .await?,
            select_members_page: prepare(
                "SELECT user_id, member FROM {ks}.conversation_members WHERE conversation_id = ? AND user_id > ? LIMIT ?",
            )
            .await?,
            delete_legacy_large_group: prepare(
                "DELETE FROM {ks}.large_groups USING TIMESTAMP ? WHERE user_id = ? AND conversation_id = ?",
            )
            .await?,
            select_legacy_large_groups: prepare(
                "SELECT conversation_id FROM {ks}.large_groups \
                 WHERE user_id = ? AND conversation_id > ? LIMIT ?",
            )
                .await?,
            select_inbox_floor: prepare("SELECT floor FROM {ks}.inbox_floors WHERE user_id = ?").await?,
            insert_inbox_floor: prepare(
                "INSERT INTO {ks}.inbox_floors (user_id, floor) VALUES (?, ?) IF NOT EXISTS",
            )
            .await?,
            raise_inbox_floor: prepare(
                "UPDATE {ks}.inbox_floors SET floor = ? WHERE user_id = ? IF floor = ?",
            )
            .await?,
            select_trimmable: prepare(
                "SELECT seq FROM {ks}.inbox WHERE user_id = ? AND bucket = ? AND seq < ? LIMIT ?",
            )
            .await?,
            delete_inbox_through: prepare(
                "DELETE FROM {ks}.inbox USING TIMESTAMP ? WHERE user_id = ? AND bucket = ? AND seq <= ?",
            )
            .await?,
            delete_inbox_bucket: prepare(
                "DELETE FROM {ks}.inbox_buckets USING TIMESTAMP ? WHERE user_id = ? AND bucket = ?",
            )
            .await?,
            insert_reader: prepare(
                "UPDATE {ks}.conversation_readers USING TIMESTAMP ? SET read_through = ? WHERE conversation_id = ? AND user_id = ?",
            )
            .await?,
            insert_reader_join: prepare(
                "UPDATE {ks}.conversation_readers USING TIMESTAMP ? SET joined = ? WHERE conversation_id = ? AND user_id = ?",
            )
            .await?,
            select_readers: prepare(
                "SELECT user_id, read_through, joined FROM {ks}.conversation_readers WHERE conversation_id = ? AND user_id IN ?",
            )
            .await?,
            insert_read_state: prepare(
                "INSERT INTO {ks}.read_states (user_id, conversation_id, state) VALUES (?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_read_states: prepare(
                "SELECT conversation_id, state FROM {ks}.read_states WHERE user_id = ? AND conversation_id > ? LIMIT ?",
            )
            .await?,
            insert_read_state_applied: prepare(
                "INSERT INTO {ks}.read_state_applied (user_id, applied_seq) VALUES (?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_read_state_applied: prepare(
                "SELECT applied_seq FROM {ks}.read_state_applied WHERE user_id = ?",
            )
            .await?,
            delete_pending: prepare("DELETE FROM {ks}.pending_events WHERE shard = ? AND event_id = ?")
                .await?,
            select_pending: prepare("SELECT event FROM {ks}.pending_events WHERE shard = ?").await?,
        })
    }
}
