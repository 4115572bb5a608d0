//! The operator's status, three ways from one source: `/admin/status` (JSON), the page at
//! `/admin/` (behind the admin token, through a session cookie for browsers) and
//! `o365-relay status` — each showing what the data path did, per tenant.

use crate::helpers::*;
use o365_sim::Fault;
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "status-test-admin-token-0123456789";

fn tenant<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant_id"] == id)
        .unwrap_or_else(|| panic!("{id} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_shows_each_tenants_activity_and_the_deployment() {
    let env = TestEnv::start(Options {
        extra_env: vec![("O365_ADMIN_TOKEN".into(), TOKEN.into())],
        ..Default::default()
    })
    .await;
    // Tenant A: two blobs relayed (7 records). Tenant B: one blob Microsoft says expired.
    let a = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 2, Some(3))
        .await;
    let a_more = env.sim.publish(TENANT_A, "Audit.General", 1, Some(1)).await;
    let b = env
        .sim
        .publish(TENANT_B, "Audit.SharePoint", 1, Some(2))
        .await;
    env.sim.fault_for(&b[0].content_id, Fault::Expired);
    let all: Vec<_> = a.iter().chain(&a_more).chain(&b).cloned().collect();
    assert_eq!(env.notify(&env.notification(&all)).await.status(), 200);
    assert_eq!(env.records(7).await.len(), 7);
    let dead = format!("{}.dead", env.work_queue);
    assert!(
        eventually(Duration::from_secs(20), || async {
            env.depth(&dead).await == 1
        })
        .await
    );

    // The keeper's view of A's subscriptions (any subscriptions/list records it).
    let tenant_a = o365_relay::domain::TenantId::parse(TENANT_A).unwrap();
    let started = env
        .relay
        .subscriptions
        .start_all(&tenant_a, None, false)
        .await;
    assert!(started.iter().all(|o| o.ok), "{started:?}");
    env.relay.subscriptions.list(&tenant_a).await.unwrap();

    let url = format!("{}/admin/status", env.admin_url);
    assert_eq!(
        env.http.get(&url).send().await.unwrap().status(),
        401,
        "behind the admin token"
    );
    let status: Value = env
        .http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ta = tenant(&status, TENANT_A);
    assert_eq!(ta["verdict"], "ok", "{ta}");
    assert_eq!(ta["state"]["state"], "healthy");
    assert_eq!(ta["last_hour"]["records"], 7);
    assert_eq!(ta["last_day"]["blobs"], 3);
    assert_eq!(ta["last_day"]["notified"], 3);
    let exchange = ta["content_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["content_type"] == "Audit.Exchange")
        .unwrap();
    assert!(
        exchange["last_notification"].is_string() && exchange["last_relayed"].is_string(),
        "{exchange}"
    );
    assert!(
        ta["token_expires_at"].is_string(),
        "a token was fetched and cached: {ta}"
    );
    assert!(
        ta["quota_used"].as_u64().unwrap() >= 3,
        "three content GETs counted: {ta}"
    );
    let tb = tenant(&status, TENANT_B);
    assert_eq!(tb["verdict"], "attention", "{tb}");
    assert_eq!(tb["last_day"]["dead"], 1);
    assert_eq!(tb["last_dead"]["code"], "AF20051");
    assert!(
        tb["why"].as_str().unwrap().contains("dead-lettered"),
        "{tb}"
    );
    // Tenants needing attention come first.
    assert_eq!(status["tenants"][0]["tenant_id"], TENANT_B);
    let d = &status["deployment"];
    assert_eq!(
        (d["queues"]["work"].as_u64(), d["queues"]["dead"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        d["replicas"].as_array().unwrap().len(),
        1,
        "this relay's heartbeat: {d}"
    );
    assert_eq!(d["quota_per_minute"].as_u64(), Some(2000));

    // The page: a sign-in form without the token; the token buys a session cookie.
    let page = format!("{}/admin/", env.admin_url);
    let r = env.http.get(&page).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains(r#"action="/admin/login""#));
    let wrong = env
        .http
        .post(format!("{}/admin/login", env.admin_url))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let signed_in = env
        .http
        .post(format!("{}/admin/login", env.admin_url))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let session = cookie.split(';').next().unwrap().to_string();
    let html = env
        .http
        .get(&page)
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 200);
    let html = html.text().await.unwrap();
    for needle in [
        TENANT_A,
        TENANT_B,
        "v-attention",
        "AF20051",
        r#"http-equiv="refresh""#,
    ] {
        assert!(html.contains(needle), "{needle} on the page");
    }
    // The cookie reads; it never acts: changes still need the bearer token.
    let requeue = env
        .http
        .post(format!("{}/admin/dead-letters/requeue", env.admin_url))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(requeue.status(), 401);
    assert_eq!(env.depth(&dead).await, 1);

    // The terminal table, from the same sources.
    let out = relay_command(&["status"]).envs(env.vars.clone()).output();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row_a = table
        .lines()
        .find(|l| l.contains(TENANT_A))
        .expect("a row for A");
    assert!(row_a.starts_with("ok") && row_a.contains(" 7 "), "{row_a}");
    let row_b = table
        .lines()
        .find(|l| l.contains(TENANT_B))
        .expect("a row for B");
    assert!(
        row_b.starts_with("attention") && row_b.contains("dead-lettered"),
        "{row_b}"
    );
    assert!(table.contains("dead 1"), "{table}");
    env.cleanup().await;
}

/// What the relay keeps in memory to write in batches — the status page's notification counts
/// (written a second after the first of a window) and the blobs' in-flight markers (5 ms) —
/// reaches Redis at a graceful stop. They are pushed here from a thread without a Tokio runtime,
/// where no delayed write is scheduled (as when the process ends before the window does): only
/// the stop can write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_and_in_flight_markers_kept_in_memory_are_written_at_a_graceful_stop() {
    use o365_relay::domain::{ContentId, ContentType, TenantId};
    use redis::AsyncCommands;
    let mut env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let t = TenantId::parse(TENANT_A).unwrap();
    let c = ContentId::parse("blob-pushed-just-before-the-stop").unwrap();
    let store = env.relay.store.clone();
    {
        let (t, c) = (t.clone(), c.clone());
        std::thread::spawn(move || {
            store.count_notified(t.clone(), ContentType::Exchange, 2);
            store.count_notified(t.clone(), ContentType::General, 1);
            store.mark_enqueued_soon([(t, c)], Duration::from_secs(600));
        })
        .join()
        .unwrap();
    }
    env.main.shutdown().await;

    let mut redis = redis().await;
    let marker = env.redis_key(&format!("reconcile-enqueued:{t}:{c}"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&marker)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl > 500_000 && ttl <= 600_000,
        "the in-flight marker was written at the stop (PTTL {ttl})"
    );
    let buckets: Vec<String> = redis
        .keys(env.redis_key(&format!("activity:{t}:*")))
        .await
        .unwrap();
    let mut notified = 0;
    for bucket in &buckets {
        let n: Option<u64> = redis.hget(bucket, "notified").await.unwrap();
        notified += n.unwrap_or(0);
    }
    assert_eq!(notified, 3, "the counts were written at the stop");
    let latest: Vec<String> = redis
        .hkeys(env.redis_key(&format!("activity-last:{t}")))
        .await
        .unwrap();
    assert!(
        latest.contains(&"notified:Audit.Exchange".to_string())
            && latest.contains(&"notified:Audit.General".to_string()),
        "{latest:?}"
    );
    env.cleanup().await;
}
