//! The writer lease's timing rules, pure (tested with a paused clock).
//!
//! The lease row (`timeline_store::scylla::WriterLeaseTable`) names the
//! writer, its epoch and a renewal counter. Every node reads it every
//! `renew_every`:
//! - **The holder** renews by raising the counter (conditional on its
//!   epoch) and may write until *send time of its last applied renewal* +
//!   `lease`: a reply that sat in a socket while the process was frozen
//!   does not count as fresh.
//! - **A challenger** remembers the row and *when it first received it*.
//!   Only after the same row (epoch and counter unchanged) has been seen for
//!   `lease + renew_every` may it claim, naming that row, so the claim fails
//!   if the holder renewed in between. The holder's last renewal was applied
//!   before the challenger's first read, so it was sent before that read
//!   arrived, and its lease ran out before the claim: two nodes never both
//!   believe they write (clocks may be apart; only their rates must agree).
//! - A row that names this node without this process holding it (a restart
//!   with the same address) is treated like anyone else's: a restarted
//!   process cannot know what its predecessor still had in flight.
//!
//! - **Versions are not mixed.** Every claim records the claimant's
//!   `CLUSTER_PROTOCOL` with its epoch. A row of another protocol (or of a
//!   version that records none) that moves while this node watches it, or
//!   that takes the lease from this node, is a writer of another version at
//!   work: this node refuses to go on ([`Role::Refused`]) rather than follow
//!   it or take over from it. One that stands still for a takeover's wait
//!   is claimed as usual: that is the upgrade (stop every node of the old
//!   version, then start the new one).
//!
//! A lease does not stop writes already handed to the store; the store's
//! fence does (see `timeline_store::scylla` fencing). Nor does it order the
//! writes of successive holders by itself: each claim and renewal also
//! records a write timestamp ceiling, the next holder's floor
//! (`timeline_store::scylla::WriterClock`, `LeaseTimings::ceiling_span`).

use std::time::Duration;
use timeline_store::scylla::{CLUSTER_PROTOCOL, LeaseRecord};
use tokio::time::Instant;

/// How long a lease lasts and how often it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    pub lease: Duration,
    pub renew_every: Duration,
}

impl LeaseTimings {
    /// Five seconds, read every second: a failover takes 6 to 7 s.
    pub const DEFAULT: LeaseTimings = LeaseTimings {
        lease: Duration::from_secs(5),
        renew_every: Duration::from_secs(1),
    };

    /// A holder must be able to renew at least twice within a lease, or one
    /// slow read would lose it.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_every.is_zero() || self.renew_every * 3 > self.lease {
            return Err(format!(
                "a lease of {:?} read every {:?}: the lease must be at least three read intervals",
                self.lease, self.renew_every
            ));
        }
        Ok(())
    }

    /// How long a challenger must see the same row before it may claim.
    pub fn takeover_after(&self) -> Duration {
        self.lease + self.renew_every
    }

    /// How far past its clock a claim or renewal sets the holder's write
    /// timestamp ceiling: the lease, plus a lease of margin so a renewal
    /// that comes late (but within the lease) never finds the ceiling used
    /// up (`timeline_store::scylla::WriterClock`).
    pub fn ceiling_span(&self) -> Duration {
        self.lease * 2
    }
}

/// What this node is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// This node writes, under `epoch`, until `until`.
    Writer { epoch: u64, until: Instant },
    /// Another node writes: calls go there.
    Follower { writer: String },
    /// No writer known (none yet, or the holder may have stopped).
    Unknown,
    /// A writer of another version is at work: this node must stop.
    Refused { reason: String },
}

/// What to do after a read of the lease row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Raise the counter of this node's epoch from `seen` (to `seen + 1`).
    Renew { epoch: u64, seen: u64 },
    /// Claim the lease, naming the row as seen (`None`: no row yet).
    Claim { seen: Option<LeaseRecord> },
    /// Nothing to write.
    Wait,
    /// Stop: a writer of another version is at work ([`Role::Refused`]).
    Refuse { reason: String },
}

#[derive(Clone, Debug)]
struct Held {
    epoch: u64,
    renewals: u64,
    until: Instant,
}

#[derive(Clone, Debug)]
struct Watched {
    record: LeaseRecord,
    since: Instant,
}

/// One node's view of the writer lease.
#[derive(Debug)]
pub struct WriterLease {
    me: String,
    timings: LeaseTimings,
    held: Option<Held>,
    watched: Option<Watched>,
    refused: Option<String>,
}

/// Why a node stops on seeing `record` at work.
fn foreign_writer(record: &LeaseRecord) -> String {
    let theirs = match record.protocol {
        Some(protocol) => format!("cluster protocol {protocol}"),
        None => "an earlier version's cluster protocol".into(),
    };
    format!(
        "the writer {} (epoch {}) runs {theirs}, this node runs cluster protocol {CLUSTER_PROTOCOL}: \
         versions must not be mixed; stop every node of one version before starting the other",
        record.holder, record.epoch
    )
}

impl WriterLease {
    pub fn new(me: String, timings: LeaseTimings) -> Self {
        Self {
            me,
            timings,
            held: None,
            watched: None,
            refused: None,
        }
    }

    /// This node's advertised address.
    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn timings(&self) -> LeaseTimings {
        self.timings
    }

    /// A read of the row arrived at `received`.
    pub fn observe(&mut self, record: Option<LeaseRecord>, received: Instant) -> Step {
        if let Some(reason) = &self.refused {
            return Step::Refuse {
                reason: reason.clone(),
            };
        }
        let Some(record) = record else {
            self.held = None;
            self.watched = None;
            return Step::Claim { seen: None };
        };
        if let Some(held) = &self.held {
            if record.epoch == held.epoch && record.holder == self.me {
                if received < held.until {
                    return Step::Renew {
                        epoch: held.epoch,
                        seen: record.renewals,
                    };
                }
                // The lease ran out by this node's clock, so its role
                // turned Unknown and the generation of this epoch ended,
                // leaving what it had not finished to a recovery. Renewing
                // now would bring the epoch back for a new generation
                // that recovers nothing of its own epoch and numbers its
                // intents from zero again, over the unfinished ones. So
                // the row is claimed as read: a new epoch, sealed and
                // recovered as after any takeover.
                self.held = None;
                self.watched = None;
                return Step::Claim { seen: Some(record) };
            }
            // Taken over: stop at once, whatever the lease said.
            self.held = None;
            if record.protocol != Some(CLUSTER_PROTOCOL) {
                return self.refuse(&record);
            }
        }
        if record.protocol != Some(CLUSTER_PROTOCOL)
            && self
                .watched
                .as_ref()
                .is_some_and(|watched| watched.record != record)
        {
            return self.refuse(&record);
        }
        match &self.watched {
            Some(watched) if watched.record == record => {
                if received.duration_since(watched.since) >= self.timings.takeover_after() {
                    Step::Claim { seen: Some(record) }
                } else {
                    Step::Wait
                }
            }
            _ => {
                self.watched = Some(Watched {
                    record,
                    since: received,
                });
                Step::Wait
            }
        }
    }

    fn refuse(&mut self, record: &LeaseRecord) -> Step {
        let reason = foreign_writer(record);
        self.refused = Some(reason.clone());
        Step::Refuse { reason }
    }

    /// A renewal sent at `sent` applied.
    pub fn renewed(&mut self, epoch: u64, renewals: u64, sent: Instant) {
        if let Some(held) = &mut self.held
            && held.epoch == epoch
        {
            held.renewals = renewals;
            held.until = sent + self.timings.lease;
        }
    }

    /// A claim sent at `sent` won `epoch`.
    pub fn claimed(&mut self, epoch: u64, sent: Instant) {
        self.watched = None;
        self.held = Some(Held {
            epoch,
            renewals: 0,
            until: sent + self.timings.lease,
        });
    }

    /// What this node is at `now`, given the last row read.
    pub fn role(&self, now: Instant) -> Role {
        if let Some(reason) = &self.refused {
            return Role::Refused {
                reason: reason.clone(),
            };
        }
        if let Some(held) = &self.held
            && now < held.until
        {
            return Role::Writer {
                epoch: held.epoch,
                until: held.until,
            };
        }
        match &self.watched {
            // A row unchanged for a whole lease may name a stopped holder:
            // calls sent there would wait for nothing.
            // Nor is one of another version: it may be claimed once it
            // stands still, never joined.
            Some(watched)
                if watched.record.holder != self.me
                    && watched.record.protocol == Some(CLUSTER_PROTOCOL)
                    && now.duration_since(watched.since) < self.timings.takeover_after() =>
            {
                Role::Follower {
                    writer: watched.record.holder.clone(),
                }
            }
            _ => Role::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMINGS: LeaseTimings = LeaseTimings {
        lease: Duration::from_millis(1_000),
        renew_every: Duration::from_millis(200),
    };

    fn row(holder: &str, epoch: u64, renewals: u64) -> Option<LeaseRecord> {
        Some(LeaseRecord {
            holder: holder.into(),
            epoch,
            renewals,
            ceiling: None,
            protocol: Some(CLUSTER_PROTOCOL),
        })
    }

    fn foreign(
        holder: &str,
        epoch: u64,
        renewals: u64,
        protocol: Option<u32>,
    ) -> Option<LeaseRecord> {
        Some(LeaseRecord {
            protocol,
            ..row(holder, epoch, renewals).unwrap()
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_node_claims_an_empty_row_and_renews_its_epoch() {
        let mut a = WriterLease::new("a".into(), TIMINGS);
        let t0 = Instant::now();
        assert_eq!(a.observe(None, t0), Step::Claim { seen: None });
        a.claimed(1, t0);
        assert!(matches!(a.role(t0), Role::Writer { epoch: 1, .. }));
        assert_eq!(
            a.observe(row("a", 1, 0), t0 + ms(200)),
            Step::Renew { epoch: 1, seen: 0 }
        );
        a.renewed(1, 1, t0 + ms(200));
        // The lease runs from the renewal's send time.
        assert!(matches!(a.role(t0 + ms(1_199)), Role::Writer { .. }));
        assert_eq!(a.role(t0 + ms(1_200)), Role::Unknown);
    }

    /// A renewal after the lease ran out would have given a second
    /// generation the first one's epoch: its recovery skips that epoch's
    /// unfinished intents and its numbering starts again at zero.
    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_lease_ran_out_claims_a_new_epoch_instead_of_renewing() {
        let mut a = WriterLease::new("a".into(), TIMINGS);
        let t0 = Instant::now();
        a.observe(None, t0);
        a.claimed(7, t0);
        // The store stalled: no renewal applied, the lease ran out.
        assert_eq!(a.role(t0 + ms(1_000)), Role::Unknown);
        assert_eq!(
            a.observe(row("a", 7, 0), t0 + ms(1_000)),
            Step::Claim {
                seen: row("a", 7, 0)
            }
        );
        assert_eq!(a.role(t0 + ms(1_000)), Role::Unknown);
        a.claimed(8, t0 + ms(1_001));
        assert!(matches!(
            a.role(t0 + ms(1_002)),
            Role::Writer { epoch: 8, .. }
        ));
        // Just before the end it still renews.
        assert_eq!(
            a.observe(row("a", 8, 0), t0 + ms(2_000)),
            Step::Renew { epoch: 8, seen: 0 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_challenger_claims_only_after_a_row_unchanged_for_lease_and_interval() {
        let mut b = WriterLease::new("b".into(), TIMINGS);
        let t0 = Instant::now();
        assert_eq!(b.observe(row("a", 1, 5), t0), Step::Wait);
        assert_eq!(b.role(t0), Role::Follower { writer: "a".into() });
        assert_eq!(b.observe(row("a", 1, 5), t0 + ms(1_100)), Step::Wait);
        // A renewal in between starts the wait over.
        assert_eq!(b.observe(row("a", 1, 6), t0 + ms(1_150)), Step::Wait);
        assert_eq!(b.observe(row("a", 1, 6), t0 + ms(2_300)), Step::Wait);
        assert_eq!(
            b.role(t0 + ms(2_300)),
            Role::Follower { writer: "a".into() }
        );
        assert_eq!(
            b.observe(row("a", 1, 6), t0 + ms(2_350)),
            Step::Claim {
                seen: row("a", 1, 6)
            }
        );
        assert_eq!(
            b.role(t0 + ms(2_350)),
            Role::Unknown,
            "a silent holder is not followed"
        );
        b.claimed(2, t0 + ms(2_350));
        assert!(matches!(
            b.role(t0 + ms(2_351)),
            Role::Writer { epoch: 2, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_epoch_was_taken_stops_at_once() {
        let mut a = WriterLease::new("a".into(), TIMINGS);
        let t0 = Instant::now();
        a.observe(None, t0);
        a.claimed(1, t0);
        // Frozen, then it reads a row another node claimed.
        assert_eq!(a.observe(row("b", 2, 0), t0 + ms(300)), Step::Wait);
        assert_eq!(a.role(t0 + ms(300)), Role::Follower { writer: "b".into() });
        let mut c = WriterLease::new("c".into(), TIMINGS);
        c.observe(None, t0);
        c.claimed(3, t0);
        // A renewal that does not apply changes nothing: the lease runs out
        // when the last applied one says.
        assert!(matches!(
            c.role(t0 + ms(999)),
            Role::Writer { epoch: 3, .. }
        ));
        assert_eq!(c.role(t0 + ms(1_000)), Role::Unknown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_holder_waits_like_any_challenger() {
        let mut a = WriterLease::new("a".into(), TIMINGS);
        let t0 = Instant::now();
        assert_eq!(a.observe(row("a", 4, 9), t0), Step::Wait);
        assert_eq!(a.role(t0), Role::Unknown, "it never follows itself");
        assert_eq!(
            a.observe(row("a", 4, 9), t0 + TIMINGS.takeover_after()),
            Step::Claim {
                seen: row("a", 4, 9)
            }
        );
    }

    /// The safety argument, replayed: whatever the holder's renewals, the
    /// challenger's claim comes after the holder's own lease ran out.
    #[tokio::test(start_paused = true)]
    async fn a_claim_never_overlaps_the_previous_holders_lease() {
        for renew_at in [0u64, 50, 199, 200, 400, 999] {
            let mut a = WriterLease::new("a".into(), TIMINGS);
            let mut b = WriterLease::new("b".into(), TIMINGS);
            let t0 = Instant::now();
            a.observe(None, t0);
            a.claimed(1, t0);
            // The holder's last renewal is sent at renew_at and applied at
            // once; then it freezes.
            a.renewed(1, 1, t0 + ms(renew_at));
            let mut now = t0 + ms(renew_at);
            let claim_at = loop {
                if let Step::Claim { .. } = b.observe(row("a", 1, 1), now) {
                    break now;
                }
                now += TIMINGS.renew_every;
            };
            assert!(
                !matches!(a.role(claim_at), Role::Writer { .. }),
                "renewal at {renew_at} ms: the holder still writes at the claim"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_writer_of_another_version_is_refused_never_followed() {
        for protocol in [None, Some(CLUSTER_PROTOCOL + 1)] {
            let mut b = WriterLease::new("b".into(), TIMINGS);
            let t0 = Instant::now();
            assert_eq!(b.observe(foreign("old", 3, 7, protocol), t0), Step::Wait);
            assert_eq!(b.role(t0), Role::Unknown, "calls are not passed on to it");
            // It renews: a writer of another version is at work.
            let Step::Refuse { reason } = b.observe(foreign("old", 3, 8, protocol), t0 + ms(200))
            else {
                panic!("{protocol:?}: a live foreign writer must be refused");
            };
            assert!(reason.contains("versions must not be mixed"), "{reason}");
            assert!(matches!(b.role(t0 + ms(200)), Role::Refused { .. }));
            // For good: not even a row of this version brings it back.
            assert!(matches!(
                b.observe(row("c", 4, 0), t0 + ms(400)),
                Step::Refuse { .. }
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_writer_of_another_version_is_taken_over_after_the_wait() {
        let mut b = WriterLease::new("b".into(), TIMINGS);
        let t0 = Instant::now();
        let old = foreign("old", 3, 7, None);
        assert_eq!(b.observe(old.clone(), t0), Step::Wait);
        assert_eq!(b.observe(old.clone(), t0 + ms(1_000)), Step::Wait);
        assert_eq!(
            b.observe(old.clone(), t0 + TIMINGS.takeover_after()),
            Step::Claim { seen: old }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_taken_over_by_another_version_refuses() {
        let mut a = WriterLease::new("a".into(), TIMINGS);
        let t0 = Instant::now();
        a.observe(None, t0);
        a.claimed(1, t0);
        assert!(matches!(
            a.observe(foreign("old", 2, 0, None), t0 + ms(200)),
            Step::Refuse { .. }
        ));
        assert!(matches!(a.role(t0 + ms(200)), Role::Refused { .. }));
        // Taken over by this version: it follows, as before.
        let mut c = WriterLease::new("c".into(), TIMINGS);
        c.observe(None, t0);
        c.claimed(1, t0);
        assert_eq!(c.observe(row("d", 2, 0), t0 + ms(200)), Step::Wait);
        assert_eq!(c.role(t0 + ms(200)), Role::Follower { writer: "d".into() });
    }

    #[test]
    fn timings_need_three_reads_per_lease() {
        assert!(LeaseTimings::DEFAULT.validate().is_ok());
        assert!(
            LeaseTimings {
                lease: ms(500),
                renew_every: ms(200)
            }
            .validate()
            .is_err()
        );
    }
}
