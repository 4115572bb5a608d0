//! A RabbitMQ cluster of three nodes: the relay connects through a list of endpoints, and
//! loses nothing when the node it is connected to dies.
//!
//! One cluster ([`RabbitCluster`], about 30 s to boot) serves both fault tests in turn, so they
//! are one test: (c) one relay, then (d) three replicas, each with blobs notified continuously
//! while the node holding the relays' connections (found by connection name) is SIGKILLed.
//! Each prints its RELIABILITY.md row; the test then kills every node and checks the webhook
//! answers 503 while no node takes a blob.

mod harness;

use harness::*;
use std::time::{Duration, Instant};

/// Blobs × records the simulator publishes per scenario, 3 blobs every 200 ms (about 8 s): the
/// kill falls a few seconds in, and blobs keep coming well after the recovery.
const BLOBS: usize = 120;
const RECORDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_under_one_relay_or_three_replicas_dies_mid_stream_and_no_record_is_lost() {
    init_tracing();
    let started = Instant::now();
    let cluster = RabbitCluster::start()
        .await
        .unwrap_or_else(|e| panic!("the RabbitMQ cluster did not start: {e}"));
    println!(
        "cluster of {NODES} nodes up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (one, killed) = node_dies_under(&cluster, 1, false).await;
    cluster
        .restart(killed)
        .await
        .unwrap_or_else(|e| panic!("node {killed} did not come back: {e}"));
    let (three, _) = node_dies_under(&cluster, 3, true).await;
    println!("both scenarios in {:.1} s", started.elapsed().as_secs_f64());

    for row in [&one, &three] {
        assert!(row.sent > 0, "the simulator published nothing");
        assert_eq!(
            row.lost, 0,
            "{}: {} of {} records never reached the sink",
            row.fault, row.lost, row.sent
        );
        assert_eq!(row.unexpected, 0, "{}: records nobody published", row.fault);
    }
}

/// One scenario: `replicas` relays on the cluster, load, the node under their connections
/// SIGKILLed mid-stream. Returns the row and the node killed. With `then_all_nodes`, every
/// node is killed afterwards and the webhook must answer 503.
async fn node_dies_under(
    cluster: &RabbitCluster,
    replicas: usize,
    then_all_nodes: bool,
) -> (Row, usize) {
    let mut fleet = Fleet::start(cluster, replicas).await;

    // The relay's queues, and the sink, are quorum queues with a member on every node.
    let mut all: Vec<String> = (1..=NODES)
        .map(|n| cluster.node_name(n).to_string())
        .collect();
    all.sort();
    let mut queues = cluster
        .quorum_members()
        .await
        .unwrap_or_else(|e| panic!("list the quorum queues: {e}"));
    for q in fleet
        .relay_queues()
        .into_iter()
        .chain([fleet.names.sink.clone()])
    {
        let mut members = queues
            .remove(&q)
            .unwrap_or_else(|| panic!("{q} is not a quorum queue"));
        members.sort();
        assert_eq!(members, all, "{q} is not replicated on every node");
    }

    // Every replica holds one connection; they all went to the first endpoint that answered.
    let nodes = fleet
        .relay_nodes(Duration::from_secs(20))
        .await
        .expect("each relay's connection is listed by its name");
    let target = nodes[0];
    assert!(
        nodes.iter().all(|&n| n == target),
        "the replicas connected to different nodes first: {nodes:?}"
    );
    let sink_node = (1..=NODES).find(|&n| n != target).expect("another node");
    fleet.count_on(sink_node).await;

    let load = fleet.load(BLOBS, RECORDS, 3, Duration::from_millis(200));
    let flowing = tokio::time::timeout(Duration::from_secs(60), async {
        while fleet.total() < 300 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(flowing.is_ok(), "records never started flowing");

    let at_kill = fleet.total();
    let kill = Instant::now();
    cluster.kill(target);

    // Records flow again once every replica holds a new connection and the sink's count moves
    // after that.
    let reconnected = eventually(Duration::from_secs(60), || {
        let fleet = &fleet;
        async move {
            for i in 0..fleet.replicas.len() {
                if fleet
                    .metric(i, "o365_amqp_connections_total")
                    .await
                    .unwrap_or(0.0)
                    < 2.0
                {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(reconnected, "a relay did not reconnect within 60 s");
    let before = fleet.total();
    let moved = eventually(Duration::from_secs(60), || {
        let fleet = &fleet;
        async move { fleet.total() > before }
    })
    .await;
    let recovery = kill.elapsed();
    assert!(moved, "no record arrived within 60 s of the reconnection");

    // The relays (and their work-queue consumers) moved to the nodes that are left.
    let after = fleet
        .relay_nodes(Duration::from_secs(20))
        .await
        .expect("each relay holds one connection again");
    assert!(
        after.iter().all(|&n| n != target),
        "a relay is still on the dead node: {after:?}"
    );

    load.await.expect("the load task");
    let settled = fleet
        .settle(kill, Duration::from_secs(90), Duration::from_secs(3))
        .await;
    let who = if replicas == 1 {
        "the relay's".to_string()
    } else {
        format!("{replicas} replicas'")
    };
    let row = Row {
        fault: format!(
            "RabbitMQ cluster of 3: {who} node SIGKILLed mid-stream (URL list of 3, quorum queues)"
        ),
        sent: settled.sent,
        received: settled.received,
        lost: settled.sent - settled.received,
        duplicates: settled.duplicates,
        unexpected: settled.unexpected,
        recovery,
        note: format!(
            "node {target} killed after {at_kill} deliveries; relays reconnected to node(s) {}; last record {:.1} s after the kill",
            distinct(&after)
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            settled.drained.as_secs_f64()
        ),
    };
    row.print();

    let via = if then_all_nodes {
        for n in 1..=NODES {
            cluster.kill(n);
        }
        let asked = Instant::now();
        let status = fleet.notify_one().await.expect("the webhook answers");
        assert_eq!(
            status.as_u16(),
            503,
            "with no node up the webhook must refuse the blob so Microsoft retries"
        );
        println!(
            "every node down: webhook 503 in {:.1} s",
            asked.elapsed().as_secs_f64()
        );
        None
    } else {
        Some(sink_node)
    };
    let clean = fleet.finish(via).await;
    assert!(clean, "a relay did not exit 0 on SIGTERM");
    (row, target)
}
