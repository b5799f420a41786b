use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let open = move || {
        let store = EmbeddedStore::open(&path, EmbeddedStoreConfig::default()).unwrap();
        async move { store }
    };
    crate::testsuite::conformance::run_all(open).await;
}

/// The point of storing heavy inbox copies by reference: each copy of a
/// 64 KiB message is a small row, whatever the fanout.
#[tokio::test]
async fn inbox_copies_of_heavy_messages_are_small_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let entry = Entry {
        conv_seq: 1,
        text: "x".repeat(64 * 1024),
        ..Entry::new(crate::EntryKind::Message, 7)
    };
    let inbox = (1..=100)
        .map(|user_id| crate::InboxWrite { user_id, seq: 1 })
        .collect();
    let commit = EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry,
        inbox,
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    };
    store.commit_event(commit).await.unwrap();
    let sizes = store
        .read(|ks| {
            let mut sizes = Vec::new();
            for user_id in 1..=100u64 {
                let row = ks.inbox.get(key2(user_id, 1)).map_err(io)?.unwrap();
                sizes.push(row.len());
            }
            Ok(sizes)
        })
        .await
        .unwrap();
    assert!(sizes.iter().all(|&len| len < 256), "{sizes:?}");
    let read = store
        .read_inbox(42, InboxRange::new(0, 1, 1))
        .await
        .unwrap();
    assert_eq!(read[0].text.len(), 64 * 1024);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    assert!(EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).is_err());
}

fn with_receipt(n: u128, sent_at_ms: i64) -> (IdempotencyKey, EventCommit) {
    let key = IdempotencyKey {
        principal: "u:1".into(),
        client_msg_id: uuid::Uuid::from_u128(n),
    };
    let receipt = Receipt {
        conversation_id: 1,
        conv_seq: n as u64,
        msg_id: n as u64,
        sent_at_ms,
        fingerprint: 0,
    };
    let commit = EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq: n as u64,
            msg_id: n as u64,
            ..Entry::new(crate::EntryKind::Message, 1)
        },
        inbox: vec![crate::InboxWrite {
            user_id: 1,
            seq: n as u64,
        }],
        receipt: Some((key.clone(), receipt)),
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    };
    (key, commit)
}

/// Receipts are kept for the retention window from when they were
/// written (not from the send's own timestamp), then reads ignore them
/// and a sweep deletes them; they used to be kept forever.
#[tokio::test]
async fn receipts_expire_after_the_retention_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let (old, commit) = with_receipt(1, 1);
    store.commit_event(commit).await.unwrap();
    let written = now_ms();
    let window = crate::RECEIPT_RETENTION.as_millis() as u64;
    assert!(
        store.receipt(&old).await.unwrap().is_some(),
        "counted from the write"
    );
    let later = written + window + 1_000;
    let (fresh, commit) = with_receipt(2, 1);
    store.commit_event(commit).await.unwrap();
    assert!(store.receipt_at(&old, later).await.unwrap().is_none());
    assert_eq!(store.expire_receipts_at(written).await.unwrap(), 0);
    assert_eq!(store.expire_receipts_at(later).await.unwrap(), 2);
    assert_eq!(store.expire_receipts().await.unwrap(), 0);
    let left = store
        .read(|ks| Ok(ks.receipts.range::<Vec<u8>, _>(..).count()))
        .await
        .unwrap();
    assert_eq!(left, 0, "expired receipts are deleted");
    // A send after expiry writes a new receipt, which a sweep keeps.
    let (_, commit) = with_receipt(2, 1);
    store.commit_event(commit).await.unwrap();
    assert_eq!(store.expire_receipts().await.unwrap(), 0);
    assert!(store.receipt(&fresh).await.unwrap().is_some());
}
