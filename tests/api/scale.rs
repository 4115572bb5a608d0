//! Many tenants: the reconciliation pass runs tenants concurrently within its bound, lists one
//! window per content type when on schedule, the keeper lists a healthy tenant's subscriptions
//! only when its check expired, and /metrics carries no per-tenant series unless asked for.

use crate::helpers::*;
use o365_relay::domain::{ContentType, TenantId};
use o365_sim::{generated_tenant, Faults, Route};
use std::time::Duration;

fn tenants(n: usize) -> Vec<String> {
    (0..n).map(generated_tenant).collect()
}

fn tid(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

async fn env_with(tenants: &[String], extra: &[(&str, &str)]) -> TestEnv {
    TestEnv::start(Options {
        sim_tenants: tenants.to_vec(),
        static_tenants: tenants.to_vec(),
        use_secret: true,
        workers: false,
        extra_env: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    })
    .await
}

/// Starts every content type of `tenants` without a webhook (listing needs a subscription).
async fn subscribe(env: &TestEnv, tenants: &[String]) {
    for t in tenants {
        for ct in ContentType::ALL {
            env.relay
                .management
                .start_subscription(&tid(t), ct, None)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_reconciles_tenants_concurrently_within_its_bound_and_exports_no_tenant_series() {
    let ts = tenants(6);
    let env = env_with(&ts, &[("O365_RECONCILE_CONCURRENCY", "3")]).await;
    subscribe(&env, &ts).await;
    let blobs = env.sim.publish(&ts[4], "Audit.General", 2, Some(1)).await;
    // Every listing takes a while, so tenants reconciled at once are seen at once.
    env.sim.set_faults(Faults {
        slow: 1.0,
        slow_ms: 300,
        apply_to_listing: true,
        ..Faults::default()
    });
    let first = env.relay.reconciler().pass().await;
    assert_eq!(first.errors, 0, "{first:?}");
    assert_eq!(first.missing, blobs.len() as u64, "{first:?}");
    let at_once = env.sim.max_concurrent_listings();
    assert!(
        (2..=3).contains(&at_once),
        "listings in flight at once: {at_once} (tenants run concurrently, at most 3)"
    );
    // Passes on schedule list one 24-hour window per content type: five calls per tenant and
    // pass, the second pass (checkpoints seconds old) too.
    env.sim.set_faults(Faults::default());
    let second = env.relay.reconciler().pass().await;
    assert_eq!((second.errors, second.missing), (0, 0), "{second:?}");
    for t in &ts {
        assert_eq!(
            env.sim.route_calls(t, Route::ListContent),
            10,
            "tenant {t}: two passes × five content types"
        );
    }

    let m = env.metrics().await;
    assert!(!m.contains("tenant_id"), "a per-tenant series:\n{m}");
    for t in &ts {
        assert!(!m.contains(t.as_str()), "tenant {t} in:\n{m}");
    }
    for line in [
        "o365_reconcile_missing_total 2",
        "o365_reconcile_passes_total 2",
        "o365_reconcile_lag_seconds ",
        "o365_reconcile_last_success_timestamp_seconds ",
        "o365_reconcile_pass_duration_seconds ",
    ] {
        assert!(m.contains(line), "missing `{line}` in:\n{m}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_tenant_reconciliation_series_are_opt_in() {
    let ts = tenants(2);
    let env = env_with(&ts, &[("O365_METRICS_PER_TENANT", "true")]).await;
    subscribe(&env, &ts).await;
    let stats = env.relay.reconciler().pass().await;
    assert_eq!(stats.errors, 0, "{stats:?}");
    let m = env.metrics().await;
    for t in &ts {
        let series = format!("o365_reconcile_last_success_timestamp_seconds{{tenant_id=\"{t}\"}}");
        assert!(m.contains(&series), "missing `{series}` in:\n{m}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_keeper_lists_a_healthy_tenant_again_only_when_its_check_expires() {
    let ts = tenants(3);
    let env = env_with(&ts, &[]).await;
    let listed = |t: &str| env.sim.route_calls(t, Route::ListSubscriptions);
    // A short interval, so that a healthy finding (trusted 9 to 12 runs) expires within seconds.
    let mut keeper = env.relay.keeper();
    keeper.interval = Duration::from_millis(200);

    // Nothing subscribed yet: every tenant is listed and started, and listed again on the next
    // run, where it is found healthy.
    let run = keeper.run_once().await;
    assert_eq!((run.listed, run.trusted, run.failed), (3, 0, 0), "{run:?}");
    for t in &ts {
        assert_eq!(env.sim.subscriptions(t).len(), 5, "{t} started");
    }
    let run = keeper.run_once().await;
    assert_eq!((run.listed, run.trusted), (3, 0), "{run:?}");
    // Healthy: not listed while the finding holds — not even when Microsoft disables a webhook
    // meanwhile (reconciliation relays what it misses until the next check).
    env.sim.disable_webhook(&ts[0], "Audit.Exchange");
    let run = keeper.run_once().await;
    assert_eq!((run.listed, run.trusted), (0, 3), "{run:?}");
    for t in &ts {
        assert_eq!(listed(t), 2, "{t}");
    }

    // Once the findings expired, every tenant is listed; the broken one needs a start that the
    // 15-minute rule forbids right now, so it is not trusted and is listed on every run.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let run = keeper.run_once().await;
    assert_eq!((run.listed, run.trusted), (3, 0), "{run:?}");
    let run = keeper.run_once().await;
    assert_eq!((run.listed, run.trusted), (1, 2), "{run:?}");
    assert_eq!(listed(&ts[0]), 4);
    assert_eq!(listed(&ts[1]), 3);

    // Microsoft told a worker or the reconciler that a subscription is missing (AF20022):
    // that tenant is checked on the next run instead of trusted.
    env.relay
        .subscriptions
        .ensure_started(&tid(&ts[1]), ContentType::ALL[0])
        .await;
    let run = keeper.run_once().await;
    assert_eq!((run.listed, run.trusted), (2, 1), "{run:?}");
    assert_eq!(listed(&ts[2]), 3, "the healthy one is still trusted");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_lease_is_renewed_while_a_long_pass_runs_and_released_at_shutdown() {
    use redis::AsyncCommands;
    let ts = tenants(2);
    let env = env_with(&ts, &[("O365_RECONCILE_CONCURRENCY", "1")]).await;
    subscribe(&env, &ts).await;
    // Ten listings of 2.5 s one after another: a pass of 25 s, longer than the lease's TTL.
    env.sim.set_faults(Faults {
        slow: 1.0,
        slow_ms: 2_500,
        apply_to_listing: true,
        ..Faults::default()
    });
    let mut reconciler = env.relay.reconciler();
    reconciler.interval = Duration::from_secs(5);
    let ttl = o365_relay::pipeline::reconciler::lease_ttl(reconciler.interval);
    assert_eq!(ttl, Duration::from_secs(15));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(std::sync::Arc::new(reconciler).run(stop.clone()));
    let key = format!("{}lease:reconciler", env.prefix);
    let mut redis = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let taken = eventually(Duration::from_secs(10), || {
        let (mut redis, key) = (redis.clone(), key.clone());
        async move { redis.exists::<_, bool>(&key).await.unwrap() }
    })
    .await;
    assert!(taken, "the reconciler took its lease");
    let holder: String = redis.get(&key).await.unwrap();
    // Past the TTL, the pass still running: the lease is still ours because it was renewed.
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    let m = env.metrics().await;
    assert!(
        m.contains("o365_reconcile_passes_total 0"),
        "the pass ended early; nothing shown:\n{m}"
    );
    let now: Option<String> = redis.get(&key).await.unwrap();
    assert_eq!(now.as_deref(), Some(holder.as_str()), "lease renewed");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the reconciler stops at once, mid-pass")
        .unwrap();
    assert!(
        !redis.exists::<_, bool>(&key).await.unwrap(),
        "lease released at shutdown"
    );
    env.cleanup().await;
}
