//! The `# HELP` lines of syncd's own metrics (recorded where the work
//! happens; docs/OPERATIONS.md has the full table and the alerts).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Registers the descriptions; the binary calls it once, after installing
/// the recorder.
pub fn describe_metrics() {
    describe_gauge!("syncd_ready", "1 while the node reports SERVING, else 0.");
    describe_gauge!(
        "syncd_recovering",
        "1 while interrupted events are finished at start."
    );
    describe_counter!(
        "syncd_recovered_events_total",
        "Events finished by recovery at start."
    );
    describe_counter!(
        "syncd_sends_total",
        "Successful sends, stored or answered from a receipt."
    );
    describe_counter!(
        "syncd_events_committed_total",
        "Events durably committed, by kind."
    );
    describe_counter!(
        "syncd_inbox_entries_written_total",
        "Inbox copies written (write fanout)."
    );
    describe_counter!(
        "syncd_member_rows_written_total",
        "Rows of large groups' member tables written by membership events."
    );
    describe_histogram!(
        "syncd_fanout_recipients",
        "Inbox copies per committed event."
    );
    describe_counter!(
        "syncd_commit_failures_total",
        "Commits the store failed, by what follows."
    );
    describe_counter!(
        "syncd_background_finish_retries_total",
        "Failed attempts to finish an event in the background."
    );
    describe_gauge!(
        "syncd_horizon_inflight_events",
        "Events reserved and not yet readable."
    );
    describe_histogram!(
        "syncd_horizon_lag_seconds",
        Unit::Seconds,
        "Time from an event's reservation to its seqs being readable."
    );
    describe_gauge!("syncd_push_subscribers", "Open Subscribe streams.");
    describe_counter!(
        "syncd_push_notices_total",
        "Push notices sent, with or without entries."
    );
    describe_counter!(
        "syncd_push_disconnects_total",
        "Subscribe streams ended, by reason."
    );
    describe_counter!(
        "syncd_retention_trimmed_entries_total",
        "Inbox entries deleted by retention."
    );
}
