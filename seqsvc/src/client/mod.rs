//! The routing client syncd and the CLI use to reach a seqsvc cluster.
//!
//! It caches the routing table (fetched from an arbiter at first use),
//! sends each id to the AllocSvr owning its slot (a batch is split per
//! owner, the parts sent concurrently), and follows "moved" replies, which
//! carry the newer table. Calls that fail retryably (an owner activating,
//! dead or partitioned) are retried with backoff for up to `retry_for`,
//! refreshing the table from the arbiters meanwhile. A seq allocated by a
//! call whose reply was lost is simply never used: gaps are allowed.
//!
//! Layout: this file is the routing client; [`node_id`] the snowflake
//! node-id grant and [`NodeIdLease`]; [`seq_source`] the [`SeqSource`]
//! syncd allocates through.

mod node_id;
mod seq_source;

pub use node_id::NodeIdLease;
#[cfg(test)]
pub(crate) use node_id::granted;
pub use seq_source::SeqSource;

use crate::allocator::MAX_BATCH_IDS;
use crate::grpc::{CALL_TIMEOUT, channel, error_from_status, namespace_to_proto, with_timeout};
use crate::routing::RoutingTable;
use crate::{Namespace, Result, SeqError};
use proto::seqsvc::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// How long a call keeps retrying before it returns the last error; covers
/// a failover (dead detection + activation) with the default timings.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

type AllocClient = pb::alloc_svr_client::AllocSvrClient<Channel>;
type ArbiterClient = pb::arbiter_client::ArbiterClient<Channel>;

#[derive(Clone)]
pub struct RoutingClient {
    inner: Arc<Inner>,
}

struct Inner {
    arbiters: Vec<(String, ArbiterClient)>,
    table: Mutex<Option<Arc<RoutingTable>>>,
    alloc_clients: Mutex<HashMap<String, AllocClient>>,
    retry_for: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one AllocSvr answered for part of a batch.
enum Part {
    Seqs(Vec<u64>),
    Moved(pb::RoutingTable),
}

impl RoutingClient {
    /// `arbiters`: their `host:port` or `http://host:port` addresses.
    pub fn new(arbiters: &[String], retry_for: Duration) -> Result<Self> {
        if arbiters.is_empty() {
            return Err(SeqError::InvalidArgument("no arbiter address given".into()));
        }
        let arbiters = arbiters
            .iter()
            .map(|url| Ok((url.clone(), ArbiterClient::new(channel(url)?))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                arbiters,
                table: Mutex::new(None),
                alloc_clients: Mutex::new(HashMap::new()),
                retry_for,
            }),
        })
    }

    /// The cached table, fetching it from an arbiter if there is none.
    pub async fn table(&self) -> Result<Arc<RoutingTable>> {
        if let Some(table) = lock(&self.inner.table).clone() {
            return Ok(table);
        }
        self.refresh().await
    }

    /// Asks the arbiters for their table and keeps the newest seen.
    pub async fn refresh(&self) -> Result<Arc<RoutingTable>> {
        let mut last_error = None;
        for (url, client) in &self.inner.arbiters {
            let mut request = tonic::Request::new(pb::GetRoutesRequest {});
            request.set_timeout(CALL_TIMEOUT);
            match client.clone().get_routes(request).await {
                Ok(reply) => {
                    if let Some(table) = reply.into_inner().table {
                        self.adopt(&table)?;
                    }
                }
                Err(status) => {
                    last_error = Some(SeqError::Unavailable(format!(
                        "arbiter {url}: {}",
                        status.message()
                    )))
                }
            }
        }
        match lock(&self.inner.table).clone() {
            Some(table) => Ok(table),
            None => Err(last_error
                .unwrap_or_else(|| SeqError::Unavailable("no arbiter has a table".into()))),
        }
    }

    /// Keeps `table` if it is newer than the cached one; returns whether it
    /// was. A "moved" with an older table (an AllocSvr that cannot read the
    /// store) teaches nothing: the caller backs off instead of looping.
    fn adopt(&self, table: &pb::RoutingTable) -> Result<bool> {
        let table = RoutingTable::from_proto(table)?;
        let mut cached = lock(&self.inner.table);
        if cached.as_ref().is_none_or(|t| t.version < table.version) {
            *cached = Some(Arc::new(table));
            return Ok(true);
        }
        Ok(false)
    }

    fn stale_move(table: &pb::RoutingTable) -> SeqError {
        SeqError::Unavailable(format!(
            "an AllocSvr answered \"moved\" with routing table version {}, not newer than ours",
            table.version
        ))
    }

    fn alloc_client(&self, addr: &str) -> Result<AllocClient> {
        let mut clients = lock(&self.inner.alloc_clients);
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let client = AllocClient::new(channel(addr)?);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// The next seq of one id.
    pub async fn next(&self, namespace: Namespace, id: u64) -> Result<u64> {
        Ok(self.next_batch(namespace, &[id]).await?[0])
    }

    /// One seq per id, `result[i]` for `ids[i]`; an id listed twice gets two
    /// increasing seqs.
    pub async fn next_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
        self.routed(namespace, ids, Call::Allocate).await
    }

    /// The highest seq handed out per id so far (linearizable with
    /// allocation: anything allocated after this returns is above it).
    pub async fn current(&self, namespace: Namespace, id: u64) -> Result<u64> {
        Ok(self.routed(namespace, &[id], Call::Current).await?[0])
    }

    /// [`current`](Self::current) of several ids, `result[i]` for `ids[i]`.
    pub async fn current_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
        self.routed(namespace, ids, Call::Current).await
    }

    async fn routed(&self, namespace: Namespace, ids: &[u64], call: Call) -> Result<Vec<u64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if ids.len() > MAX_BATCH_IDS {
            return Err(SeqError::InvalidArgument(format!(
                "{} ids in one call, at most {MAX_BATCH_IDS}",
                ids.len()
            )));
        }
        let namespace = namespace_to_proto(namespace)? as i32;
        // The common case: every id has one owner and it answers. A move
        // learnt here is kept, so the general path below starts from it.
        if let Ok(table) = self.table().await
            && let Some(owner) = table.owner_of(ids[0])
            && ids.iter().all(|&id| table.owner_of(id) == Some(owner))
        {
            match self
                .call_one(owner, namespace, ids.to_vec(), table.version, call)
                .await
            {
                Ok(Part::Seqs(seqs))
                    if seqs.len() == ids.len()
                        && !(call == Call::Allocate && seqs.contains(&0)) =>
                {
                    return Ok(seqs);
                }
                Ok(Part::Moved(newer)) => {
                    self.adopt(&newer)?;
                }
                _ => {}
            }
        }
        let deadline = tokio::time::Instant::now() + self.inner.retry_for;
        let mut out = vec![0u64; ids.len()];
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let table = match self.table().await {
                Ok(table) => table,
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(error) => return Err(error),
            };
            // Group the pending positions per owner, keeping list order so
            // repeats of an id get increasing seqs.
            let mut groups: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
            for &i in &pending {
                groups.entry(table.owner_of(ids[i])).or_default().push(i);
            }
            let mut last_error = None;
            let mut still_pending = Vec::new();
            if let Some(unowned) = groups.remove(&None) {
                last_error = Some(SeqError::Unavailable(format!(
                    "no AllocSvr serves id {} (routing table version {})",
                    ids[unowned[0]], table.version
                )));
                still_pending.extend(unowned);
            }
            let calls = groups.into_iter().map(|(owner, positions)| {
                let owner = owner.expect("unowned removed").to_owned();
                let part_ids: Vec<u64> = positions.iter().map(|&i| ids[i]).collect();
                let version = table.version;
                async move {
                    let result = self
                        .call_one(&owner, namespace, part_ids, version, call)
                        .await
                        .map_err(|e| match e {
                            SeqError::Unavailable(m) => {
                                SeqError::Unavailable(format!("AllocSvr {owner}: {m}"))
                            }
                            other => other,
                        });
                    (positions, result)
                }
            });
            let mut moved = false;
            for (positions, result) in futures_util::future::join_all(calls).await {
                match result {
                    Ok(Part::Seqs(seqs)) if seqs.len() == positions.len() => {
                        for (&i, seq) in positions.iter().zip(seqs) {
                            out[i] = seq;
                        }
                    }
                    Ok(Part::Seqs(seqs)) => {
                        return Err(SeqError::Unavailable(format!(
                            "AllocSvr answered {} seqs for {} ids",
                            seqs.len(),
                            positions.len()
                        )));
                    }
                    Ok(Part::Moved(table)) => {
                        if self.adopt(&table)? {
                            moved = true;
                        } else {
                            last_error = Some(Self::stale_move(&table));
                        }
                        still_pending.extend(positions);
                    }
                    Err(error) if error.is_retryable() => {
                        last_error = Some(error);
                        still_pending.extend(positions);
                    }
                    Err(error) => return Err(error),
                }
            }
            still_pending.sort_unstable();
            pending = still_pending;
            if pending.is_empty() {
                // Seqs start at 1: a 0 left here would be a routing bug,
                // and handing it out would break every caller's order.
                if call == Call::Allocate && out.contains(&0) {
                    return Err(SeqError::Unavailable(
                        "internal error: an id was left without a seq".into(),
                    ));
                }
                return Ok(out);
            }
            if let Some(error) = last_error {
                if tokio::time::Instant::now() >= deadline {
                    return Err(error);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // The owner may be dead or the table may have moved on.
                let _ = self.refresh().await;
            } else if !moved {
                unreachable!("pending ids without a move or an error");
            }
        }
    }

    async fn call_one(
        &self,
        addr: &str,
        namespace: i32,
        ids: Vec<u64>,
        table_version: u64,
        call: Call,
    ) -> Result<Part> {
        let request = pb::AllocateRequest {
            namespace,
            ids,
            table_version,
        };
        call_at(self.alloc_client(addr)?, call, request).await
    }
}

/// One allocate or current call at one AllocSvr. The two RPCs carry the
/// same fields; `request` is written as an allocate request for both.
async fn call_at(
    mut client: AllocClient,
    call: Call,
    request: pb::AllocateRequest,
) -> Result<Part> {
    let (seqs, moved) = match call {
        Call::Allocate => {
            let reply = client.allocate(with_timeout(request, CALL_TIMEOUT)).await;
            reply.map(|r| r.into_inner()).map(|r| (r.seqs, r.moved))
        }
        Call::Current => {
            let pb::AllocateRequest {
                namespace,
                ids,
                table_version,
            } = request;
            let request = pb::CurrentRequest {
                namespace,
                ids,
                table_version,
            };
            let reply = client.current(with_timeout(request, CALL_TIMEOUT)).await;
            reply.map(|r| r.into_inner()).map(|r| (r.seqs, r.moved))
        }
    }
    .map_err(error_from_status)?;
    Ok(match moved {
        Some(table) => Part::Moved(table),
        None => Part::Seqs(seqs),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Allocate,
    Current,
}

/// One call straight to one AllocSvr, with no routing and no retry: for
/// tools and tests that must see exactly what that process answers.
pub async fn allocate_at(
    addr: &str,
    namespace: Namespace,
    ids: Vec<u64>,
    table_version: u64,
) -> Result<std::result::Result<Vec<u64>, RoutingTable>> {
    let request = pb::AllocateRequest {
        namespace: namespace_to_proto(namespace)? as i32,
        ids,
        table_version,
    };
    match call_at(AllocClient::new(channel(addr)?), Call::Allocate, request).await? {
        Part::Moved(table) => Ok(Err(RoutingTable::from_proto(&table)?)),
        Part::Seqs(seqs) => Ok(Ok(seqs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::LeaseConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic::service::Routes;
    use tonic::{Request, Response, Status};

    /// An arbiter that hands out `table`.
    struct FixedArbiter {
        table: pb::RoutingTable,
    }

    #[tonic::async_trait]
    impl pb::arbiter_server::Arbiter for FixedArbiter {
        async fn heartbeat(
            &self,
            _: Request<pb::HeartbeatRequest>,
        ) -> Result<Response<pb::HeartbeatReply>, Status> {
            Ok(Response::new(pb::HeartbeatReply {
                table_version: self.table.version,
            }))
        }

        async fn get_routes(
            &self,
            _: Request<pb::GetRoutesRequest>,
        ) -> Result<Response<pb::GetRoutesReply>, Status> {
            Ok(Response::new(pb::GetRoutesReply {
                table: Some(self.table.clone()),
            }))
        }
    }

    /// An AllocSvr stuck on an older table: answers every call "moved".
    struct StaleAllocSvr {
        old_table: pb::RoutingTable,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl pb::alloc_svr_server::AllocSvr for StaleAllocSvr {
        async fn allocate(
            &self,
            _: Request<pb::AllocateRequest>,
        ) -> Result<Response<pb::AllocateReply>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(pb::AllocateReply {
                seqs: Vec::new(),
                moved: Some(self.old_table.clone()),
            }))
        }

        async fn current(
            &self,
            _: Request<pb::CurrentRequest>,
        ) -> Result<Response<pb::CurrentReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn lease_node_id(
            &self,
            _: Request<pb::LeaseNodeIdRequest>,
        ) -> Result<Response<pb::LeaseNodeIdReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn get_routes(
            &self,
            _: Request<pb::GetRoutesRequest>,
        ) -> Result<Response<pb::GetRoutesReply>, Status> {
            Ok(Response::new(pb::GetRoutesReply {
                table: Some(self.old_table.clone()),
            }))
        }
    }

    async fn serve(routes: Routes) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(crate::grpc::serve(
            listener,
            routes,
            None,
            std::future::pending(),
        ));
        addr
    }

    #[tokio::test]
    async fn a_move_to_an_older_table_backs_off_and_fails_in_time() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut old = RoutingTable::initial(10, LeaseConfig::default()).unwrap();
        old.owners = vec![Some("127.0.0.1:1".into()); old.owners.len()];
        let alloc = serve(Routes::new(pb::alloc_svr_server::AllocSvrServer::new(
            StaleAllocSvr {
                old_table: old.to_proto(),
                calls: Arc::clone(&calls),
            },
        )))
        .await;
        let mut newer = old.clone();
        newer.version = 2;
        newer.owners = vec![Some(alloc); newer.owners.len()];
        let arbiter = serve(Routes::new(pb::arbiter_server::ArbiterServer::new(
            FixedArbiter {
                table: newer.to_proto(),
            },
        )))
        .await;
        let client = RoutingClient::new(&[arbiter], Duration::from_millis(400)).unwrap();
        let error = client.next(Namespace::Inbox, 5).await.unwrap_err();
        assert!(error.to_string().contains("not newer"), "{error}");
        let calls = calls.load(Ordering::SeqCst);
        // Backoff from 20 ms doubling: a handful of calls in 400 ms, not a
        // busy loop.
        assert!((2..=12).contains(&calls), "{calls} calls");
    }
}
