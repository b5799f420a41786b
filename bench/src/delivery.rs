//! Delivery latency: from the start of a Send until every subscribed device
//! of every recipient holds the entry (through push, or a pull the push
//! prompted).

use crate::report;
use crate::workload::{self, Rng};
use client::Client;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One send of a load, picked and announced by [`Tracker::next_send`].
pub struct NextSend<'a> {
    pub conversation_id: u64,
    pub members: &'a [u64],
    pub sender: u64,
    pub message: String,
}

/// Seconds of send starts that [`Tracker::p99_by_second`] keeps apart;
/// sends after the last of them count in it.
const MAX_SECONDS: usize = 3_600;

#[derive(Default)]
struct State {
    /// message key -> (send start, subscribed recipients still to receive it)
    pending: HashMap<String, (Instant, usize)>,
    delivered: u64,
    /// The first send announced since the last reset: second 0.
    first_send: Option<Instant>,
    /// Delivery latencies by the second their send started in, so a tail
    /// shows when it happened (a stall, a flush) and not only how long.
    by_second: Vec<Histogram<u64>>,
}

/// The second since `first` that a send started at `started` counts in.
fn second_of(first: Instant, started: Instant) -> usize {
    (started.saturating_duration_since(first).as_secs() as usize).min(MAX_SECONDS - 1)
}

/// Shared between the senders (which announce messages) and the subscribed
/// devices (which report arrivals).
pub struct Tracker {
    /// Subscribed devices per user.
    subscribed: HashMap<u64, usize>,
    state: Mutex<State>,
    latency: Mutex<Histogram<u64>>,
}

impl Tracker {
    /// `devices`: (user, device) of every subscribed device.
    pub fn new(devices: &[(u64, u64)]) -> Arc<Self> {
        let mut subscribed = HashMap::new();
        for &(user, _) in devices {
            *subscribed.entry(user).or_insert(0) += 1;
        }
        Arc::new(Self {
            subscribed,
            state: Mutex::default(),
            latency: Mutex::new(report::histogram()),
        })
    }

    /// Called before a send starts; `key` must open the message text.
    pub fn announce(&self, key: &str, members: &[u64]) {
        let waiting: usize = members.iter().filter_map(|m| self.subscribed.get(m)).sum();
        if waiting > 0 {
            let now = Instant::now();
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.first_send.get_or_insert(now);
            state.pending.insert(key.to_owned(), (now, waiting));
        }
    }

    /// The next send of a load: a conversation and sender picked by `rng`,
    /// its text `key` then `body`, announced now (its delivery latency
    /// starts here).
    pub fn next_send<'a>(
        &self,
        rng: &mut Rng,
        conversations: &'a [(u64, Vec<u64>)],
        key: String,
        body: &str,
    ) -> NextSend<'a> {
        let (conversation_id, members, sender) = workload::pick(rng, conversations);
        self.announce(&key, members);
        NextSend {
            conversation_id,
            members,
            sender,
            message: format!("{key} {body}"),
        }
    }

    /// The call of closed-loop worker `worker`: each call picks and
    /// announces the next send from the worker's own random stream (from
    /// `seed`), keyed `{key_prefix}-w{worker}-{n}`, and hands it to `call`.
    pub fn worker_sends<C, Fut>(
        self: &Arc<Self>,
        conversations: &Arc<Vec<(u64, Vec<u64>)>>,
        text: &Arc<str>,
        key_prefix: String,
        seed: u64,
        worker: usize,
        mut call: C,
    ) -> impl FnMut(u64) -> Fut + Send + 'static
    where
        C: FnMut(NextSend<'_>) -> Fut + Send + 'static,
    {
        let (tracker, conversations, text) = (
            Arc::clone(self),
            Arc::clone(conversations),
            Arc::clone(text),
        );
        let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(worker as u64));
        move |sent| {
            let key = format!("{key_prefix}-w{worker}-{sent}");
            call(tracker.next_send(&mut rng, &conversations, key, &text))
        }
    }

    /// A subscribed device got the message whose text is `text`.
    pub fn arrived(&self, text: &str) {
        let key = text.split(' ').next().unwrap_or_default();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((started, waiting)) = state.pending.get_mut(key) else {
            return;
        };
        *waiting -= 1;
        if *waiting == 0 {
            let started = *started;
            let micros = started.elapsed().as_micros().max(1) as u64;
            state.pending.remove(key);
            state.delivered += 1;
            let second = second_of(state.first_send.unwrap_or(started), started);
            if state.by_second.len() <= second {
                state.by_second.resize_with(second + 1, report::histogram);
            }
            let _ = state.by_second[second].record(micros);
            let _ = self
                .latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(micros);
        }
    }

    /// Forgets everything measured so far (after a warm-up).
    pub fn reset(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = State::default();
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
    }

    /// Messages fully delivered, messages still waiting for someone.
    pub fn counts(&self) -> (u64, usize) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.delivered, state.pending.len())
    }

    /// Delivery p99 in ms of the sends started in each second since the
    /// first (none: no send of that second was delivered to everyone).
    pub fn p99_by_second(&self) -> Vec<Option<f64>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .by_second
            .iter()
            .map(|h| (!h.is_empty()).then(|| report::ms(h, 0.99)))
            .collect()
    }

    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows one device's inbox until the task is aborted.
    pub fn follow(self: &Arc<Self>, device: Client) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let tracker = Arc::clone(self);
        tokio::spawn(async move {
            let mut seen = device.sync_page(None, 1_000).await?.checkpoint;
            let mut notices = device.subscribe(seen, true).await?;
            while let Some(notice) = notices.message().await? {
                let complete = client::notice_is_complete(&notice);
                let mut entries = if complete { notice.entries } else { Vec::new() };
                // Pull what the notice did not carry, as the client library does.
                while !complete && seen < notice.up_to_seq {
                    let page = device.sync_page(Some(seen), 1_000).await?;
                    seen = page.checkpoint.max(seen);
                    let more = page.has_more;
                    entries.extend(page.entries);
                    if !more {
                        break;
                    }
                }
                for entry in entries.iter().filter(|e| e.seq > 0) {
                    tracker.arrived(&entry.text);
                    seen = seen.max(entry.seq);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sends_count_in_the_second_they_started() {
        let first = Instant::now();
        assert_eq!(second_of(first, first), 0);
        assert_eq!(second_of(first, first + Duration::from_millis(999)), 0);
        assert_eq!(second_of(first, first + Duration::from_millis(2_500)), 2);
        assert_eq!(
            second_of(first, first + Duration::from_secs(10 * MAX_SECONDS as u64)),
            MAX_SECONDS - 1,
            "a run longer than the bound counts in its last second"
        );
    }

    #[test]
    fn each_delivered_send_lands_in_one_second() {
        let tracker = Tracker::new(&[(1, 0), (2, 0)]);
        tracker.announce("a", &[1, 2]);
        tracker.announce("b", &[1]);
        tracker.arrived("a text");
        assert!(
            tracker.p99_by_second().is_empty(),
            "a still waits for user 2"
        );
        tracker.arrived("a text");
        tracker.arrived("b text");
        let seconds = tracker.p99_by_second();
        assert_eq!(seconds.len(), 1);
        assert!(seconds[0].is_some());
        tracker.reset();
        assert!(tracker.p99_by_second().is_empty());
    }
}
