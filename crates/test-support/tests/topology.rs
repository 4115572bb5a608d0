//! The Redis topologies of the harness against real `redis-server` processes: a cluster and a
//! Sentinel-watched master start ready, serve keys, fail over after a master is SIGKILLed, and
//! leave no process, port or file behind. Start and failover times are printed
//! (`cargo test -p test-support --test topology -- --nocapture`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use test_support::{RedisCluster, RedisSentinel};

/// A failover is noticed after 2 s (`cluster-node-timeout`, `down-after-milliseconds`) and takes
/// 3–5 s; the margin is for a loaded 2-core machine.
const FAILOVER_WAIT: Duration = Duration::from_secs(10);

async fn conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("node {port} accepts a connection: {e}"))
}

async fn get(port: u16, key: &str) -> redis::RedisResult<Option<String>> {
    let mut c = conn(port).await;
    redis::cmd("GET").arg(key).query_async(&mut c).await
}

/// Waits until `replicas` replicas acknowledged every write of this connection so far.
async fn set_replicated(port: u16, key: &str, value: &str, replicas: usize) {
    let mut c = conn(port).await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap_or_else(|e| panic!("SET {key} on {port}: {e}"));
    let acked: usize = redis::cmd("WAIT")
        .arg(replicas)
        .arg(5000)
        .query_async(&mut c)
        .await
        .expect("WAIT answers");
    assert_eq!(acked, replicas, "replicas that acknowledged {key}");
}

async fn role(port: u16) -> String {
    let mut c = conn(port).await;
    let answer: redis::Value = redis::cmd("ROLE")
        .query_async(&mut c)
        .await
        .expect("ROLE answers");
    let redis::Value::Array(items) = answer else {
        panic!("ROLE answers an array: {answer:?}");
    };
    redis::from_redis_value(&items[0]).expect("ROLE starts with the role")
}

/// A key whose slot `cluster`'s master on `port` serves.
async fn key_on(cluster: &RedisCluster, port: u16) -> String {
    for i in 0.. {
        let key = format!("k{i}");
        if cluster.master_for_key(&key).await == port {
            return key;
        }
    }
    unreachable!()
}

/// What a topology leaves behind after drop: processes still running, ports still answering,
/// its directory.
fn assert_gone(pids: &[u32], ports: &[u16], dir: &Path) {
    for pid in pids {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "process {pid} outlived its topology"
        );
    }
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still answers"
        );
    }
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[tokio::test]
async fn a_cluster_starts_with_three_masters_each_with_a_replica_in_sync_and_every_master_serves_its_keys(
) {
    let started = Instant::now();
    let cluster = RedisCluster::start().await;
    println!(
        "redis cluster (3 masters, 3 replicas) ready in {:?}",
        started.elapsed()
    );

    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert_eq!(cluster.replicas().await.len(), 3);
    assert_eq!(cluster.seed_urls().split(',').count(), 6);
    assert!(!cluster.ports().contains(&6379));
    for &master in &masters {
        let key = key_on(&cluster, master).await;
        set_replicated(master, &key, "v", 1).await;
        assert_eq!(get(master, &key).await.unwrap().as_deref(), Some("v"));
        // Any other master redirects to the one that serves the slot.
        let other = masters.iter().find(|&&p| p != master).copied().unwrap();
        let moved = get(other, &key)
            .await
            .expect_err("another master redirects");
        let (to, _slot) = moved.redirect_node().expect("a MOVED redirect");
        assert_eq!(to, format!("127.0.0.1:{master}"), "{moved}");
    }

    let (pids, ports, dir) = (cluster.pids(), cluster.ports(), cluster.dir().to_path_buf());
    drop(cluster);
    assert_gone(&pids, &ports, &dir);
}

#[tokio::test]
async fn killing_a_cluster_master_promotes_its_replica_within_ten_seconds_with_the_keys_it_had() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start().await;
    println!(
        "redis cluster (3 masters, 3 replicas) ready in {:?}",
        started.elapsed()
    );
    let victim = cluster.master_for_key("survivor").await;
    set_replicated(victim, "survivor", "still here", 1).await;

    cluster.kill(victim);
    let took = cluster.wait_for_failover(victim, FAILOVER_WAIT).await;
    println!("redis cluster failover {took:?} after SIGKILL of a master");

    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(!masters.contains(&victim));
    let promoted = cluster.master_for_key("survivor").await;
    assert_ne!(promoted, victim);
    assert_eq!(role(promoted).await, "master");
    assert_eq!(
        get(promoted, "survivor").await.unwrap().as_deref(),
        Some("still here")
    );
    assert!(!cluster.seed_urls().contains(&format!(":{victim}")));

    let (pids, ports, dir) = (cluster.pids(), cluster.ports(), cluster.dir().to_path_buf());
    drop(cluster);
    assert_gone(&pids, &ports, &dir);
}

#[tokio::test]
async fn a_one_master_cluster_serves_every_slot_and_reports_the_cpu_its_master_used() {
    let cluster = RedisCluster::start_with(1, 1).await;
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 1);
    assert_eq!(cluster.replicas().await.len(), 1);
    assert_eq!(cluster.master_for_key("a").await, masters[0]);
    assert_eq!(cluster.master_for_key("zzz").await, masters[0]);

    let before = cluster.node_cpu_usec().await;
    let mut c = conn(masters[0]).await;
    for i in 0..2000 {
        let _: () = redis::cmd("SET")
            .arg(format!("{{t}}{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("SET answers");
    }
    let after = cluster.node_cpu_usec().await;
    assert!(after > before, "{before} → {after}");
}

#[tokio::test]
async fn a_sentinel_topology_starts_with_every_sentinel_knowing_the_master_and_its_replicas() {
    let started = Instant::now();
    let sentinel = RedisSentinel::start().await;
    println!(
        "redis sentinel (1 master, 2 replicas, 3 sentinels) ready in {:?}",
        started.elapsed()
    );

    assert_eq!(sentinel.sentinel_urls().split(',').count(), 3);
    assert!(sentinel.master_name().starts_with("o365-"));
    let master = sentinel.master_port().await;
    assert_eq!(role(master).await, "master");
    set_replicated(master, "k", "v", 2).await;
    assert!(!sentinel.ports().contains(&6379));

    let (pids, ports, dir) = (
        sentinel.pids(),
        sentinel.ports(),
        sentinel.dir().to_path_buf(),
    );
    drop(sentinel);
    assert_gone(&pids, &ports, &dir);
}

#[tokio::test]
async fn killing_the_sentinel_master_promotes_a_replica_within_ten_seconds_with_the_keys_it_had() {
    let started = Instant::now();
    let mut sentinel = RedisSentinel::start().await;
    println!(
        "redis sentinel (1 master, 2 replicas, 3 sentinels) ready in {:?}",
        started.elapsed()
    );
    let master = sentinel.master_port().await;
    set_replicated(master, "survivor", "still here", 2).await;

    let killed = sentinel.kill_master().await;
    assert_eq!(killed, master);
    let took = sentinel.wait_for_failover(FAILOVER_WAIT).await;
    println!("redis sentinel failover {took:?} after SIGKILL of the master");

    let promoted = sentinel.master_port().await;
    assert_ne!(promoted, master);
    assert_eq!(role(promoted).await, "master");
    assert_eq!(
        get(promoted, "survivor").await.unwrap().as_deref(),
        Some("still here")
    );

    let (pids, ports, dir) = (
        sentinel.pids(),
        sentinel.ports(),
        sentinel.dir().to_path_buf(),
    );
    drop(sentinel);
    assert_gone(&pids, &ports, &dir);
}

#[tokio::test]
async fn a_topology_dropped_by_a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        let cluster = RedisCluster::start_with(1, 0).await;
        tx.send((cluster.pids(), cluster.ports(), cluster.dir().to_path_buf()))
            .unwrap();
        panic!("a test fails with its cluster running");
    });
    assert!(task.await.is_err_and(|e| e.is_panic()));
    let (pids, ports, dir) = rx.recv().expect("the cluster started");
    assert_gone(&pids, &ports, &dir);
}

#[tokio::test]
async fn the_promoted_sentinel_master_fails_over_again_when_it_is_killed_in_turn() {
    let mut sentinel = RedisSentinel::start().await;
    let first = sentinel.kill_master().await;
    let took = sentinel.wait_for_failover(FAILOVER_WAIT).await;
    let second = sentinel.kill_master().await;
    assert_ne!(first, second);
    let again = sentinel.wait_for_failover(FAILOVER_WAIT).await;
    println!("redis sentinel failovers {took:?}, then {again:?} for the promoted master");
    let last = sentinel.master_port().await;
    assert!(![first, second].contains(&last));
    assert_eq!(role(last).await, "master");
}
