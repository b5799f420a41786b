use super::*;
use crate::routing::{LeaseConfig, RoutingTable};
use crate::store::RouteStore;
use crate::testsuite::MemoryMaxSeqStore;

fn lease() -> LeaseConfig {
    LeaseConfig::short_for_tests()
}

fn inbox(ids: &[u64], client_version: u64) -> SeqRequest<'_> {
    SeqRequest {
        namespace: Namespace::Inbox,
        ids,
        client_version,
    }
}

async fn publish(store: &MemoryMaxSeqStore, owners: impl Fn(u32) -> &'static str) -> u64 {
    let current = store.read_routes().await.unwrap();
    let mut table = match &current {
        Some(t) => t.clone(),
        None => RoutingTable::initial(10, lease()).unwrap(),
    };
    table.version = current.as_ref().map_or(1, |t| t.version + 1);
    for slot in 0..table.slot_count() {
        table.owners[slot as usize] = Some(owners(slot).to_string());
    }
    assert!(store.write_routes(&table).await.unwrap().applied);
    table.version
}

async fn tick(servers: &[&AllocServer], ms: u64) {
    for _ in 0..ms / 50 {
        tokio::time::advance(Duration::from_millis(50)).await;
        for s in servers {
            let _ = s.refresh().await;
        }
    }
}

/// AllocSvr "a:1" serving every slot, activated.
async fn serving_alone() -> (Arc<MemoryMaxSeqStore>, AllocServer) {
    let store = Arc::new(MemoryMaxSeqStore::new());
    let a = AllocServer::new("a:1", 100, store.clone()).unwrap();
    publish(&store, |_| "a:1").await;
    tick(&[&a], 800).await;
    (store, a)
}

/// AllocSvrs "a:1" and "b:1" over one store.
fn two_servers(step: u64) -> (Arc<MemoryMaxSeqStore>, AllocServer, AllocServer) {
    let store = Arc::new(MemoryMaxSeqStore::new());
    let a = AllocServer::new("a:1", step, store.clone()).unwrap();
    let b = AllocServer::new("b:1", step, store.clone()).unwrap();
    (store, a, b)
}

#[tokio::test(start_paused = true)]
async fn serves_after_activation_and_moves_clients_along() {
    let (store, a, b) = two_servers(100);
    publish(&store, |_| "a:1").await;
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    // First assignment waits too.
    assert!(matches!(
        a.allocate(inbox(&[1], 0)).await,
        Err(SeqError::NotServing(_))
    ));
    match b.allocate(inbox(&[1], 0)).await.unwrap() {
        Routed::Moved(table) => assert_eq!(table.owner_of(1), Some("a:1")),
        other => panic!("expected moved, got {other:?}"),
    }
    tick(&[&a, &b], 750).await;
    let Routed::Served(seqs) = a.allocate(inbox(&[1, 1, 25], 0)).await.unwrap() else {
        panic!("not served")
    };
    assert_eq!(seqs, vec![1, 2, 1]);
    // Move everything to b: a stops at once, b after activation, and b
    // continues above everything a handed out.
    let version = publish(&store, |_| "b:1").await;
    a.refresh().await.unwrap();
    assert!(matches!(
        a.allocate(inbox(&[1], version)).await.unwrap(),
        Routed::Moved(_)
    ));
    // A client with the newer table makes b read it before answering.
    assert!(matches!(
        b.allocate(inbox(&[1], version)).await,
        Err(SeqError::NotServing(_))
    ));
    tick(&[&a, &b], 750).await;
    let Routed::Served(seqs) = b.allocate(inbox(&[1], version)).await.unwrap() else {
        panic!("not served")
    };
    assert!(seqs[0] > 2);
    assert!(seqs[0] <= store.stored(Namespace::Inbox, 0));
}

#[tokio::test(start_paused = true)]
async fn unreadable_store_ends_the_lease() {
    let (store, a) = serving_alone().await;
    assert!(a.allocate(inbox(&[1], 0)).await.is_ok());
    store.fail_route_reads(true);
    tick(&[&a], 450).await;
    assert!(a.allocate(inbox(&[1], 0)).await.is_ok());
    tick(&[&a], 100).await;
    let err = a.allocate(inbox(&[1], 0)).await.unwrap_err();
    assert!(err.to_string().contains("lease expired"), "{err}");
    // Reads work again: still the owner, but the lease lapsed, so it
    // serves again only as a new owner would, after a full activation.
    store.fail_route_reads(false);
    tick(&[&a], 50).await;
    let err = a.allocate(inbox(&[1], 0)).await.unwrap_err();
    assert!(err.to_string().contains("newly assigned"), "{err}");
    tick(&[&a], 700).await;
    assert!(a.allocate(inbox(&[1], 0)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn node_ids_are_exclusive_until_the_lease_runs_out() {
    let (_, a) = serving_alone().await;
    let grant = |r: Routed<NodeIdGrant>| match r {
        Routed::Served(g) => g,
        Routed::Moved(_) => panic!("moved"),
    };
    let first = grant(a.lease_node_id("h1", Some(5), 1_000, 0).await.unwrap());
    assert_eq!(first.node_id, 5);
    assert_eq!(first.reserved_ms, 1_000);
    let second = grant(a.lease_node_id("h2", Some(5), 2_000, 0).await.unwrap());
    assert_ne!(second.node_id, 5);
    // Renewal keeps the id and raises the reservation.
    let renewed = grant(a.lease_node_id("h1", None, 3_000, 0).await.unwrap());
    assert_eq!(
        (renewed.node_id, renewed.floor_ms, renewed.reserved_ms),
        (5, 0, 3_000)
    );
    // After h1 stops renewing for lease + sync, h3 may take it, above
    // h1's reservation.
    tick(&[&a], 650).await;
    let taken = grant(a.lease_node_id("h3", Some(5), 100, 0).await.unwrap());
    assert_eq!(taken.node_id, 5);
    assert_eq!(taken.floor_ms, 3_000);
    assert!(taken.reserved_ms >= 3_000);
}

fn served<T: std::fmt::Debug>(routed: Routed<T>) -> T {
    match routed {
        Routed::Served(value) => value,
        Routed::Moved(table) => panic!("moved to version {}", table.version),
    }
}

/// Item 1 of the adversarial review, at the AllocSvr level: "a" serves,
/// freezes past its lease, "b" takes the slots and allocates (and
/// raises `max_seq`), the table gives the slots back to "a", which never
/// saw the version in which "b" served. "a" must never return a seq at
/// or below one "b" handed out.
#[tokio::test(start_paused = true)]
async fn regained_slots_after_a_missed_version_never_reissue_seqs() {
    let (store, a, b) = two_servers(10);
    publish(&store, |_| "a:1").await;
    tick(&[&a, &b], 800).await;
    for _ in 0..3 {
        served(a.allocate(inbox(&[1], 0)).await.unwrap());
    }
    // "a" freezes: only "b" reads from here on.
    publish(&store, |_| "b:1").await;
    tick(&[&b], 800).await;
    let mut by_b = 0;
    for _ in 0..25 {
        by_b = served(b.allocate(inbox(&[1], 0)).await.unwrap())[0];
    }
    assert!(by_b > 20, "b raised max_seq past a's step: {by_b}");
    publish(&store, |_| "a:1").await;
    tick(&[&b], 50).await;
    // "a" thaws and reads the table that gives it the slots back.
    let mut served_by_a = Vec::new();
    for _ in 0..40 {
        tick(&[&a, &b], 50).await;
        if let Ok(Routed::Served(seqs)) = a.allocate(inbox(&[1], 0)).await {
            served_by_a.push(seqs[0]);
        }
    }
    assert!(!served_by_a.is_empty(), "a never served again");
    assert!(
        served_by_a.iter().all(|&seq| seq > by_b),
        "a handed out {served_by_a:?} after b reached {by_b}"
    );
    assert!(served_by_a.windows(2).all(|w| w[0] < w[1]));
    assert!(*served_by_a.last().unwrap() <= store.stored(Namespace::Inbox, 0));
}

/// Item 7 of the adversarial review: the first grant of a node id whose
/// reply never arrived (here: its reservation failed) is retried by the
/// holder; the retry must still carry the previous holder's clock
/// floor, or the new holder may reuse its milliseconds under skew.
#[tokio::test(start_paused = true)]
async fn a_retried_first_node_id_grant_keeps_the_previous_holders_floor() {
    let (store, a) = serving_alone().await;
    let first = served(a.lease_node_id("h1", Some(5), 3_000, 0).await.unwrap());
    assert_eq!((first.node_id, first.reserved_ms), (5, 3_000));
    tick(&[&a], 650).await;
    store.fail_next_raises(1);
    assert!(a.lease_node_id("h2", Some(5), 100, 0).await.is_err());
    let retried = served(a.lease_node_id("h2", Some(5), 100, 0).await.unwrap());
    assert_eq!(retried.node_id, 5);
    assert_eq!(retried.floor_ms, 3_000);
    assert!(retried.reserved_ms >= 3_000);
    // A retry after a reply lost on the way back: the same floor again.
    let again = served(a.lease_node_id("h2", Some(5), 200, 0).await.unwrap());
    assert_eq!((again.node_id, again.floor_ms), (5, 3_000));
}
