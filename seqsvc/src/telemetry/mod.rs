//! Prometheus metrics of every server binary of the project (the seqsvc
//! roles and syncd): the recorder, the `/metrics` endpoint, the per-RPC
//! layer and the process metrics.
//!
//! Library code records through the `metrics` facade only (`counter!`,
//! `histogram!`, `gauge!`): without a recorder installed (unit tests, the
//! bench's in-process runs) those calls do nothing. Only a binary calls
//! [`install`], once, before it records anything it wants exported.
//!
//! Names follow the Prometheus conventions: base units (`_seconds`,
//! `_bytes`), `_total` on counters, and the standard names where one
//! exists (`process_*`, `grpc_server_*`). Every histogram whose name ends
//! in `_seconds` gets [`SECONDS_BUCKETS`]; the others count things (a
//! fanout's recipients, a commit group's batches) and get [`COUNT_BUCKETS`].
//! Labels only take values from closed sets (method names the server
//! knows, gRPC code names, fixed reasons), so no caller can grow the
//! number of series.
//!
//! Layout: this file installs the recorder, renders a scrape and holds the
//! readiness flag; [`endpoint`] serves them over HTTP (`/metrics`,
//! `/livez`, `/readyz`), [`rpc`] counts and times every gRPC
//! call, [`process`] reads RSS, CPU, open fds and start time from /proc.

pub mod endpoint;
pub mod process;
pub mod rpc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use endpoint::serve_metrics;

/// Whether this process is ready for traffic, as `/readyz` reports it: the
/// binary sets it (syncd from its health, the seqsvc roles once serving).
static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_ready(ready: bool) {
    READY.store(ready, std::sync::atomic::Ordering::Release);
}

pub fn is_ready() -> bool {
    READY.load(std::sync::atomic::Ordering::Acquire)
}
pub use rpc::RpcMetricsLayer;

/// Latency buckets: 0.5 ms (an fsync on a fast disk) to 10 s (the longest
/// admission wait).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Size buckets, powers of four up to the largest group (10,000 members) and
/// beyond the largest commit group (1,024 batches).
pub const COUNT_BUCKETS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics recorder: {0}")]
    Recorder(String),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Installs the recorder, binds `addr` (port 0: the system picks one) and
/// serves `/metrics` there for the rest of the process. Returns the bound
/// address, which binaries announce as `metrics listening on ADDR`.
pub async fn start(addr: std::net::SocketAddr) -> Result<std::net::SocketAddr, TelemetryError> {
    let metrics = install()?;
    let bind_error = |source| TelemetryError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    tokio::spawn(serve_metrics(listener, metrics, std::future::pending()));
    Ok(local)
}

/// The installed recorder: renders what a scrape returns.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The text exposition format: every recorded metric, then the process
    /// metrics.
    pub fn render(&self) -> String {
        // Histograms are folded into their buckets on upkeep; a scrape must
        // see every observation made before it.
        self.handle.run_upkeep();
        let mut text = self.handle.render();
        process::render(&mut text);
        text
    }
}

/// Installs the process-wide recorder (once per process; a second call
/// fails).
pub fn install() -> Result<Metrics, TelemetryError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(COUNT_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS))
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    describe_metrics();
    Ok(Metrics { handle })
}

/// The `# HELP` lines of this crate's metrics (docs/OPERATIONS.md has the
/// full table).
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_server_handled_total",
        "gRPC calls finished, by method and status code."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time from a gRPC request to its status."
    );
    describe_gauge!("grpc_server_connections_open", "TCP connections held now.");
    describe_counter!(
        "grpc_server_connections_accepted_total",
        "TCP connections accepted."
    );
    describe_counter!(
        "grpc_server_connections_closed_total",
        "TCP connections the server closed, by reason."
    );
    describe_counter!(
        "seqsvc_max_seq_raises_total",
        "Durable max_seq writes, by result."
    );
    describe_histogram!(
        "seqsvc_max_seq_raise_duration_seconds",
        Unit::Seconds,
        "Latency of durable max_seq writes."
    );
    describe_histogram!(
        "seqsvc_store_fsync_duration_seconds",
        Unit::Seconds,
        "Fsync latency of the embedded sequence store."
    );
    describe_counter!(
        "seqsvc_store_fsync_errors_total",
        "Failed fsyncs of the embedded sequence store (poisoned until a restart)."
    );
    describe_counter!(
        "seqsvc_alloc_refusals_total",
        "Requests an AllocSvr did not serve, by reason."
    );
    describe_gauge!(
        "seqsvc_arbiter_live_alloc_servers",
        "AllocSvrs the arbiter heard from recently."
    );
    describe_gauge!(
        "seqsvc_routing_table_version",
        "The routing table version the arbiter knows."
    );
    describe_counter!(
        "seqsvc_arbiter_table_writes_total",
        "Routing tables the arbiter wrote."
    );
    describe_histogram!(
        "seqsvc_client_call_duration_seconds",
        Unit::Seconds,
        "Allocator calls as their caller sees them, retries included."
    );
    describe_counter!(
        "seqsvc_client_errors_total",
        "Allocator calls that failed, by kind."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histograms render as buckets with the bounds their suffix picks.
    #[test]
    fn histograms_get_buckets_by_suffix() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(COUNT_BUCKETS)
            .unwrap()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("x_duration_seconds").record(0.003);
            metrics::histogram!("x_recipients").record(3.0);
        });
        handle.run_upkeep();
        let text = handle.render();
        assert!(
            text.contains("x_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(text.contains("x_recipients_bucket{le=\"4\"} 1"), "{text}");
        assert!(text.contains("x_recipients_bucket{le=\"1\"} 0"), "{text}");
    }
}
