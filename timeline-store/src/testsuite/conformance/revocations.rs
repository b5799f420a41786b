//! The revocation contract: a device's revoked-before time only rises,
//! and the feed lists every revocation.

use super::*;

/// The feed is read by time, so the checks record at the current time:
/// a shared store's feed then holds nothing of an earlier run at or after it.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// [`crate::Revocations`]: cutoffs per device and per user only rise (also
/// under concurrent revocations), and the feed lists every revocation by
/// the time it was recorded.
pub(super) async fn revocations_only_rise_and_the_feed_lists_them<S: TimelineStore>(store: &S) {
    let user = BASE + 90;
    let revocation = |device: Option<&str>, before_s| Revocation {
        user_id: user,
        device_id: device.map(str::to_owned),
        before_s,
    };
    assert_eq!(
        store.revoked_before(user, "phone").await.unwrap(),
        RevokedBefore::default()
    );
    let t0 = now_ms();
    let phone = revocation(Some("phone"), 1_000);
    assert_eq!(store.revoke(&phone, t0).await.unwrap(), 1_000);
    let lower = revocation(Some("phone"), 500);
    assert_eq!(store.revoke(&lower, t0 + 1).await.unwrap(), 1_000);
    let everywhere = revocation(None, 2_000);
    assert_eq!(store.revoke(&everywhere, t0 + 2).await.unwrap(), 2_000);
    let phone_cutoffs = store.revoked_before(user, "phone").await.unwrap();
    assert_eq!(
        phone_cutoffs,
        RevokedBefore {
            user: 2_000,
            device: 1_000
        }
    );
    assert_eq!(phone_cutoffs.cutoff(), 2_000);
    assert_eq!(
        store.revoked_before(user, "laptop").await.unwrap(),
        RevokedBefore {
            user: 2_000,
            device: 0
        }
    );
    assert_eq!(
        store.revoked_before(user + 1, "phone").await.unwrap(),
        RevokedBefore::default()
    );

    let ours = |since_ms, limit| async move {
        let listed = store.revocations_since(since_ms, limit).await.unwrap();
        let times: Vec<u64> = listed.iter().map(|r| r.recorded_at_ms).collect();
        assert!(times.is_sorted(), "feed out of order: {times:?}");
        assert!(times.iter().all(|&t| t >= since_ms), "{times:?}");
        listed
            .into_iter()
            .filter(|r| r.revocation.user_id == user)
            .map(|r| (r.recorded_at_ms, r.revocation))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ours(t0, 100).await,
        vec![(t0, phone), (t0 + 1, lower), (t0 + 2, everywhere.clone())]
    );
    assert_eq!(ours(t0 + 2, 100).await, vec![(t0 + 2, everywhere)]);
    assert_eq!(
        store.revocations_since(t0, 1).await.unwrap().len(),
        1,
        "the limit bounds a feed read"
    );

    let tablet = (1..=20u64).map(|before_s| async move {
        let revocation = Revocation {
            user_id: user + 2,
            device_id: Some("tablet".into()),
            before_s,
        };
        store.revoke(&revocation, t0 + 3).await.unwrap()
    });
    for stored in join_all(tablet).await {
        assert!((1..=20).contains(&stored), "{stored}");
    }
    assert_eq!(
        store
            .revoked_before(user + 2, "tablet")
            .await
            .unwrap()
            .device,
        20
    );
}
