//! What `bench fanout` prints and saves for one closed- or open-loop run:
//! the table of figures, the bare-CQL and Redis peers beside it, and the
//! JSON result with the plot.

use super::*;

pub(super) fn print_and_save(
    args: &FanoutArgs,
    store_kind: &str,
    timeline: &Measured,
    bare: Option<&crate::bare_cql::Bare>,
    peers: &[crate::redis_peer::PeerMeasured],
) -> anyhow::Result<()> {
    let secs = timeline.elapsed.as_secs_f64();
    let sends_per_s = timeline.sends as f64 / secs;
    let inbox_per_s = timeline.inbox_entries as f64 / secs;
    println!();
    let load = if args.rate > 0 {
        format!("open loop at {} sends/s", args.rate)
    } else {
        format!("closed loop, concurrency {}", args.concurrency)
    };
    let (search, search_on) = (args.node.search_label(), args.node.search_on());
    println!(
        "fanout on {store_kind} store, {} node(s), {search}, {load}, {:.1} s measured",
        args.node.nodes, secs
    );
    println!("{:<34} {:>12}", "sends/s", format!("{sends_per_s:.0}"));
    println!(
        "{:<34} {:>12}",
        "inbox entries durably written/s",
        format!("{inbox_per_s:.0}")
    );
    println!(
        "{:<34} {:>12}",
        "mean fanout (inbox entries/send)",
        format!(
            "{:.1}",
            timeline.inbox_entries as f64 / timeline.sends.max(1) as f64
        )
    );
    for (label, q) in [
        ("send ack p50 (ms)", 0.5),
        ("send ack p99 (ms)", 0.99),
        ("send ack p99.9 (ms)", 0.999),
    ] {
        println!(
            "{label:<34} {:>12}",
            format!("{:.2}", ms(&timeline.latency, q))
        );
    }
    for (label, q) in [
        ("delivery p50 (ms)", 0.5),
        ("delivery p99 (ms)", 0.99),
        ("delivery p99.9 (ms)", 0.999),
    ] {
        println!(
            "{label:<34} {:>12}",
            format!("{:.2}", ms(&timeline.delivery, q))
        );
    }
    println!(
        "{:<34} {:>12}",
        "delivered / not yet (messages)",
        format!("{} / {}", timeline.delivered, timeline.undelivered)
    );
    let server_cpu_percent = timeline.server_cpu_seconds.map(|cpu| 100.0 * cpu / secs);
    let bench_cpu_percent = 100.0 * timeline.bench_cpu_seconds / secs;
    let or_unknown = |value: Option<f64>, unit: &str| {
        value.map_or("unknown".to_owned(), |v| format!("{v:.0}{unit}"))
    };
    println!(
        "{:<34} {:>12}",
        "server cpu (of one core)",
        or_unknown(server_cpu_percent, "%")
    );
    println!(
        "{:<34} {:>12}",
        "server peak rss (MiB)",
        or_unknown(timeline.server_peak_rss_mib, "")
    );
    println!(
        "{:<34} {:>12}",
        "load generator cpu",
        format!("{bench_cpu_percent:.0}%")
    );
    let mut json = serde_json::json!({
        "benchmark": "fanout",
        "config": {
            "store": store_kind, "nodes": args.node.nodes, "search": search_on, "users": args.users, "conversations": args.conversations,
            "direct_share": args.direct_share, "small_group_share": args.small_group_share,
            "small_group_size": args.small_group_size, "large_group_size": args.large_group_size,
            "message_bytes": args.message_bytes, "concurrency": args.concurrency, "rate": args.rate,
            "duration_secs": args.duration_secs, "seed": args.seed, "seq_step": args.seq_step,
        },
        "timeline": {
            "sends": timeline.sends, "inbox_entries": timeline.inbox_entries,
            "elapsed_secs": secs, "sends_per_sec": sends_per_s, "inbox_entries_per_sec": inbox_per_s,
            "ack_ms": { "p50": ms(&timeline.latency, 0.5), "p99": ms(&timeline.latency, 0.99), "p999": ms(&timeline.latency, 0.999) },
            "delivery_ms": { "p50": ms(&timeline.delivery, 0.5), "p99": ms(&timeline.delivery, 0.99), "p999": ms(&timeline.delivery, 0.999) },
            "delivered_messages": timeline.delivered, "undelivered_messages": timeline.undelivered,
            "max_devices": args.max_devices, "subscribed_share": args.subscribed_share,
            "subscribed_devices": timeline.subscribed_devices,
            "server_cpu_percent": server_cpu_percent,
            "server_peak_rss_mib": timeline.server_peak_rss_mib,
            "load_generator_cpu_percent": bench_cpu_percent,
        },
    });
    if let Some(bare) = bare {
        let single = bare.single.rows_per_sec();
        let batched = bare.batched.rows_per_sec();
        let batch_rows = bare.batch_rows;
        println!(
            "{:<34} {:>12}",
            "bare driver rows/s (same conc.)",
            format!("{single:.0}")
        );
        println!(
            "{:<34} {:>12}",
            "timeline / bare driver",
            format!("{:.2}x", inbox_per_s / single)
        );
        println!(
            "{:<34} {:>12}",
            format!("bare rows/s, batches of {batch_rows}"),
            format!("{batched:.0}")
        );
        println!(
            "{:<34} {:>12}",
            "timeline / bare batched",
            format!("{:.2}x", inbox_per_s / batched)
        );
        json["bare_cql"] = serde_json::json!({
            "rows": bare.single.rows, "elapsed_secs": bare.single.elapsed.as_secs_f64(), "rows_per_sec": single,
            "ratio_timeline_to_bare": inbox_per_s / single,
            "batched": {
                "rows_per_batch": batch_rows, "rows": bare.batched.rows,
                "elapsed_secs": bare.batched.elapsed.as_secs_f64(), "rows_per_sec": batched,
                "ratio_timeline_to_bare": inbox_per_s / batched,
            },
        });
    }
    if !peers.is_empty() {
        println!();
        println!(
            "| {:<30} | {:>9} | {:>14} | {:>8} | {:>8} | {:>9} | {:>12} | {:>12} | {:>10} | {:>12} |",
            "system",
            "sends/s",
            "inbox entries/s",
            "ack p50",
            "ack p99",
            "ack p99.9",
            "delivery p50",
            "delivery p99",
            "server CPU",
            "syncd ratio"
        );
        println!("|{}|", ["---"; 10].join("|"));
        print_peer_row(
            &format!("syncd, {store_kind} store, {search}"),
            (sends_per_s, inbox_per_s),
            (&timeline.latency, &timeline.delivery),
            &or_unknown(server_cpu_percent, "%"),
            "1.00x",
        );
        let mut json_peers = Vec::new();
        for peer in peers {
            let secs = peer.elapsed.as_secs_f64();
            let peer_inbox_per_s = peer.inbox_entries as f64 / secs;
            print_peer_row(
                &format!("Redis Streams, fsync {}", peer.fsync),
                (peer.sends as f64 / secs, peer_inbox_per_s),
                (&peer.latency, &peer.delivery),
                &format!("{:.0}%", 100.0 * peer.server_cpu_seconds / secs),
                &format!("{:.2}x", inbox_per_s / peer_inbox_per_s),
            );
            json_peers.push(serde_json::json!({
                "system": "redis-streams", "appendfsync": peer.fsync,
                "sends": peer.sends, "inbox_entries": peer.inbox_entries, "elapsed_secs": secs,
                "sends_per_sec": peer.sends as f64 / secs, "inbox_entries_per_sec": peer_inbox_per_s,
                "ack_ms": { "p50": ms(&peer.latency, 0.5), "p99": ms(&peer.latency, 0.99), "p999": ms(&peer.latency, 0.999) },
                "delivery_ms": { "p50": ms(&peer.delivery, 0.5), "p99": ms(&peer.delivery, 0.99), "p999": ms(&peer.delivery, 0.999) },
                "delivered_messages": peer.delivered, "undelivered_messages": peer.undelivered,
                "server_cpu_percent": 100.0 * peer.server_cpu_seconds / secs,
                "server_peak_rss_mib": peer.server_peak_rss_mib,
                "ratio_syncd_inbox_entries_to_peer": inbox_per_s / peer_inbox_per_s,
            }));
        }
        println!(
            "syncd ratio: syncd's durable inbox entries/s over the peer's. appendfsync everysec acknowledges \
             writes before they are on disk (up to a second of them can be lost): not the same durability."
        );
        json["redis_peers"] = serde_json::Value::Array(json_peers);
    }
    let path = report::write_json("fanout", args.out.clone(), &json)?;
    println!("results: {}", path.display());
    let mut curves: Vec<(String, &Histogram<u64>)> = vec![
        ("syncd send ack".to_owned(), &timeline.latency),
        ("syncd delivery".to_owned(), &timeline.delivery),
    ];
    for peer in peers {
        curves.push((format!("Redis ({}) ack", peer.fsync), &peer.latency));
        curves.push((format!("Redis ({}) delivery", peer.fsync), &peer.delivery));
    }
    let named: Vec<(&str, &Histogram<u64>)> =
        curves.iter().map(|(n, h)| (n.as_str(), *h)).collect();
    let cdf_path = path.with_extension("cdf.svg");
    std::fs::write(
        &cdf_path,
        crate::plot::latency_cdf("fanout latency CDF", &named),
    )?;
    println!("plot: {}", cdf_path.display());
    Ok(())
}

/// One row of the side-by-side table: (sends/s, inbox entries/s), then
/// the (ack, delivery) latencies.
fn print_peer_row(
    system: &str,
    (sends_per_s, inbox_per_s): (f64, f64),
    (ack, delivery): (&Histogram<u64>, &Histogram<u64>),
    cpu: &str,
    ratio: &str,
) {
    println!(
        "| {:<30} | {:>9.0} | {:>14.0} | {:>8.2} | {:>8.2} | {:>9.2} | {:>12.2} | {:>12.2} | {:>10} | {:>12} |",
        system,
        sends_per_s,
        inbox_per_s,
        ms(ack, 0.5),
        ms(ack, 0.99),
        ms(ack, 0.999),
        ms(delivery, 0.5),
        ms(delivery, 0.99),
        cpu,
        ratio
    );
}
