//! Redis Cluster and Sentinel: the relay on three masters with a replica each, and behind
//! Sentinel, through a master failover.

use crate::harness::*;
use o365_relay::config::{RedisMode, RedisSettings};
use o365_relay::domain::secret::Secret;
use o365_relay::domain::{ContentId, ContentType, TenantId};
use o365_relay::store::dedup::{ClaimPolicy, RecordKey};
use o365_relay::store::{Lease, Store, TopologyReport};
use redis::AsyncCommands;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::redis_topology::{RedisCluster, RedisSentinel};

fn settings(mode: RedisMode, urls: &str, prefix: &str) -> RedisSettings {
    RedisSettings {
        mode,
        urls: urls
            .split(',')
            .map(|u| Secret::new(u.to_string()))
            .collect(),
        prefix: prefix.to_string(),
        ca: None,
    }
}

/// A test record's id and `CreationTime`.
#[allow(clippy::ptr_arg)] // `publish_once` hands each record as `&T`, here `T = String`.
fn key(r: &String) -> RecordKey<'_> {
    RecordKey {
        id: r.as_str(),
        created: "2024-05-01T10:15:00",
    }
}

/// `n` tenant ids, spread over the slots.
fn tenants(n: usize) -> Vec<TenantId> {
    (0..n)
        .map(|i| TenantId::parse(&format!("{i:08x}-1111-4222-8333-444455556666")).expect("valid"))
        .collect()
}

/// Every key under `prefix` on every live master, with the port it lives on.
async fn keys_by_node(cluster: &RedisCluster, prefix: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for port in cluster.masters().await {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("URL");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("the master answers");
        let keys: Vec<String> = c.keys(format!("{prefix}*")).await.expect("KEYS");
        out.extend(keys.into_iter().map(|k| (port, k)));
    }
    out
}

async fn keyslot(port: u16, key: &str) -> u16 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("URL");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("the node answers");
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("CLUSTER KEYSLOT")
}

/// Every view of the store, each script and each batch that spans tenants, on a real cluster:
/// what works on one server works here, a tenant's keys share one slot (so its scripts run),
/// and the tenants are spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_view_works_on_a_cluster_and_a_tenants_keys_share_one_slot() {
    let cluster = RedisCluster::start().await;
    let prefix = format!("o365relay:test:cluster:{}:", unique());
    let store = Arc::new(
        Store::open(&settings(RedisMode::Cluster, &cluster.seed_urls(), &prefix))
            .expect("cluster settings"),
    );
    store.ping().await.expect("the cluster answers");
    match store.report().await.expect("topology") {
        TopologyReport::Cluster {
            masters,
            replicas,
            slots,
            state,
            ..
        } => assert_eq!(
            (masters, replicas, slots, state.as_str()),
            (3, 3, 16384, "ok")
        ),
        other => panic!("not seen as a cluster: {other:?}"),
    }

    let all = tenants(24);
    let ct: ContentType = "Audit.Exchange".parse().expect("content type");
    let minute = Duration::from_secs(60);
    for (i, t) in all.iter().enumerate() {
        let c = ContentId::parse(&format!("blob{i}")).expect("content id");
        // Tokens, lock, checkpoint, quota (its script spans the log and the calendar).
        store.tokens().put(t, "{}", minute).await.expect("token");
        assert!(store
            .tokens()
            .try_lock(t, "me", minute)
            .await
            .expect("lock"));
        store
            .checkpoints()
            .set(t, ct, chrono::Utc::now(), minute)
            .await
            .expect("checkpoint");
        store.quota().hit(t, 10).await.expect("quota");
        store
            .quota()
            .book(t, 10, o365_relay::store::quota::Ask::Fresh)
            .await
            .expect("booking");
        // Blob markers, then read in one batch.
        store
            .dedup()
            .mark_relayed(t, &c, minute)
            .await
            .expect("relayed");
        store.dedup().mark_dead(t, &c, minute).await.expect("dead");
        let m = store.dedup().markers(t, &[&c]).await.expect("markers");
        assert!(m[0].relayed && m[0].dead && !m[0].enqueued);
        // Records: claimed, published, finished in the scripts; a second pass finds them.
        let records: Vec<String> = (0..5)
            .map(|r| format!("{i:08x}-0000-4000-8000-{r:012x}"))
            .collect();
        let policy = ClaimPolicy {
            owner: "test",
            claim_ttl: Duration::from_secs(20),
            done_ttl: minute,
            give_up_after: Duration::from_secs(5),
        };
        let first = store
            .dedup()
            .publish_once(t, records.clone(), key, policy, |_| async {
                Ok::<_, std::convert::Infallible>(())
            })
            .await
            .expect("published");
        assert_eq!((first.published, first.duplicates), (5, 0));
        let again = store
            .dedup()
            .publish_once(t, records, key, policy, |_| async {
                Ok::<_, std::convert::Infallible>(())
            })
            .await
            .expect("answered");
        assert_eq!((again.published, again.duplicates), (0, 5), "tenant {i}");
        store
            .keeper_checks()
            .healthy(t, minute)
            .await
            .expect("keeper");
        store.activity().notified(t, ct, 2).await.expect("activity");
        store
            .start_guards()
            .try_take(t, ct, minute)
            .await
            .expect("guard");
        store.tenants().put(t, "{}").await.expect("registered");
        store
            .tenants()
            .transition(t, &["healthy"], "parked", r#"{"state":"parked"}"#)
            .await
            .expect("parked");
    }
    // Batches that span every tenant (a pipeline per slot underneath).
    assert_eq!(
        store
            .keeper_checks()
            .still_healthy(&all)
            .await
            .expect("read"),
        vec![true; all.len()]
    );
    let activity = store.activity().read(&all).await.expect("read");
    assert!(activity.iter().all(|a| a.last_hour.notified == 2));
    // A hit and an admitted booking each count in the tenant's log.
    let used = store.quota().used_many(&all).await.expect("read");
    assert!(used.iter().all(|n| (1..=2).contains(n)), "{used:?}");
    assert_eq!(
        store.tenants().states().await.expect("states").len(),
        all.len()
    );
    // A consent in approval mode: the state and the record, in their two slots (state first).
    let newcomer = &tenants(25)[24];
    let pending = r#"{"state":"pending"}"#;
    for first in [true, false] {
        assert_eq!(
            store
                .tenants()
                .register_pending(newcomer, "{}", pending)
                .await
                .expect("registered"),
            first
        );
    }
    assert_eq!(
        store
            .tenants()
            .get(newcomer)
            .await
            .expect("read")
            .as_deref(),
        Some("{}")
    );
    assert_eq!(
        store
            .tenants()
            .state(newcomer)
            .await
            .expect("read")
            .as_deref(),
        Some(pending)
    );
    // Deployment-wide keys: consent (a used state, the signing key in a pipeline), allowlist,
    // lease, parking.
    assert!(store.consent().use_once("s1", minute).await.expect("used"));
    assert!(!store
        .consent()
        .use_once("s1", minute)
        .await
        .expect("answered"));
    assert!(store
        .consent()
        .use_once("x{evil}", minute)
        .await
        .expect("used"));
    assert_eq!(
        store
            .consent()
            .state_key("k")
            .await
            .expect("read")
            .as_deref(),
        Some("k")
    );
    assert!(store
        .consent_allowlist()
        .add(&all[0])
        .await
        .expect("allowed"));
    let lease = Lease::new(store.clone(), "keeper", minute);
    assert!(lease.try_hold().await);
    store
        .parking()
        .request_reconcile(&all[1])
        .await
        .expect("request");
    assert_eq!(
        store
            .parking()
            .take_reconcile_requests(10)
            .await
            .expect("taken"),
        vec![all[1].clone()]
    );

    // Where the keys are: a tenant's in one slot, tenants over every master.
    let keys = keys_by_node(&cluster, &prefix).await;
    let mut slots_of: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut nodes_of_tenants = BTreeSet::new();
    for (port, key) in &keys {
        if let Some(t) = all.iter().find(|t| key.contains(t.as_str())) {
            assert!(
                key.contains(&format!("{{{t}}}")),
                "{key} holds a tenant id outside a hash tag"
            );
            slots_of
                .entry(t.to_string())
                .or_default()
                .insert(keyslot(*port, key).await);
            nodes_of_tenants.insert(*port);
        }
    }
    assert_eq!(slots_of.len(), all.len(), "every tenant wrote keys");
    for (t, slots) in &slots_of {
        assert_eq!(slots.len(), 1, "tenant {t}'s keys span slots {slots:?}");
    }
    assert_eq!(nodes_of_tenants.len(), 3, "24 tenants on every master");

    assert!(store.purge_prefix().await.expect("purged") >= keys.len() as u64);
    let left = keys_by_node(&cluster, &prefix).await;
    assert!(left.is_empty(), "purge left {left:?}");
}

/// Fault (a) of issue 18: the relay (two replicas) on a Redis Cluster, and the master that
/// holds the tenant's slot is SIGKILLed mid-stream; its replica is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_mid_stream_loses_nothing() {
    let mut cluster = RedisCluster::start().await;
    let seeds = cluster.seed_urls();
    let mut setup = Setup::new("redis-cluster");
    setup.extra_env = vec![
        ("O365_REDIS_MODE", "cluster".to_string()),
        ("O365_REDIS_URL", seeds.clone()),
    ];
    let mut h = Harness::start(setup).await;
    // `check` reports the topology it found.
    let check = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["check"])
        .inherit("PATH")
        .envs(h.env.iter().cloned())
        .output();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("cluster: 3 masters serving 16384 of 16384 slots, 3 replicas, state ok"),
        "{out}"
    );
    let _a = h.relay_up().await;
    let _b = h.spawn_relay();
    let load = h.load(120, 20, 4, Duration::from_millis(200));
    flowing(&h, 200).await;
    // The master that serves the tenant: its tokens, claims, markers and quota.
    let victim = cluster.master_for_key(&format!("{{{TENANT}}}")).await;
    cluster.kill(victim);
    let since = Instant::now();
    let failover = cluster
        .wait_for_failover(victim, Duration::from_secs(30))
        .await;
    load.await.expect("load");
    let row = h
        .settle(
            "Redis Cluster: the tenant's master SIGKILLed mid-stream (3 masters + 3 replicas, 2 relays)",
            since,
            Duration::from_secs(120),
            Duration::from_secs(3),
            format!("replica promoted after {:.1} s", failover.as_secs_f64()),
        )
        .await;
    h.assert_none_lost(&row);
}

/// Fault (b) of issue 18: the relay behind Sentinel, and the master is SIGKILLed mid-stream;
/// the sentinels promote the replica and the relay follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_stream_loses_nothing() {
    let mut sentinel = RedisSentinel::start().await;
    let mut setup = Setup::new("redis-sentinel");
    setup.extra_env = vec![
        ("O365_REDIS_MODE", "sentinel".to_string()),
        ("O365_REDIS_URL", sentinel.sentinel_urls()),
        (
            "O365_REDIS_SENTINEL_MASTER",
            sentinel.master_name().to_string(),
        ),
    ];
    let mut h = Harness::start(setup).await;
    let check = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["check"])
        .inherit("PATH")
        .envs(h.env.iter().cloned())
        .output();
    let out = String::from_utf8_lossy(&check.stdout);
    let expected = format!("sentinel: master '{}' (master,", sentinel.master_name());
    assert!(out.contains(&expected), "{out}");
    let _a = h.relay_up().await;
    let load = h.load(120, 20, 4, Duration::from_millis(200));
    flowing(&h, 200).await;
    let old = sentinel.kill_master().await;
    let since = Instant::now();
    let failover = sentinel.wait_for_failover(Duration::from_secs(40)).await;
    let new = sentinel.master_port().await;
    assert_ne!(old, new, "a replica took over");
    load.await.expect("load");
    let row = h
        .settle(
            "Sentinel: the master SIGKILLed mid-stream (1 replica, 3 sentinels, 1 relay)",
            since,
            Duration::from_secs(120),
            Duration::from_secs(3),
            format!(
                "sentinels promoted the replica after {:.1} s",
                failover.as_secs_f64()
            ),
        )
        .await;
    h.assert_none_lost(&row);
    // The relay writes to the new master: the tenant's token is cached there.
    let client = redis::Client::open(format!("redis://127.0.0.1:{new}")).expect("URL");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("the new master answers");
    let token: bool = c
        .exists(format!("{}token:{TENANT}", h.prefix))
        .await
        .expect("EXISTS");
    let relayed: Vec<String> = c
        .keys(format!("{}relayed:{TENANT}:*", h.prefix))
        .await
        .expect("KEYS");
    assert!(
        token && !relayed.is_empty(),
        "nothing written to the new master"
    );
}

/// Waits until `n` records reached the sink.
async fn flowing(h: &Harness, n: u64) {
    let ok = tokio::time::timeout(Duration::from_secs(60), async {
        while h.received.lock().expect("poisoned").total < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "records never started flowing");
}

/// A standalone deployment moving to a cluster: `o365-relay redis-migrate --from` copies its
/// keys under the cluster's names, and on the cluster nothing already relayed is relayed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_migrate_moves_a_standalone_deployment_to_a_cluster_without_relaying_twice() {
    let cluster = RedisCluster::start().await;
    let prefix = format!("o365relay:test:migrate:{}:", unique());
    let old = Store::new(REDIS, &prefix).expect("standalone");
    let new = Store::open(&settings(RedisMode::Cluster, &cluster.seed_urls(), &prefix))
        .expect("cluster settings");
    let t = &tenants(1)[0];
    let ct: ContentType = "Audit.SharePoint".parse().expect("content type");
    let blob = ContentId::parse("blob-1").expect("content id");
    let hour = Duration::from_secs(3600);
    let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00+00:00")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let records: Vec<String> = (0..300)
        .map(|r| format!("7d3c2b1a-0000-4000-8000-{r:012x}"))
        .collect();
    let policy = ClaimPolicy {
        owner: "old",
        claim_ttl: Duration::from_secs(20),
        done_ttl: hour,
        give_up_after: Duration::from_secs(5),
    };
    let publish = |_: Vec<String>| async { Ok::<_, std::convert::Infallible>(()) };
    // The standalone deployment's state.
    old.tenants()
        .put(t, r#"{"id":"x"}"#)
        .await
        .expect("registered");
    old.tenants()
        .transition(t, &["healthy"], "parked", r#"{"state":"parked"}"#)
        .await
        .expect("parked");
    old.consent_allowlist().add(t).await.expect("allowed");
    old.checkpoints()
        .set(t, ct, at, hour)
        .await
        .expect("checkpoint");
    old.dedup()
        .mark_relayed(t, &blob, hour)
        .await
        .expect("marker");
    let first = old
        .dedup()
        .publish_once(t, records.clone(), key, policy, publish)
        .await
        .expect("published");
    assert_eq!(first.published, 300);
    assert!(
        Lease::new(
            Arc::new(Store::new(REDIS, &prefix).expect("standalone")),
            "keeper",
            hour
        )
        .try_hold()
        .await
    );

    let mut env = RelayEnv::new(&Names::new("mig"), "http://127.0.0.1:9")
        .client_secret("migrate-test-secret")
        .set("O365_REDIS_MODE", "cluster")
        .set("O365_REDIS_URL", cluster.seed_urls())
        .set("O365_REDIS_PREFIX", prefix.clone())
        .into_vars();
    env.retain(|(k, _)| k != "O365_TENANTS");
    let run = || {
        RelayCommand::new(
            env!("CARGO_BIN_EXE_o365-relay"),
            &["redis-migrate", "--from", REDIS],
        )
        .inherit("PATH")
        .envs(env.iter().cloned())
        .output()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("keys to the cluster Redis"), "{stdout}");
    // A second run overwrites nothing.
    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.starts_with("copied 0 keys"), "{stdout}");
    // Each key expires at the same instant as on the source, so a bucket's root and leaves
    // still expire together (copied with relative TTLs, each moved by its own copy's delay).
    let mut src = redis::Client::open(REDIS)
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("standalone");
    let seeds: Vec<String> = cluster.seed_urls().split(',').map(String::from).collect();
    let mut dst = redis::cluster::ClusterClient::new(seeds)
        .expect("cluster URLs")
        .get_async_connection()
        .await
        .expect("cluster");
    let bucket: Vec<String> = src.keys(format!("{prefix}dedup:*")).await.expect("KEYS");
    assert!(bucket.len() >= 2, "a root and its leaves: {bucket:?}");
    for k in &bucket {
        let rest = &k[prefix.len()..];
        let name =
            o365_relay::store::migrate::target_name(rest, &RedisMode::Cluster).expect("copied");
        let at = |key: String| redis::cmd("PEXPIRETIME").arg(key).to_owned();
        let was: i64 = at(k.clone()).query_async(&mut src).await.expect("source");
        let is: i64 = at(format!("{prefix}{name}"))
            .query_async(&mut dst)
            .await
            .expect("target");
        assert!(was > 0, "{k} expires");
        assert_eq!(is, was, "{name} expires when its source did");
    }

    // On the cluster: the registry, the state, the allowlist, the checkpoint, the markers.
    assert!(new.tenants().get(t).await.expect("read").is_some());
    assert!(new
        .tenants()
        .state(t)
        .await
        .expect("read")
        .is_some_and(|s| s.contains("parked")));
    assert!(new.consent_allowlist().contains(t).await.expect("read"));
    assert_eq!(new.checkpoints().get(t, ct).await.expect("read"), Some(at));
    assert!(new.dedup().is_relayed(t, &blob).await.expect("read"));
    let policy = ClaimPolicy {
        owner: "new",
        ..policy
    };
    let again = new
        .dedup()
        .publish_once(t, records, key, policy, publish)
        .await
        .expect("answered");
    assert_eq!(
        (again.published, again.duplicates),
        (0, 300),
        "records relayed before the move are not relayed again"
    );
    // The lease was not copied: a replica on the cluster takes it at once.
    assert!(Lease::new(Arc::new(new), "keeper", hour).try_hold().await);
    old.purge_prefix().await.expect("purged");
}
