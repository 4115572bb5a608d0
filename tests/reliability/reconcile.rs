//! The simulator drops 30 % of the notifications: the reconciler recovers every blob.

use crate::harness::*;
use o365_sim::Faults;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notifications_are_recovered_by_the_reconciler() {
    let mut h = Harness::start(Setup::new("drop-30")).await;
    let _relay = h.relay_up().await;
    h.set_faults(Faults {
        drop_notification: 0.3,
        ..Faults::default()
    });
    h.load(80, 20, 4, Duration::from_millis(200)).await.unwrap();
    let since = Instant::now();
    let dropped = h.sim.notifications_dropped();
    let row = h
        .settle(
            "simulator drops 30 % of notifications",
            since,
            Duration::from_secs(60),
            Duration::from_secs(2),
            format!("{dropped} of 80 blob notifications dropped"),
        )
        .await;
    h.assert_none_lost(&row);
    assert!(dropped > 0, "the fault never fired");
    let missing = h
        .metric("o365_reconcile_missing_total")
        .await
        .unwrap_or(0.0);
    assert!(
        missing >= 1.0,
        "the reconciler reported no missing blob although {dropped} notifications were dropped"
    );
    // The checkpoint is kept per tenant and content type.
    let store = o365_relay::store::Store::new(&format!("redis://{REDIS_ADDR}"), &h.prefix).unwrap();
    for ct in CONTENT_TYPES {
        let cp = store
            .checkpoints()
            .get(
                &o365_relay::domain::TenantId::parse(TENANT).unwrap(),
                ct.parse().unwrap(),
            )
            .await
            .unwrap();
        assert!(cp.is_some(), "no reconciliation checkpoint for {ct}");
    }
}
