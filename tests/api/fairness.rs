//! Fairness between tenants (`src/pipeline/scheduling.rs`): one tenant's backlog does not hold another's
//! fresh blobs back, and a blob waiting for its tenant's turn is deferred — never counted as a
//! failed attempt, never lost.
//!
//! Timing goals (seconds of latency, minutes of quota) belong to the benchmark (`o365-bench`,
//! section 6); these tests assert by order and by count.

use crate::helpers::*;
use o365_relay::domain::{ContentId, ContentType, Source, TenantId, WorkItem};
use o365_relay::pipeline::work_queue::Outcome;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tenant A's backlog: many times what its budget serves while B's blobs are relayed.
const A_BLOBS: usize = 240;
const B_BLOBS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_fresh_blobs_overtake_another_tenants_backlog_and_every_record_arrives() {
    // A budget of 1,200 requests a minute gives A a turn every 51 ms; a share of two workers
    // per tenant on three: A's backlog cannot hold them all.
    let env = TestEnv::start(Options {
        extra_env: vec![
            ("O365_QUOTA_PER_MINUTE".into(), "1200".into()),
            ("O365_WORKER_CONCURRENCY".into(), "3".into()),
            ("O365_TENANT_CONCURRENCY".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let a = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", A_BLOBS, Some(10))
        .await;
    let b = env
        .sim
        .publish(TENANT_B, "Audit.SharePoint", B_BLOBS, Some(2))
        .await;
    // A's whole backlog is in the work queue before B notifies.
    for chunk in a.chunks(o365_sim::MAX_BLOBS_PER_POST) {
        assert_eq!(env.notify(&env.notification(chunk)).await.status(), 200);
    }
    assert_eq!(env.notify(&env.notification(&b)).await.status(), 200);

    let blobs: Vec<&o365_sim::SimBlob> = a.iter().chain(&b).collect();
    // How often each record occurs in the blobs (the simulator repeats some across blobs).
    let mut occurs: HashMap<&str, usize> = HashMap::new();
    for blob in &blobs {
        for id in blob.record_ids.iter().collect::<HashSet<_>>() {
            *occurs.entry(id.as_str()).or_default() += 1;
        }
    }
    let got = env
        .drain(
            &env.sink.clone(),
            occurs.len(),
            Duration::from_secs(90),
            Duration::from_secs(1),
        )
        .await;

    // Every record of A and B arrived; none more often than Microsoft put it in blobs (a record
    // in two blobs fetched at the same moment may come twice: at-least-once).
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in &got {
        let id = sink::message_id(d);
        let n = seen.entry(id.clone()).or_default();
        *n += 1;
        assert!(
            *n <= occurs.get(id.as_str()).copied().unwrap_or(0),
            "record {id} arrived {n} times"
        );
    }
    assert_eq!(seen.len(), occurs.len(), "every distinct record arrived");

    // By order: when B's last record reached the exchange, most of A's backlog had not.
    let b_ids: HashSet<&str> = b.iter().map(|x| x.content_id.as_str()).collect();
    let content_id =
        |d: &lapin::message::Delivery| header(d, "o365-content-id").unwrap_or_default();
    let last_b = got
        .iter()
        .rposition(|d| b_ids.contains(content_id(d).as_str()))
        .expect("B's records arrived");
    let a_before: HashSet<String> = got[..last_b]
        .iter()
        .map(content_id)
        .filter(|c| !b_ids.contains(c.as_str()))
        .collect();
    assert!(
        a_before.len() < A_BLOBS / 2,
        "B's blobs waited for {} of A's {A_BLOBS} blobs",
        a_before.len()
    );

    // Waiting cost Microsoft nothing: each blob was fetched once, and nothing was dead-lettered.
    for blob in &blobs {
        assert_eq!(env.sim.content_gets_for(&blob.content_id), 1);
    }
    assert_eq!(env.depth(&format!("{}.dead", env.work_queue)).await, 0);
    let metrics = env.metrics().await;
    assert!(
        metrics.contains(r#"o365_deferred_total{reason="tenant_busy"}"#),
        "A's blobs were deferred, not waited for:\n{metrics}"
    );
    assert!(metrics.contains(&format!(
        r#"o365_blobs_total{{result="relayed"}} {}"#,
        A_BLOBS + B_BLOBS
    )));
    env.cleanup().await;
}

fn item(env: &TestEnv, id: &str, expires_in: Option<chrono::Duration>) -> WorkItem {
    WorkItem {
        tenant_id: TenantId::parse(TENANT_A).unwrap(),
        content_type: ContentType::Exchange,
        content_id: ContentId::parse(id).unwrap(),
        content_uri: format!(
            "{}/api/v1.0/{TENANT_A}/activity/feed/audit/{id}",
            env.sim.url()
        ),
        content_created: None,
        content_expiration: expires_in
            .map(|d| (chrono::Utc::now() + d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        source: Source::Webhook,
    }
}

/// Consumes the work queue with `handler` until `stop`.
fn consume<H, Fut>(
    env: &TestEnv,
    stop: &CancellationToken,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(o365_relay::pipeline::work_queue::Job) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let queue = env.relay.work_queue.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        queue
            .consume(2, &stop, Duration::from_secs(2), handler)
            .await
            .unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deferred_job_keeps_its_attempt_count_and_outwaits_the_attempt_limit() {
    // O365_MAX_ATTEMPTS is 4 in these tests; the job is deferred 6 times, then done.
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let job = item(&env, "defer$1", Some(chrono::Duration::days(7)));
    env.relay.work_queue.enqueue(&[job]).await.unwrap();
    let runs: Arc<Mutex<Vec<(u32, bool)>>> = Arc::default();
    let stop = CancellationToken::new();
    let consuming = consume(&env, &stop, {
        let runs = runs.clone();
        move |job| {
            let runs = runs.clone();
            async move {
                let mut runs = runs.lock().unwrap();
                runs.push((job.attempt, job.not_before.is_some()));
                if runs.len() <= 6 {
                    Outcome::Defer {
                        delay: Duration::from_millis(50),
                        reason: "quota",
                    }
                } else {
                    Outcome::Done
                }
            }
        }
    });
    let done = eventually(Duration::from_secs(30), || async {
        runs.lock().unwrap().len() == 7
    })
    .await;
    assert!(done, "ran {} times", runs.lock().unwrap().len());
    stop.cancel();
    consuming.await.unwrap();
    let runs = runs.lock().unwrap().clone();
    assert!(runs.iter().all(|(attempt, _)| *attempt == 0), "{runs:?}");
    assert_eq!(
        runs.iter().map(|(_, turn)| *turn).collect::<Vec<_>>(),
        [false, true, true, true, true, true, true],
        "a deferred job carries its turn"
    );
    assert_eq!(env.depth(&format!("{}.dead", env.work_queue)).await, 0);
    assert!(env
        .metrics()
        .await
        .contains(r#"o365_deferred_total{reason="quota"} 6"#));
    env.cleanup().await;
}

/// A job whose content expires in five minutes, deferred for ten with `reason`: the one dead
/// letter it becomes, and the environment (for its metrics).
async fn deferred_past_expiry(
    id: &str,
    reason: &'static str,
) -> (TestEnv, lapin::message::Delivery) {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let job = item(&env, id, Some(chrono::Duration::minutes(5)));
    env.relay.work_queue.enqueue(&[job]).await.unwrap();
    let stop = CancellationToken::new();
    let consuming = consume(&env, &stop, move |_job| async move {
        Outcome::Defer {
            delay: Duration::from_secs(600),
            reason,
        }
    });
    let mut dead = env
        .drain(
            &format!("{}.dead", env.work_queue),
            1,
            Duration::from_secs(10),
            Duration::from_millis(300),
        )
        .await;
    stop.cancel();
    consuming.await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "o365-attempt").as_deref(), Some("0"));
    (env, dead.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_deferred_past_its_contents_expiration_is_dead_lettered_as_expired() {
    let (env, dead) = deferred_past_expiry("defer$2", "quota").await;
    assert_eq!(header(&dead, "o365-error-code").as_deref(), Some("expired"));
    assert!(header(&dead, "o365-dead-reason")
        .unwrap()
        .contains("before its tenant's turn"));
    env.cleanup().await;
}

/// Issue 19: a blob that waited for a consumer's full queue until its content would expire is
/// dead-lettered with a code naming that cause, not as a plain expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_waiting_for_a_full_consumer_queue_past_expiry_is_dead_lettered_as_downstream_full() {
    let (env, dead) = deferred_past_expiry(
        "defer$3",
        o365_relay::pipeline::backpressure::DOWNSTREAM_FULL,
    )
    .await;
    assert_eq!(
        header(&dead, "o365-error-code").as_deref(),
        Some("downstream_full")
    );
    assert!(header(&dead, "o365-dead-reason")
        .unwrap()
        .contains("consumer queue"));
    assert!(env
        .metrics()
        .await
        .contains(r#"o365_dead_letter_total{reason="downstream_full"} 1"#));
    env.cleanup().await;
}

/// Issue 19: every blob the work queue takes — the webhook's as the reconciler's — is marked in
/// flight, and a deferred one keeps its marker for the whole wait, so reconciliation does not
/// queue a second copy of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enqueued_or_deferred_blob_is_marked_in_flight_for_as_long_as_it_waits() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let job = item(&env, "inflight$1", None);
    let (tenant, blob) = (job.tenant_id.clone(), job.content_id.clone());
    let in_flight = || async {
        env.relay
            .store
            .dedup()
            .markers(&tenant, &[&blob])
            .await
            .unwrap()[0]
            .enqueued
    };
    assert!(!in_flight().await);
    env.relay.work_queue.enqueue(&[job]).await.unwrap();
    let mut marked = false;
    for _ in 0..50 {
        if in_flight().await {
            marked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(marked, "an enqueued blob is marked in flight");
    // Deferred for an hour: the marker outlives the wait.
    let stop = CancellationToken::new();
    let consuming = consume(&env, &stop, |_job| async {
        Outcome::Defer {
            delay: Duration::from_secs(3600),
            reason: o365_relay::pipeline::backpressure::DOWNSTREAM_FULL,
        }
    });
    let key = format!("{}reconcile-enqueued:{tenant}:{blob}", env.prefix);
    let mut ttl_ms = 0i64;
    for _ in 0..100 {
        ttl_ms = pttl(&key).await;
        if ttl_ms > 3_600_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    consuming.await.unwrap();
    assert!(
        ttl_ms > 3_600_000,
        "the in-flight marker covers the hour's wait (PTTL {ttl_ms} ms)"
    );
    env.cleanup().await;
}

/// A key's remaining time to live on the machine's Redis, in milliseconds (negative: none).
async fn pttl(key: &str) -> i64 {
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("URL");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running on 127.0.0.1:6379");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("PTTL")
}
