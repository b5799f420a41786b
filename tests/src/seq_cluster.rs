//! A seqsvc cluster of real processes (store, arbiters, AllocSvrs) for the
//! multi-process tests, a load of concurrent routing clients that records
//! every seq it is given, and the one checker every scenario runs.

use crate::{Process, seqsvc_bin};
use anyhow::{Context, Result, bail};
use seqsvc::client::RoutingClient;
use seqsvc::routing::RoutingTable;
use seqsvc::{Namespace, SharedStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Short timings so failovers take about two seconds; the relation
/// activation > lease + sync interval holds as in production.
pub const SECTION_SIZE: u64 = 10;
pub const STEP: u64 = 100;
pub const LEASE_MS: u64 = 1_000;
pub const SYNC_MS: u64 = 200;
pub const ACTIVATION_MS: u64 = 1_300;
pub const DEAD_AFTER_MS: u64 = 800;

pub struct Cluster {
    /// The `seqsvc store` process; `None` on a CQL store.
    pub store: Option<Process>,
    store_url: String,
    _keyspace: Option<crate::CqlKeyspace>,
    pub arbiters: Vec<Process>,
    pub allocs: Vec<Process>,
    /// While this file exists the store fails every max_seq raise.
    pub fail_raises_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster on a `seqsvc store` process.
    pub fn start(arbiters: usize, allocs: usize) -> Result<Self> {
        Self::start_on(None, arbiters, allocs)
    }

    /// A cluster whose processes serve only TLS with `ca`'s server
    /// certificate and call each other over TLS.
    pub fn start_with_tls(ca: &crate::tls::TestCa, arbiters: usize, allocs: usize) -> Result<Self> {
        let mut tls = ca.server_args();
        tls.extend([
            "--tls-ca-cert".to_owned(),
            ca.ca().to_string_lossy().into_owned(),
        ]);
        Self::start_with(None, tls, arbiters, allocs)
    }

    /// A cluster whose shared store is a keyspace of its own on the test
    /// CQL server (fails, never skips, without one).
    pub fn start_on_cql(test_name: &str, arbiters: usize, allocs: usize) -> Result<Self> {
        Self::start_on(Some(crate::CqlKeyspace::new(test_name)), arbiters, allocs)
    }

    fn start_on(
        keyspace: Option<crate::CqlKeyspace>,
        arbiters: usize,
        allocs: usize,
    ) -> Result<Self> {
        Self::start_with(keyspace, Vec::new(), arbiters, allocs)
    }

    /// `tls`: arguments every process gets (its certificate, the CA).
    fn start_with(
        keyspace: Option<crate::CqlKeyspace>,
        tls: Vec<String>,
        arbiters: usize,
        allocs: usize,
    ) -> Result<Self> {
        let scheme = if tls.is_empty() { "http" } else { "https" };
        let dir = tempfile::tempdir()?;
        let fail_raises_file = dir.path().join("fail-raises");
        let data = dir.path().join("store");
        let (store, store_url) = match &keyspace {
            Some(keyspace) => (None, keyspace.url.clone()),
            None => {
                let mut args = vec![
                    "store",
                    "--data-dir",
                    data.to_str().context("utf-8 path")?,
                    "--fail-raises-while",
                    fail_raises_file.to_str().context("utf-8 path")?,
                ];
                args.extend(tls.iter().map(String::as_str));
                let store = Process::start(&seqsvc_bin(), &args)?;
                let url = format!("{scheme}://{}", store.addr);
                (Some(store), url)
            }
        };
        let mut arbiter_args = vec![
            "arbiter".to_owned(),
            "--store".to_owned(),
            store_url.clone(),
            "--section-size".to_owned(),
            SECTION_SIZE.to_string(),
            "--lease-ms".to_owned(),
            LEASE_MS.to_string(),
            "--sync-interval-ms".to_owned(),
            SYNC_MS.to_string(),
            "--activation-ms".to_owned(),
            ACTIVATION_MS.to_string(),
            "--dead-after-ms".to_owned(),
            DEAD_AFTER_MS.to_string(),
            "--check-interval-ms".to_owned(),
            "100".to_owned(),
        ];
        arbiter_args.extend(tls.iter().cloned());
        let arbiter_args: Vec<&str> = arbiter_args.iter().map(String::as_str).collect();
        // Started together: they race for the first table.
        let arbiters = std::thread::scope(|s| {
            let started: Vec<_> = (0..arbiters)
                .map(|_| s.spawn(|| Process::start(&seqsvc_bin(), &arbiter_args)))
                .collect();
            started
                .into_iter()
                .map(|h| h.join().expect("arbiter start thread"))
                .collect::<Result<Vec<_>>>()
        })?;
        let arbiter_list = arbiters
            .iter()
            .map(|a| a.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let step = STEP.to_string();
        let mut alloc_args = vec![
            "alloc",
            "--store",
            &store_url,
            "--arbiter",
            &arbiter_list,
            "--step",
            &step,
        ];
        alloc_args.extend(tls.iter().map(String::as_str));
        let allocs = (0..allocs)
            .map(|_| Process::start(&seqsvc_bin(), &alloc_args))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            store,
            store_url,
            _keyspace: keyspace,
            arbiters,
            allocs,
            fail_raises_file,
            _dir: dir,
        })
    }

    pub fn arbiter_addrs(&self) -> Vec<String> {
        self.arbiters.iter().map(|a| a.addr.clone()).collect()
    }

    /// The shared store, as the AllocSvrs reach it.
    pub async fn store_client(&self) -> Result<Arc<dyn SharedStore>> {
        Ok(seqsvc::grpc::open_store(&self.store_url).await?)
    }

    /// The routing table as stored (the authority AllocSvrs lease from).
    pub async fn routes(&self) -> Result<RoutingTable> {
        self.store_client()
            .await?
            .read_routes()
            .await?
            .context("no routing table stored")
    }

    /// Waits until the stored table satisfies `ready`.
    pub async fn wait_for_routes(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&RoutingTable) -> bool,
    ) -> Result<RoutingTable> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(table) = self.routes().await
                && ready(&table)
            {
                return Ok(table);
            }
            if Instant::now() > deadline {
                bail!("routing table never {what} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running AllocSvr owns slots and no slot is free.
    pub async fn wait_balanced(&self) -> Result<RoutingTable> {
        let running: HashSet<String> = self
            .allocs
            .iter()
            .filter(|a| a.is_running())
            .map(|a| a.addr.clone())
            .collect();
        self.wait_for_routes("balanced", Duration::from_secs(30), |t| {
            let load = t.load();
            load.len() == running.len()
                && load.keys().all(|a| running.contains(*a))
                && load.values().sum::<usize>() == t.owners.len()
        })
        .await
    }

    /// Kills (SIGKILL) the AllocSvr that owns `slot` in the stored table.
    /// Returns the table before, the victim's address and when it died.
    pub async fn kill_owner_of_slot(
        &mut self,
        slot: u32,
    ) -> Result<(RoutingTable, String, Instant)> {
        let before = self.routes().await?;
        let victim_addr = before
            .owner_of_slot(slot)
            .context("slot has no owner")?
            .to_owned();
        let victim = self
            .alloc_index(&victim_addr)
            .context("the owner is not one of ours")?;
        self.allocs[victim].kill9();
        Ok((before, victim_addr, Instant::now()))
    }

    /// Freezes (SIGSTOP) the AllocSvr at `addr` and waits until the stored
    /// table gives it nothing. Returns when it was frozen and that table.
    pub async fn freeze_until_moved(&self, addr: &str) -> Result<(Instant, RoutingTable)> {
        let victim = self.alloc_index(addr).context("not one of ours")?;
        self.allocs[victim].freeze()?;
        let frozen_at = Instant::now();
        let moved = self
            .wait_for_routes(
                "moved off the frozen AllocSvr",
                Duration::from_secs(30),
                |t| !t.load().contains_key(addr),
            )
            .await?;
        Ok((frozen_at, moved))
    }

    pub fn alloc_index(&self, addr: &str) -> Option<usize> {
        self.allocs.iter().position(|a| a.addr == addr)
    }
}

/// One seq handed to a client, with when the call started and ended.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub id: u64,
    pub seq: u64,
    pub start: Instant,
    pub end: Instant,
}

#[derive(Default)]
pub struct Outcome {
    pub records: Vec<Record>,
    /// (when, message) of every failed call.
    pub errors: Vec<(Instant, String)>,
}

/// Concurrent clients allocating for random ids until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
}

impl Load {
    /// `clients` routing clients (each like one syncd node with its own
    /// table cache), `tasks_per_client` callers each, ids in `0..ids`.
    pub fn start(
        arbiters: &[String],
        clients: usize,
        tasks_per_client: usize,
        ids: u64,
        retry_for: Duration,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = RoutingClient::new(arbiters, retry_for)?;
            for t in 0..tasks_per_client {
                let client = client.clone();
                let stop = Arc::clone(&stop);
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c * 1_000 + t) as u64 + 1);
                tasks.push(tokio::spawn(async move {
                    let mut outcome = Outcome::default();
                    while !stop.load(Ordering::Relaxed) {
                        let count = 1 + next_random(&mut rng) % 4;
                        let batch: Vec<u64> =
                            (0..count).map(|_| next_random(&mut rng) % ids).collect();
                        let start = Instant::now();
                        match client.next_batch(Namespace::Inbox, &batch).await {
                            Ok(seqs) => {
                                let end = Instant::now();
                                outcome
                                    .records
                                    .extend(batch.iter().zip(seqs).map(|(&id, seq)| Record {
                                        id,
                                        seq,
                                        start,
                                        end,
                                    }));
                            }
                            Err(error) => {
                                outcome.errors.push((Instant::now(), error.to_string()));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    outcome
                }));
            }
        }
        Ok(Self { stop, tasks })
    }

    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Outcome::default();
        for task in self.tasks {
            let outcome = task.await.expect("load task panicked");
            all.records.extend(outcome.records);
            all.errors.extend(outcome.errors);
        }
        all
    }
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*: plenty for spreading ids, and reproducible.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// What the checker saw.
#[derive(Debug)]
pub struct Checked {
    pub seqs: usize,
    pub ids: usize,
}

/// The invariants of every scenario: per id no seq twice; a call that
/// ended before another started got a lower seq (strictly increasing in
/// real time); every seq at or below its section's persisted max_seq.
pub async fn check(cluster: &Cluster, records: &[Record]) -> Result<Checked> {
    let mut per_id: HashMap<u64, Vec<Record>> = HashMap::new();
    for r in records {
        per_id.entry(r.id).or_default().push(*r);
    }
    let mut stored: BTreeMap<u64, u64> = BTreeMap::new();
    let store = cluster.store_client().await?;
    for (id, list) in &mut per_id {
        let mut seen = HashSet::new();
        for r in list.iter() {
            if !seen.insert(r.seq) {
                bail!("id {id}: seq {} handed out twice", r.seq);
            }
        }
        // Real-time order: walk calls by start; every call that ended
        // before this one started must have a lower seq.
        let mut by_end = list.clone();
        by_end.sort_by_key(|r| r.end);
        list.sort_by_key(|r| r.start);
        let mut ended = 0;
        let mut max_ended: Option<Record> = None;
        for r in list.iter() {
            while ended < by_end.len() && by_end[ended].end < r.start {
                if max_ended.is_none_or(|m| by_end[ended].seq > m.seq) {
                    max_ended = Some(by_end[ended]);
                }
                ended += 1;
            }
            if let Some(m) = max_ended
                && r.seq <= m.seq
            {
                bail!(
                    "id {id}: seq {} given after seq {} had already been returned (went backwards)",
                    r.seq,
                    m.seq
                );
            }
        }
        let section = id / SECTION_SIZE;
        let max_seq = match stored.get(&section) {
            Some(&v) => v,
            None => {
                let v = store.load(Namespace::Inbox, section).await?;
                stored.insert(section, v);
                v
            }
        };
        let highest = list.iter().map(|r| r.seq).max().unwrap_or(0);
        if highest > max_seq {
            bail!("id {id}: seq {highest} above the persisted max_seq {max_seq}");
        }
    }
    Ok(Checked {
        seqs: records.len(),
        ids: per_id.len(),
    })
}
