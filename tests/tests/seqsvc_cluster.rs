//! seqsvc as a cluster of real processes: failover, fencing, arbiter
//! restarts, store failures and full restarts, each checked by the same
//! checker (no seq twice, never backwards in real time, nothing above the
//! persisted max_seq).

use anyhow::{Result, ensure};
use seqsvc::Namespace;
use seqsvc::client::{RoutingClient, allocate_at};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tests::seq_cluster::{Cluster, Load, Record, SECTION_SIZE, STEP, check};

const RETRY_FOR: Duration = Duration::from_secs(30);
const IDS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_fails_over_to_higher_seqs() -> Result<()> {
    let mut cluster = Cluster::start(1, 3)?;
    cluster.wait_balanced().await?;
    let load = Load::start(&cluster.arbiter_addrs(), 3, 4, IDS, RETRY_FOR)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, victim_addr, killed_at) = cluster.kill_owner_of_slot(0).await?;
    let after = cluster.wait_balanced().await?;
    ensure!(!after.load().contains_key(victim_addr.as_str()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outcome = load.stop().await;
    let checked = check(&cluster, &outcome.records).await?;

    let victim_slot = |r: &Record| before.owner_of(r.id) == Some(victim_addr.as_str());
    let served_before = outcome
        .records
        .iter()
        .filter(|r| victim_slot(r) && r.end < killed_at)
        .count();
    let first_after = outcome
        .records
        .iter()
        .filter(|r| victim_slot(r) && r.start > killed_at)
        .map(|r| r.end)
        .min();
    ensure!(
        served_before > 0,
        "the victim served nothing before the kill"
    );
    let Some(first_after) = first_after else {
        anyhow::bail!("the killed AllocSvr's sections were never served again");
    };
    eprintln!(
        "failover: {} seqs for {} ids checked; the killed AllocSvr's sections were unavailable for {:?} \
         (dead after {} ms + activation {} ms with these timings); {} calls failed",
        checked.seqs,
        checked.ids,
        first_after - killed_at,
        tests::seq_cluster::DEAD_AFTER_MS,
        tests::seq_cluster::ACTIVATION_MS,
        outcome.errors.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_owner_refuses_its_moved_sections_after_resume() -> Result<()> {
    let cluster = Cluster::start(1, 2)?;
    cluster.wait_balanced().await?;
    let load = Load::start(&cluster.arbiter_addrs(), 2, 4, IDS, RETRY_FOR)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cluster.routes().await?;
    let victim_addr = before.owner_of_slot(0).expect("slot 0 owned").to_owned();
    let victim = &cluster.allocs[cluster.alloc_index(&victim_addr).expect("ours")];
    // An id the victim served, to ask it for again later.
    let probe_id = (0..IDS)
        .find(|&id| before.owner_of(id) == Some(victim_addr.as_str()))
        .expect("victim owns ids");
    let (frozen_at, moved) = cluster.freeze_until_moved(&victim_addr).await?;
    // Let the new owner activate and serve the moved sections.
    let new_owner = moved.owner_of(probe_id).expect("reassigned").to_owned();
    let client = RoutingClient::new(&cluster.arbiter_addrs(), RETRY_FOR)?;
    let served_by_new = client.next(Namespace::Inbox, probe_id).await?;
    victim.thaw()?;
    let thawed_at = Instant::now();
    // Straight at the resumed process, with a stale table version and with
    // the current one: every answer must be a refusal or a "moved".
    let mut refusals = 0;
    for round in 0..40 {
        let version = if round % 2 == 0 { 0 } else { moved.version };
        match allocate_at(&victim_addr, Namespace::Inbox, vec![probe_id], version).await {
            Ok(Ok(seqs)) => {
                anyhow::bail!("resumed AllocSvr handed out {seqs:?} for a section it lost")
            }
            Ok(Err(table)) => ensure!(table.owner_of(probe_id) != Some(victim_addr.as_str())),
            Err(_) => {}
        }
        refusals += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let after_thaw = client.next(Namespace::Inbox, probe_id).await?;
    ensure!(after_thaw > served_by_new);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = load.stop().await;
    let checked = check(&cluster, &outcome.records).await?;
    eprintln!(
        "fencing: frozen for {:?}; new owner {new_owner}; {refusals} direct calls to the resumed process all refused; {} seqs for {} ids checked",
        thawed_at - frozen_at,
        checked.seqs,
        checked.ids
    );
    Ok(())
}

/// Item 1 of the adversarial review across processes. The owner of the
/// high slots is frozen (SIGSTOP) past its lease while the other AllocSvr
/// takes its sections over and allocates; heartbeats in its name (as if
/// only its store reads were cut off) make the arbiter give the same slots
/// back while it is still frozen, so the first table it reads after SIGCONT
/// returns them without the version in between. Nothing it answers, to the
/// load or straight at it, may repeat a seq or go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_owner_given_its_slots_back_never_reissues_seqs() -> Result<()> {
    let cluster = Cluster::start(1, 2)?;
    let before = cluster.wait_balanced().await?;
    // Rebalancing hands a returning AllocSvr the highest slots, so the
    // owner of the last slot gets back exactly the slots it had.
    let victim_addr = before
        .owner_of_slot(before.slot_count() - 1)
        .expect("last slot owned")
        .to_owned();
    let victim = &cluster.allocs[cluster.alloc_index(&victim_addr).expect("ours")];
    let probe_id = (0..IDS)
        .rev()
        .find(|&id| before.owner_of(id) == Some(victim_addr.as_str()))
        .expect("victim owns ids");
    let load = Load::start(&cluster.arbiter_addrs(), 2, 4, IDS, RETRY_FOR)?;
    let client = RoutingClient::new(&cluster.arbiter_addrs(), RETRY_FOR)?;
    let mut probes = Vec::new();
    let probe = async |probes: &mut Vec<Record>| -> Result<u64> {
        let start = Instant::now();
        let seq = client.next(Namespace::Inbox, probe_id).await?;
        probes.push(Record {
            id: probe_id,
            seq,
            start,
            end: Instant::now(),
        });
        Ok(seq)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe(&mut probes).await?;
    let (frozen_at, moved) = cluster.freeze_until_moved(&victim_addr).await?;
    // The new owner activates, serves and raises the moved sections.
    client.refresh().await?;
    let served_by_new = probe(&mut probes).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let served_by_new = served_by_new.max(probe(&mut probes).await?);
    let mut arbiter = proto::seqsvc::v1::arbiter_client::ArbiterClient::connect(format!(
        "http://{}",
        cluster.arbiters[0].addr
    ))
    .await?;
    let name = victim_addr.clone();
    let impersonating = tokio::spawn(async move {
        loop {
            let request = proto::seqsvc::v1::HeartbeatRequest { addr: name.clone() };
            let _ = arbiter.heartbeat(request).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let back = cluster
        .wait_for_routes(
            "given back to the frozen AllocSvr",
            Duration::from_secs(30),
            |t| t.version > moved.version && t.owner_of(probe_id) == Some(victim_addr.as_str()),
        )
        .await;
    impersonating.abort();
    let back = back?;
    // The other owner reads the newer table and stops serving them.
    tokio::time::sleep(Duration::from_millis(2 * tests::seq_cluster::SYNC_MS)).await;
    victim.thaw()?;
    let thawed_at = Instant::now();
    // Straight at the resumed process, through and past its activation:
    // a refusal, a "moved", or a seq above everything handed out before.
    let mut direct = Vec::new();
    for _ in 0..120 {
        let start = Instant::now();
        if let Ok(Ok(seqs)) =
            allocate_at(&victim_addr, Namespace::Inbox, vec![probe_id], back.version).await
        {
            ensure!(
                seqs[0] > served_by_new,
                "resumed AllocSvr handed out seq {} for id {probe_id} after the other owner reached {served_by_new}",
                seqs[0]
            );
            direct.push(Record {
                id: probe_id,
                seq: seqs[0],
                start,
                end: Instant::now(),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ensure!(
        !direct.is_empty(),
        "the resumed AllocSvr never served its sections again"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut outcome = load.stop().await;
    outcome.records.extend(probes);
    outcome.records.extend(direct.iter().copied());
    let checked = check(&cluster, &outcome.records).await?;
    let served_after = outcome
        .records
        .iter()
        .filter(|r| r.start > thawed_at && back.owner_of(r.id) == Some(victim_addr.as_str()))
        .count();
    eprintln!(
        "regained: frozen for {:?}; versions {} -> {} -> {}; {} direct seqs after the thaw, all above {served_by_new}; \
         {served_after} seqs of its sections after the thaw; {} seqs for {} ids checked",
        thawed_at - frozen_at,
        before.version,
        moved.version,
        back.version,
        direct.len(),
        checked.seqs,
        checked.ids
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbiters_race_restart_and_never_reuse_a_version() -> Result<()> {
    let mut cluster = Cluster::start(2, 2)?;
    let balanced = cluster.wait_balanced().await?;
    let load = Load::start(&cluster.arbiter_addrs(), 2, 4, IDS, RETRY_FOR)?;
    // Watch the stored table: versions only rise, one content per version.
    let watcher_cluster_store = cluster.store_client().await?;
    let watching = tokio::spawn(async move {
        let mut seen: HashMap<u64, seqsvc::routing::RoutingTable> = HashMap::new();
        let mut last = 0;
        for _ in 0..160 {
            if let Ok(Some(table)) = watcher_cluster_store.read_routes().await {
                assert!(
                    table.version >= last,
                    "version went back to {}",
                    table.version
                );
                last = table.version;
                if let Some(earlier) = seen.get(&table.version) {
                    assert!(
                        earlier.same_content(&table),
                        "version {} reused for different content",
                        table.version
                    );
                }
                seen.insert(table.version, table);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen.len()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Both arbiters down: AllocSvrs keep serving on their leases.
    cluster.arbiters[0].kill9();
    cluster.arbiters[1].kill9();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.arbiters[0].restart()?;
    cluster.arbiters[1].restart()?;
    let up_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = load.stop().await;
    let versions_seen = watching.await?;
    let checked = check(&cluster, &outcome.records).await?;
    let served_while_down = outcome
        .records
        .iter()
        .filter(|r| r.start > down_at && r.end < up_at)
        .count();
    ensure!(
        served_while_down > 0,
        "nothing served while the arbiters were down"
    );
    let failed_while_down = outcome
        .errors
        .iter()
        .filter(|(at, _)| *at > down_at && *at < up_at)
        .count();
    ensure!(
        failed_while_down == 0,
        "{failed_while_down} calls failed while arbiters were down"
    );
    // A restart does not reshuffle a healthy cluster.
    let after = cluster.routes().await?;
    ensure!(
        after.same_content(&balanced),
        "assignment changed across arbiter restarts (version {} -> {})",
        balanced.version,
        after.version
    );
    eprintln!(
        "arbiters: {} seqs for {} ids checked; {served_while_down} served while both arbiters were down; \
         {versions_seen} table versions observed, final version {}",
        checked.seqs, checked.ids, after.version
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_raise_failure_is_an_error_never_a_seq_above_stored() -> Result<()> {
    let cluster = Cluster::start(1, 2)?;
    cluster.wait_balanced().await?;
    // Let the sections activate before the load starts.
    let warm = RoutingClient::new(&cluster.arbiter_addrs(), RETRY_FOR)?;
    warm.next(Namespace::Inbox, 0).await?;
    // Few ids, so sections run through their steps and must raise max_seq
    // while the store fails.
    let load = Load::start(
        &cluster.arbiter_addrs(),
        2,
        4,
        20,
        Duration::from_millis(200),
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(&cluster.fail_raises_file, b"")?;
    let failing_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&cluster.fail_raises_file)?;
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let outcome = load.stop().await;
    let checked = check(&cluster, &outcome.records).await?;
    let injected = outcome
        .errors
        .iter()
        .filter(|(at, message)| {
            *at > failing_from
                && *at < healed_at + Duration::from_millis(300)
                && message.contains("injected raise failure")
        })
        .count();
    ensure!(
        injected > 0,
        "no call reported the store failure: {:?}",
        outcome.errors.first()
    );
    let served_after = outcome
        .records
        .iter()
        .filter(|r| r.start > healed_at + Duration::from_millis(300))
        .count();
    ensure!(
        served_after > 0,
        "allocation did not resume after the store healed"
    );
    eprintln!(
        "store failure: {injected} calls answered with the store error; {} seqs for {} ids checked",
        checked.seqs, checked.ids
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_every_process_continues_upward_within_one_step() -> Result<()> {
    let mut cluster = Cluster::start(1, 2)?;
    cluster.wait_balanced().await?;
    let load = Load::start(&cluster.arbiter_addrs(), 2, 4, 200, RETRY_FOR)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = load.stop().await;
    check(&cluster, &outcome.records).await?;
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut highest_in_section: HashMap<u64, u64> = HashMap::new();
    for r in &outcome.records {
        let l = last.entry(r.id).or_default();
        *l = (*l).max(r.seq);
        let h = highest_in_section.entry(r.id / SECTION_SIZE).or_default();
        *h = (*h).max(r.seq);
    }
    let store = cluster.store.as_mut().expect("a store process");
    store.kill9();
    for arbiter in &mut cluster.arbiters {
        arbiter.kill9();
    }
    for alloc in &mut cluster.allocs {
        alloc.kill9();
    }
    store.restart()?;
    for arbiter in &mut cluster.arbiters {
        arbiter.restart()?;
    }
    for alloc in &mut cluster.allocs {
        alloc.restart()?;
    }
    let client = RoutingClient::new(&cluster.arbiter_addrs(), RETRY_FOR)?;
    let mut records = outcome.records.clone();
    let mut max_jump = 0;
    for (&id, &before) in &last {
        let start = Instant::now();
        let seq = client.next(Namespace::Inbox, id).await?;
        records.push(Record {
            id,
            seq,
            start,
            end: Instant::now(),
        });
        let bound = highest_in_section[&(id / SECTION_SIZE)] + STEP + 1;
        ensure!(
            seq > before,
            "id {id}: {seq} after a restart, {before} before"
        );
        ensure!(
            seq <= bound,
            "id {id}: jumped from {before} to {seq} (bound {bound})"
        );
        max_jump = max_jump.max(seq - before);
    }
    let checked = check(&cluster, &records).await?;
    eprintln!(
        "restart: {} ids continued upward, largest jump {max_jump} (step {STEP}); {} seqs checked",
        last.len(),
        checked.seqs
    );
    Ok(())
}

fn seqsvc(args: &[&str]) -> std::process::Output {
    std::process::Command::new(tests::seqsvc_bin())
        .args(args)
        .output()
        .expect("running seqsvc")
}

/// An arbiter whose activation delay does not exceed its lease plus the
/// sync interval (a new owner could serve while the old one still does).
const ACTIVATION_TOO_SHORT: [&str; 7] = [
    "arbiter",
    "--store",
    "http://127.0.0.1:1",
    "--lease-ms",
    "5000",
    "--activation-ms",
    "5500",
];

/// `seqsvc next --namespace user --id ID`, asking `via` (`--arbiter ADDR`
/// or `--alloc ADDR`).
fn next_user_seq(via: &[&str], id: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["next"];
    args.extend(via);
    args.extend(["--namespace", "user", "--id", id]);
    args.extend(extra);
    seqsvc(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_allocates_prints_routes_and_rejects_bad_input() -> Result<()> {
    let cluster = Cluster::start(1, 2)?;
    cluster.wait_balanced().await?;
    let arbiter = cluster.arbiters[0].addr.clone();
    let out = next_user_seq(&["--arbiter", &arbiter], "42", &["--count", "3"]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seqs: Vec<u64> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(
        seqs.len() == 3 && seqs.windows(2).all(|w| w[0] < w[1]),
        "{seqs:?}"
    );

    let out = seqsvc(&["routes", "--arbiter", &arbiter]);
    let text = String::from_utf8(out.stdout)?;
    ensure!(out.status.success());
    ensure!(text.contains("section_size 10"), "{text}");
    for alloc in &cluster.allocs {
        ensure!(
            text.contains(&format!("owner {} slots 128", alloc.addr)),
            "{text}"
        );
    }

    // The AllocSvr that does not own id 42, asked directly: "moved".
    let table = cluster.routes().await?;
    let other = cluster
        .allocs
        .iter()
        .find(|a| table.owner_of(42) != Some(a.addr.as_str()))
        .expect("two AllocSvrs");
    let out = next_user_seq(&["--alloc", &other.addr], "42", &[]);
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("moved"));

    for bad in [
        vec![
            "next",
            "--arbiter",
            &arbiter,
            "--namespace",
            "user",
            "--id",
            "1",
            "--count",
            "0",
        ],
        vec![
            "next",
            "--arbiter",
            &arbiter,
            "--namespace",
            "planets",
            "--id",
            "1",
        ],
        vec!["next", "--namespace", "user", "--id", "1"],
        ACTIVATION_TOO_SHORT.to_vec(),
        vec!["alloc", "--store", "ftp://x", "--arbiter", &arbiter],
    ] {
        let out = seqsvc(&bad);
        ensure!(!out.status.success(), "{bad:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!stderr.trim().is_empty(), "{bad:?}: no message");
    }
    let out = seqsvc(&ACTIVATION_TOO_SHORT);
    ensure!(String::from_utf8_lossy(&out.stderr).contains("must exceed lease"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_allocsvr_means_an_error_never_a_seq() -> Result<()> {
    let cluster = Cluster::start(1, 0)?;
    let arbiter = cluster.arbiters[0].addr.clone();
    let out = next_user_seq(&["--arbiter", &arbiter], "7", &["--retry-secs", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(stderr.contains("no AllocSvr serves id 7"), "{stderr}");
    Ok(())
}

/// The production layout: no store process, the routing table and max_seq
/// in a CQL keyspace (LWT), and an owner lost mid-load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cql_store_a_killed_owner_fails_over() -> Result<()> {
    let mut cluster = Cluster::start_on_cql("seqsvc_failover", 1, 2)?;
    cluster.wait_balanced().await?;
    let load = Load::start(&cluster.arbiter_addrs(), 2, 3, IDS, RETRY_FOR)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, victim_addr, killed_at) = cluster.kill_owner_of_slot(0).await?;
    cluster.wait_balanced().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = load.stop().await;
    let checked = check(&cluster, &outcome.records).await?;
    let served_after = outcome
        .records
        .iter()
        .filter(|r| before.owner_of(r.id) == Some(victim_addr.as_str()) && r.start > killed_at)
        .count();
    ensure!(
        served_after > 0,
        "the lost sections were never served again"
    );
    eprintln!(
        "CQL store failover: {} seqs for {} ids checked; {served_after} served by the new owner",
        checked.seqs, checked.ids
    );
    Ok(())
}
