//! The harness against the real RabbitMQ and Redis: what a guard removes is gone, a sink sees
//! what is published to its exchange, a cut proxy drops its connections.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::Duration;
use test_support::*;

async fn redis_keys(prefix: &str) -> Vec<String> {
    let mut c = redis_connection().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .expect("KEYS answers")
}

async fn queue_exists(queue: &str) -> bool {
    let conn = amqp_connection().await;
    let exists = sink::depth(&conn, queue).await.is_some();
    let _ = conn.close(200, "bye".into()).await;
    exists
}

async fn make_resources(names: &Names) {
    let mut c = redis_connection().await;
    for k in ["a", "b:c"] {
        let _: () = redis::cmd("SET")
            .arg(format!("{}{k}", names.prefix))
            .arg("1")
            .query_async(&mut c)
            .await
            .expect("SET answers");
    }
    let sink = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Plain)
        .await
        .expect("RabbitMQ is running");
    sink.channel()
        .queue_declare(
            names.work_queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the work queue");
    sink.close().await;
    assert_eq!(redis_keys(&names.prefix).await.len(), 2);
    assert!(queue_exists(&names.sink).await && queue_exists(&names.work_queue).await);
}

#[tokio::test]
async fn a_released_guard_leaves_no_queue_and_no_key_behind() {
    let names = Names::new("ts");
    make_resources(&names).await;
    let mut guard = ResourceGuard::for_relay(&names, Vec::<String>::new());
    guard.release().await;
    assert!(redis_keys(&names.prefix).await.is_empty());
    assert!(!queue_exists(&names.sink).await);
    assert!(!queue_exists(&names.work_queue).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_cleans_up_too() {
    let names = Names::new("ts");
    make_resources(&names).await;
    drop(ResourceGuard::for_relay(&names, Vec::<String>::new()));
    assert!(redis_keys(&names.prefix).await.is_empty());
    assert!(!queue_exists(&names.sink).await);
    assert!(!queue_exists(&names.work_queue).await);
}

#[tokio::test]
async fn a_sink_reads_back_what_is_published_to_its_exchange() {
    let names = Names::new("ts");
    let mut guard = ResourceGuard::for_relay(&names, Vec::<String>::new());
    let sink = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Plain)
        .await
        .expect("RabbitMQ is running");
    let mut headers = FieldTable::default();
    headers.insert(
        "o365-tenant-id".into(),
        AMQPValue::LongString(TENANT_A.into()),
    );
    headers.insert("o365-record-type".into(), AMQPValue::LongInt(15));
    for (i, key) in ["Audit.Exchange.x", "DLP.All.y"].into_iter().enumerate() {
        sink.channel()
            .basic_publish(
                names.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                format!(r#"{{"Id":"{i}"}}"#).as_bytes(),
                BasicProperties::default()
                    .with_message_id(format!("id-{i}").into())
                    .with_headers(headers.clone()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let got = sink
        .messages(2, Duration::from_secs(10), Duration::from_millis(200))
        .await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].routing_key, "Audit.Exchange.x");
    assert_eq!(got[1].routing_key, "DLP.All.y");
    assert_eq!(got[1].message_id.as_deref(), Some("id-1"));
    assert_eq!(got[1].json().expect("JSON body")["Id"], "1");
    assert_eq!(got[0].headers["o365-tenant-id"], TENANT_A);
    assert_eq!(got[0].headers["o365-record-type"], "15");
    sink.close().await;
    guard.release().await;
}

#[tokio::test]
async fn a_counter_counts_what_reaches_the_sink_and_starts_again_on_reset() {
    let names = Names::new("ts");
    let mut guard = ResourceGuard::for_relay(&names, Vec::<String>::new());
    let sink = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Durable)
        .await
        .expect("RabbitMQ is running");
    let counter = sink.counter().await.expect("consume the sink");
    let publish = |n: usize| {
        let ch = sink.channel().clone();
        let exchange = names.exchange.clone();
        async move {
            for i in 0..n {
                ch.basic_publish(
                    exchange.as_str().into(),
                    "Audit.General.x".into(),
                    BasicPublishOptions::default(),
                    format!(r#"{{"Id":"{i}"}}"#).as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
        }
    };
    publish(3).await;
    counter
        .wait_for(3, Duration::from_secs(10))
        .await
        .expect("three arrive");
    assert!(counter
        .wait_for(4, Duration::from_millis(300))
        .await
        .is_err());
    counter.reset();
    assert_eq!(counter.get(), 0);
    publish(2).await;
    counter
        .wait_for(2, Duration::from_secs(10))
        .await
        .expect("two more arrive");
    assert_eq!(counter.get(), 2);
    drop(counter);
    sink.close().await;
    guard.release().await;
}

#[tokio::test]
async fn a_cut_proxy_drops_its_connections_until_restored() {
    let proxy = Proxy::start(REDIS_ADDR).await;
    let url = redis_url(&proxy.addr());
    let ping = |url: String| async move {
        let client = redis::Client::open(url).expect("a valid URL");
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok_and(|p| p == "PONG")
    };
    assert!(ping(url.clone()).await, "through the proxy");
    proxy.cut();
    let cut = tokio::time::timeout(Duration::from_secs(5), ping(url.clone())).await;
    assert!(!cut.unwrap_or(false), "refused while cut");
    proxy.restore();
    assert!(ping(url).await, "restored");
}
