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

#[derive(Default)]
struct State {
    /// message key -> (send start, subscribed recipients still to receive it)
    pending: HashMap<String, (Instant, usize)>,
    delivered: u64,
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
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .pending
                .insert(key.to_owned(), (Instant::now(), waiting));
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
            let micros = started.elapsed().as_micros().max(1) as u64;
            state.pending.remove(key);
            state.delivered += 1;
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
