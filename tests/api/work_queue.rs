//! The work queue settles every job exactly once, also when its handler panics; background
//! loops are supervised; a stop keeps to one shutdown budget.

use crate::helpers::*;
use o365_relay::domain::{ContentId, ContentType, Source, TenantId, WorkItem};
use o365_relay::ops::supervise::Policy;
use o365_relay::pipeline::work_queue::Outcome;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn item(env: &TestEnv, id: &str) -> WorkItem {
    WorkItem {
        tenant_id: TenantId::parse(TENANT_A).unwrap(),
        content_type: ContentType::Exchange,
        content_id: ContentId::parse(id).unwrap(),
        content_uri: format!(
            "{}/api/v1.0/{TENANT_A}/activity/feed/audit/{id}",
            env.sim.url()
        ),
        content_created: None,
        content_expiration: None,
        source: Source::Webhook,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_handler_panics_is_dead_lettered_and_the_others_settle() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let items: Vec<WorkItem> = (0..5).map(|i| item(&env, &format!("job${i}"))).collect();
    env.relay.work_queue.enqueue(&items).await.unwrap();
    let queue = env.relay.work_queue.clone();
    let stop = CancellationToken::new();
    let consuming = {
        let stop = stop.clone();
        tokio::spawn(async move {
            queue
                .consume(4, &stop, Duration::from_secs(2), |job| async move {
                    if job.item.content_id.as_str() == "job$3" {
                        panic!("injected fault in job$3");
                    }
                    Outcome::Done
                })
                .await
        })
    };
    let dead = env
        .drain(
            &format!("{}.dead", env.work_queue),
            1,
            Duration::from_secs(10),
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("panic")
    );
    assert!(header(&dead[0], "o365-dead-reason")
        .unwrap()
        .contains("injected fault in job$3"));
    assert_eq!(
        header(&dead[0], "o365-tenant-id").as_deref(),
        Some(TENANT_A)
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.depth(&env.work_queue.clone()).await == 0
        })
        .await
    );
    stop.cancel();
    consuming.await.unwrap().unwrap();
    // Nothing was left unacked: after the consumer's channel closed, nothing came back.
    assert_eq!(env.depth(&env.work_queue.clone()).await, 0);
    assert!(env.metrics().await.contains("o365_job_panics_total 1\n"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_loop_that_keeps_panicking_fails_healthz_so_the_pod_is_restarted() {
    let env = TestEnv::start(Options::default()).await;
    let healthz = format!("{}/healthz", env.admin_url);
    assert_eq!(env.http.get(&healthz).send().await.unwrap().status(), 200);
    env.relay.supervisor.spawn_with(
        "injected",
        Policy {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_restarts: 3,
            window: Duration::from_secs(60),
        },
        |_stop| async { panic!("injected fault") },
    );
    let failed = eventually(Duration::from_secs(10), || async {
        env.http.get(&healthz).send().await.unwrap().status() == 503
    })
    .await;
    assert!(failed, "/healthz turns 503");
    let body: serde_json::Value = env
        .http
        .get(&healthz)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["failed_tasks"], serde_json::json!(["injected"]));
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(env
        .metrics()
        .await
        .contains(r#"o365_task_restarts_total{task="injected"} 3"#));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_keeps_to_one_shutdown_budget_and_leaves_the_blob_in_flight_queued() {
    let mut env = TestEnv::start(Options {
        extra_env: vec![
            ("O365_SHUTDOWN_TIMEOUT".into(), "2s".into()),
            ("O365_FETCH_TIMEOUT".into(), "5m".into()),
        ],
        ..Default::default()
    })
    .await;
    let blob = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(20))
        .await
        .remove(0);
    env.sim.fault_for(
        &blob.content_id,
        o365_sim::Fault::DripFeed {
            chunk: 8,
            interval: Duration::from_millis(200),
        },
    );
    assert_eq!(
        env.notify(&env.notification(std::slice::from_ref(&blob)))
            .await
            .status(),
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.sim.content_gets_for(&blob.content_id) == 1
        })
        .await
    );
    let started = Instant::now();
    env.main.stop.cancel();
    let app = env.main.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), app)
        .await
        .expect("the relay stopped")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(3),
        "stopped in {took:?}, budget 2 s (+ closing the connection)"
    );
    // The drip-fed blob was not finished: RabbitMQ has it again for the next replica.
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.depth(&env.work_queue.clone()).await == 1
        })
        .await
    );
    env.cleanup().await;
}
