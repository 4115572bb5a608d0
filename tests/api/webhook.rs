//! `POST /webhook`: validation, authentication, blob checks, durability.

use crate::helpers::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validation_request_is_answered_200_and_enqueues_nothing() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let r = env
        .http
        .post(format!("{}/webhook", env.public_url))
        .header("Webhook-AuthID", &env.auth_id)
        .header("Webhook-ValidationCode", "6a1b2c3d")
        .header("Content-Type", "application/json; charset=utf-8")
        .body(r#"{"validationCode":"6a1b2c3d"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = env
        .notify(&serde_json::json!({"validationCode": "abc"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.depth(&env.work_queue.clone()).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_start_performs_the_validation_handshake_with_our_webhook() {
    let env = TestEnv::start(Options::default()).await;
    let tenant = o365_relay::domain::TenantId::parse(TENANT_A).unwrap();
    let outcomes = env
        .relay
        .subscriptions
        .start_all(&tenant, None, false)
        .await;
    assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
    let subs = env.sim.subscriptions(TENANT_A);
    assert_eq!(subs.len(), 5);
    for s in subs {
        assert_eq!(s.status, "enabled");
        let hook = s.webhook.expect("webhook registered");
        assert_eq!(hook.address, format!("{}/webhook", env.public_url));
        assert_eq!(hook.status, "enabled");
        assert_eq!(hook.auth_id, env.auth_id);
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_wrong_auth_id_is_401_and_enqueues_nothing() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let blob = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await;
    let body = serde_json::to_vec(&env.notification(&blob)).unwrap();
    for auth in [
        None,
        Some("wrong-auth-id-0000000000"),
        Some(""),
        Some(&env.auth_id[..env.auth_id.len() - 1]),
    ] {
        let mut req = env
            .http
            .post(format!("{}/webhook", env.public_url))
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("Webhook-AuthID", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "auth {auth:?}");
        let j: serde_json::Value = r.json().await.unwrap();
        assert!(j["error"].as_str().unwrap().contains("Webhook-AuthID"));
    }
    // A validation request with a wrong auth id is refused too.
    let r = env
        .http
        .post(format!("{}/webhook", env.public_url))
        .header("Webhook-AuthID", "nope-nope-nope-nope")
        .header("Webhook-ValidationCode", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(env.depth(&env.work_queue.clone()).await, 0);
    env.cleanup().await;
}

/// A listener that counts every connection it receives (the "foreign server").
pub async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_failing_blob_check_is_400_enqueues_nothing_and_reaches_no_server() {
    let env = TestEnv::start(Options {
        static_tenants: vec![TENANT_A.into()],
        ..Default::default()
    })
    .await;
    let (foreign, hits) = counting_listener().await;
    let good = env
        .sim
        .publish(TENANT_A, "Audit.SharePoint", 1, Some(2))
        .await;
    let b = &good[0];
    let base = env.notification(&good)[0].clone();
    let with = |k: &str, v: serde_json::Value| {
        let mut x = base.clone();
        x[k] = v;
        x
    };
    let path = format!(
        "/api/v1.0/{}/activity/feed/audit/{}",
        b.tenant_id, b.content_id
    );
    let cases = vec![
        (
            "foreign contentUri origin",
            with("contentUri", format!("{foreign}{path}").into()),
        ),
        (
            "other host and port",
            with(
                "contentUri",
                format!(
                    "{}{path}",
                    env.sim.url().replace(|c: char| c.is_ascii_digit(), "1")
                )
                .into(),
            ),
        ),
        (
            "https instead of http",
            with(
                "contentUri",
                format!("{}{path}", env.sim.url().replace("http://", "https://")).into(),
            ),
        ),
        (
            "userinfo in contentUri",
            with(
                "contentUri",
                format!("{}{path}", env.sim.url().replace("http://", "http://evil@")).into(),
            ),
        ),
        (
            "query in contentUri",
            with("contentUri", format!("{}{path}?x=1", env.sim.url()).into()),
        ),
        (
            "other tenant in path",
            with(
                "contentUri",
                format!(
                    "{}/api/v1.0/{TENANT_B}/activity/feed/audit/{}",
                    env.sim.url(),
                    b.content_id
                )
                .into(),
            ),
        ),
        (
            "other content id in path",
            with(
                "contentUri",
                format!(
                    "{}/api/v1.0/{}/activity/feed/audit/other",
                    env.sim.url(),
                    b.tenant_id
                )
                .into(),
            ),
        ),
        (
            "other path",
            with(
                "contentUri",
                format!(
                    "{}/api/v1.0/{}/activity/feed/subscriptions/list",
                    env.sim.url(),
                    b.tenant_id
                )
                .into(),
            ),
        ),
        (
            "wrong client id",
            with("clientId", "00000000-0000-0000-0000-000000000000".into()),
        ),
        ("tenant not served", with("tenantId", TENANT_B.into())),
        (
            "tenant not a GUID",
            with("tenantId", "contoso.onmicrosoft.com".into()),
        ),
        (
            "unknown content type",
            with("contentType", "Audit.Everything".into()),
        ),
        (
            "missing contentId",
            with("contentId", serde_json::Value::Null),
        ),
        ("bad contentId", with("contentId", "../../x".into())),
    ];
    for (name, bad) in cases {
        // The bad blob rides along with a good one: the whole request must be refused.
        let body = serde_json::json!([base.clone(), bad]);
        let r = env.notify(&body).await;
        assert_eq!(r.status(), 400, "{name}");
        let j: serde_json::Value = r.json().await.unwrap();
        assert!(
            j["error"].as_str().unwrap().starts_with("blob 1:"),
            "{name}: {j}"
        );
    }
    for (name, body, status) in [
        ("not JSON", "this is not json".to_string(), 400),
        ("object, not array", r#"{"tenantId":"x"}"#.to_string(), 400),
    ] {
        let r = env
            .http
            .post(format!("{}/webhook", env.public_url))
            .header("Webhook-AuthID", &env.auth_id)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{name}");
    }
    let r = env
        .http
        .post(format!("{}/webhook", env.public_url))
        .header("Webhook-AuthID", &env.auth_id)
        .header("Content-Type", "text/plain")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let big = format!("[{}]", " ".repeat(1024 * 1024 + 10));
    let r = env
        .http
        .post(format!("{}/webhook", env.public_url))
        .header("Webhook-AuthID", &env.auth_id)
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A barrier, not a pause: the good blob alone, accepted and relayed by the workers. Every
    // refused request above was answered before it was sent, so had any of them been enqueued,
    // the workers (running) would have taken it by the time this one is relayed.
    let r = env.notify(&serde_json::json!([base.clone()])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.records(2).await.len(), 2, "the good blob was relayed");
    let m = env.metrics().await;
    assert!(
        m.contains(r#"o365_notifications_total{reason="ok",result="accepted"} 1"#),
        "only the last request was accepted: {m}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request may reach a foreign server"
    );
    assert_eq!(env.sim.content_gets(), 1, "only the good blob was fetched");
    assert_eq!(
        env.depth_or_zero(&format!("{}.dead", env.work_queue)).await,
        0,
        "nothing was dead-lettered"
    );
    assert!(
        m.contains(r#"o365_notifications_total{reason="content_uri",result="rejected"} 8"#),
        "{m}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_blobs_are_durably_queued_before_200() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let blobs = env.sim.publish(TENANT_A, "Audit.General", 3, Some(2)).await;
    let r = env.notify(&env.notification(&blobs)).await;
    assert_eq!(r.status(), 200);
    // Confirmed before 200: the messages are in the queue the moment we look.
    assert_eq!(env.depth(&env.work_queue.clone()).await, 3);
    let msgs = env
        .drain(
            &env.work_queue.clone(),
            3,
            Duration::from_secs(5),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(msgs.len(), 3);
    for (m, b) in msgs.iter().zip(&blobs) {
        assert_eq!(m.properties.delivery_mode(), &Some(2));
        let item: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(item["contentId"], b.content_id.as_str());
        assert_eq!(item["source"], "webhook");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_unreachable_answers_503_so_microsoft_retries() {
    let env = TestEnv::start(Options {
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        workers: false,
        ..Default::default()
    })
    .await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(1))
        .await;
    let r = env.notify(&env.notification(&blobs)).await;
    assert_eq!(r.status(), 503);
    let j: serde_json::Value = r.json().await.unwrap();
    assert!(j["error"].as_str().unwrap().contains("unavailable"));
    let r = env
        .http
        .get(format!("{}/readyz", env.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let j: serde_json::Value = r.json().await.unwrap();
    assert!(j["reasons"].to_string().contains("rabbitmq"), "{j}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_validation_header_with_a_notification_array_is_400_and_enqueues_nothing() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(2))
        .await;
    let r = env
        .http
        .post(format!("{}/webhook", env.public_url))
        .header("Webhook-AuthID", &env.auth_id)
        .header("Webhook-ValidationCode", "6a1b2c")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&env.notification(&blobs)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "neither a validation nor to be dropped");
    // The handler has finished with the request once it answered (an accepted blob is queued
    // with confirms before the answer): the queue shows whatever it did.
    assert_eq!(env.depth(&env.work_queue.clone()).await, 0);
    // The same body without the header is accepted, and the queue shows it.
    let r = env.notify(&env.notification(&blobs)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.depth(&env.work_queue.clone()).await, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_content_id_named_fifty_times_in_a_request_is_enqueued_and_fetched_once() {
    let env = TestEnv::start(Options::default()).await;
    let blob = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await
        .remove(0);
    let copies = vec![blob.clone(); 50];
    let r = env.notify(&env.notification(&copies)).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1);
    let got = env.records(blob.record_ids.len()).await;
    assert_eq!(got.len(), blob.record_ids.len());
    assert_eq!(env.sim.content_gets_for(&blob.content_id), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_that_trickles_in_is_cut_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start(Options {
        workers: false,
        extra_env: vec![("O365_WEBHOOK_BODY_TIMEOUT".into(), "1s".into())],
        ..Default::default()
    })
    .await;
    let addr = env.public_url.trim_start_matches("http://").to_string();
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nWebhook-AuthID: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[",
        env.auth_id
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    // One byte every 300 ms: each read arrives in time, the whole never does.
    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(6), rd.read(&mut answer))
        .await
        .expect("the relay answered before the body was complete")
        .unwrap();
    writer.abort();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    env.cleanup().await;
}
