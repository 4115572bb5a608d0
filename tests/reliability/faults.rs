//! 20 % of the Management API calls fail (AF429 as 429 and 403, 5xx, slow, truncated bodies)
//! under a low per-tenant quota: no loss, retries bounded, the quota never exceeded.

use crate::harness::*;
use o365_sim::Faults;
use std::time::{Duration, Instant};

const QUOTA: u64 = 120;
const BLOBS: usize = 100;
const MAX_ATTEMPTS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_and_a_low_quota_lose_nothing_and_keep_under_the_quota() {
    let mut setup = Setup::new("api-faults");
    setup.extra_env = vec![
        ("O365_QUOTA_PER_MINUTE", QUOTA.to_string()),
        ("O365_MAX_ATTEMPTS", MAX_ATTEMPTS.to_string()),
        // Listing every 2 s would spend half the quota; every 10 s is plenty here.
        ("O365_RECONCILE_INTERVAL", "10s".into()),
    ];
    let mut h = Harness::start(setup).await;
    let _relay = h.relay_up().await;
    h.set_faults(Faults {
        throttle_429: 0.05,
        throttle_403: 0.05,
        server_error: 0.05,
        truncate: 0.05,
        slow: 0.05,
        slow_ms: 1500,
        retry_after: true,
        apply_to_listing: true,
        ..Faults::default()
    });
    let since = Instant::now();
    h.load(BLOBS, 10, 10, Duration::from_millis(200))
        .await
        .unwrap();
    let row = h
        .settle(
            "",
            since,
            Duration::from_secs(150),
            Duration::from_secs(2),
            String::new(),
        )
        .await;
    let max_per_minute = h.sim.max_calls_per_minute(TENANT);
    let calls = h.sim.management_calls(TENANT);
    let gets = h.sim.content_gets();
    let dead = h
        .depth(&format!("{}.dead", h.work_queue))
        .await
        .unwrap_or(0);
    let row = Row {
        fault: "20 % of calls: AF429 (429 and 403), 5xx, slow, truncated; quota 120/min".into(),
        note: format!(
            "{calls} API calls, {gets} content GETs for {BLOBS} blobs, max {max_per_minute} calls in any 60 s, {dead} dead-lettered"
        ),
        ..row
    };
    row.print();
    h.assert_none_lost(&row);
    assert!(
        max_per_minute <= QUOTA,
        "the simulator saw {max_per_minute} calls in a minute, over the quota of {QUOTA}"
    );
    // Retries are bounded: a blob is fetched at most O365_MAX_ATTEMPTS times per enqueue, and
    // at most twice enqueued for real work (webhook, then the reconciler once its guard lapses).
    assert!(
        gets <= BLOBS as u64 * MAX_ATTEMPTS * 2,
        "{gets} content GETs for {BLOBS} blobs: retries are not bounded"
    );
}
