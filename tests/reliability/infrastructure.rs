//! RabbitMQ and Redis go away mid-stream (a TCP proxy between the relay and each is cut, then
//! restored: the machine's shared servers are never stopped).

use crate::harness::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connections_cut_mid_stream_reconnect_without_loss() {
    let proxy = Proxy::start(AMQP_ADDR).await;
    let mut setup = Setup::new("amqp-cut");
    setup.amqp_addr = proxy.addr();
    let mut h = Harness::start(setup).await;
    let _relay = h.relay_up().await;
    let load = h.load(120, 20, 4, Duration::from_millis(200));
    let flowing = tokio::time::timeout(Duration::from_secs(30), async {
        while h.received.lock().unwrap().total < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(flowing.is_ok(), "records never started flowing");
    // Twice: a short blip, then a 5-second outage.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    let since = Instant::now();
    load.await.unwrap();
    let row = h
        .settle(
            "RabbitMQ connections cut (0.3 s, then 5 s)",
            since,
            Duration::from_secs(90),
            Duration::from_secs(2),
            "TCP proxy closed every connection and refused new ones".into(),
        )
        .await;
    h.assert_none_lost(&row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unavailable_for_a_while_keeps_relaying_without_loss() {
    let proxy = Proxy::start(REDIS_ADDR).await;
    let mut setup = Setup::new("redis-cut");
    setup.redis_addr = proxy.addr();
    let mut h = Harness::start(setup).await;
    let _relay = h.relay_up().await;
    let load = h.load(120, 20, 4, Duration::from_millis(200));
    let flowing = tokio::time::timeout(Duration::from_secs(30), async {
        while h.received.lock().unwrap().total < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(flowing.is_ok(), "records never started flowing");
    proxy.cut();
    let before = h.received.lock().unwrap().total;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = h.received.lock().unwrap().total - before;
    proxy.restore();
    let since = Instant::now();
    load.await.unwrap();
    let row = h
        .settle(
            "Redis unreachable for 8 s",
            since,
            Duration::from_secs(90),
            Duration::from_secs(2),
            format!("{during} records relayed while Redis was cut"),
        )
        .await;
    h.assert_none_lost(&row);
    assert!(
        during > 0,
        "nothing was relayed while Redis was down: the relay must keep working"
    );
}
