//! `bench`: measures Timeline under load and runs peers side by side.
//!
//! `bench fanout` starts a syncd node in this process (embedded store by
//! default, or `--store scylla://...`), creates the W1 conversation mix over
//! the public gRPC API, then drives sends from `--concurrency` clients for
//! `--duration-secs` and reports send acknowledgement latency and durable
//! inbox entries per second. With a ScyllaDB store, `--bare-cql` also inserts
//! the same kind of rows with a bare prepared-statement loop at the same
//! concurrency, for the ratio. `bench catchup` times a device pulling a long
//! backlog with Sync. `bench burst` measures the server's peak memory while
//! the members of one large group all send large messages at once. `bench
//! readstate` times the conversation list, incremental updates and marks
//! (in a small conversation and a 10,000-member group). Setup (server start, conversation creation, schema,
//! filling a backlog) is excluded from every measured window. `bench seq`
//! compares sequence allocation with Redis INCR; `bench devices` holds many
//! push subscriptions open (`--centrifugo-peer`: and the same against
//! Centrifugo); `bench all` runs them all.

mod all;
mod bare_cql;
mod burst;
mod catchup;
mod centrifugo;
mod closed_loop;
mod delivery;
mod devices;
mod fanout;
mod history_search;
mod huge_group;
mod node;
mod open_loop;
mod plot;
mod procs;
mod read_state;
mod redis_peer;
mod report;
mod search_lag;
mod seq;
mod sweep;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Timeline benchmarks: workloads and peers side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages through syncd and measure fanout throughput and latency.
    Fanout(fanout::FanoutArgs),
    /// Time a device catching up on a long offline period with Sync.
    Catchup(catchup::CatchupArgs),
    /// Sequence allocation: in-process, seqsvc over gRPC, and Redis INCR.
    Seq(seq::SeqArgs),
    /// Members of one large group all sending large messages at once:
    /// the server's peak memory and bytes written.
    Burst(burst::BurstArgs),
    /// Read state: the conversation list, incremental updates and marks.
    Readstate(read_state::ReadStateArgs),
    /// Many push subscriptions held open over fewer connections: server
    /// memory per subscription and per connection, idle and under a send
    /// rate, and delivery latency (`--centrifugo-peer`: then the same
    /// against Centrifugo, side by side).
    Devices(devices::DevicesArgs),
    /// History search, the embedded index and OpenSearch side by side:
    /// indexing throughput and query latency over a large history, and the
    /// index's lag behind a live node's sends under W1.
    Search(history_search::SearchArgs),
    /// Every benchmark in turn (`--quick`: a smoke run under three minutes).
    All(all::AllArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Fanout(args) => runtime.block_on(fanout::run(args)),
        Command::Catchup(args) => runtime.block_on(catchup::run(args)),
        Command::Seq(args) => runtime.block_on(seq::run(args)),
        Command::Burst(args) => runtime.block_on(burst::run(args)),
        Command::Readstate(args) => runtime.block_on(read_state::run(args)),
        Command::Devices(args) => runtime.block_on(devices::run(args)),
        Command::Search(args) => history_search::run(args),
        Command::All(args) => all::run(args),
    }
}
