//! The dead-letter queue as a tool (`/admin/dead-letters`, `o365-relay dead-letters`): listing
//! leaves the queue as it was, requeueing moves exactly the selected blobs back to work (and
//! they are relayed once their cause is fixed), purging deletes exactly the selected ones.

use crate::helpers::*;
use o365_sim::Fault;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

fn ids(v: &Value) -> BTreeSet<String> {
    v["letters"]
        .as_array()
        .expect("letters")
        .iter()
        .map(|l| l["content_id"].as_str().unwrap().to_string())
        .collect()
}

async fn admin(env: &TestEnv, method: reqwest::Method, path: &str) -> (u16, Value) {
    let r = env
        .http
        .request(method, format!("{}{path}", env.admin_url))
        .send()
        .await
        .expect("admin listener answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_requeued_and_purged_by_tenant_and_reason() {
    let env = TestEnv::start(Options::default()).await;
    let dead_queue = format!("{}.dead", env.work_queue);
    // Tenant A: two blobs Microsoft says expired (AF20051) and one that keeps failing (AF50000,
    // retried until O365_MAX_ATTEMPTS); tenant B: one expired blob.
    let a_expired = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 2, Some(3))
        .await;
    let a_failing = env.sim.publish(TENANT_A, "Audit.General", 1, Some(3)).await;
    let b_expired = env
        .sim
        .publish(TENANT_B, "Audit.Exchange", 1, Some(3))
        .await;
    for b in a_expired.iter().chain(&b_expired) {
        env.sim.fault_for(&b.content_id, Fault::Expired);
    }
    env.sim
        .fault_for(&a_failing[0].content_id, Fault::ServerError);
    let all: Vec<_> = a_expired
        .iter()
        .chain(&a_failing)
        .chain(&b_expired)
        .cloned()
        .collect();
    assert_eq!(env.notify(&env.notification(&all)).await.status(), 200);
    assert!(
        eventually(Duration::from_secs(30), || async {
            env.depth(&dead_queue).await == 4
        })
        .await,
        "four blobs dead-lettered"
    );

    // Listing, filtered every way, leaves all four where they were.
    let (status, every) = admin(&env, reqwest::Method::GET, "/admin/dead-letters").await;
    assert_eq!(status, 200, "{every}");
    assert_eq!(
        (every["examined"].as_u64(), every["matched"].as_u64()),
        (Some(4), Some(4))
    );
    let expected: BTreeSet<String> = all.iter().map(|b| b.content_id.clone()).collect();
    assert_eq!(ids(&every), expected);
    let (_, of_a) = admin(
        &env,
        reqwest::Method::GET,
        &format!("/admin/dead-letters?tenant={TENANT_A}"),
    )
    .await;
    assert_eq!(of_a["matched"], 3);
    let (_, expired) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/dead-letters?reason=AF20051",
    )
    .await;
    assert_eq!(expired["matched"], 3);
    let (_, gave_up) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/dead-letters?reason=gave%20up",
    )
    .await;
    assert_eq!(
        ids(&gave_up),
        BTreeSet::from([a_failing[0].content_id.clone()])
    );
    let (_, one) = admin(&env, reqwest::Method::GET, "/admin/dead-letters?limit=1").await;
    assert_eq!((one["matched"].as_u64(), ids(&one).len()), (Some(1), 1));
    let (status, bad) = admin(
        &env,
        reqwest::Method::GET,
        "/admin/dead-letters?tenant=nope",
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(env.depth(&dead_queue).await, 4);

    // The CLI lists the same, from the same configuration.
    let out = relay_command(&["dead-letters", "list", "--tenant", TENANT_B])
        .envs(env.vars.clone())
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&b_expired[0].content_id), "{stdout}");
    assert!(!stdout.contains(&a_expired[0].content_id), "{stdout}");
    assert!(stdout.contains("1 of 4 dead letters match"), "{stdout}");

    // Tenant A's expired blobs are available again: requeue exactly those; they are relayed.
    for b in &a_expired {
        assert!(env.sim.clear_fault_for(&b.content_id));
    }
    let (status, requeued) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/dead-letters/requeue?tenant={TENANT_A}&reason=AF20051"),
    )
    .await;
    assert_eq!(status, 200, "{requeued}");
    assert_eq!(
        (requeued["matched"].as_u64(), requeued["moved"].as_u64()),
        (Some(2), Some(2))
    );
    let records = env.records(6).await;
    let got: BTreeSet<String> = records
        .iter()
        .filter_map(|d| header(d, "o365-content-id"))
        .collect();
    let want: BTreeSet<String> = a_expired.iter().map(|b| b.content_id.clone()).collect();
    assert_eq!(got, want, "the requeued blobs' records, and nothing else");
    let (_, left) = admin(&env, reqwest::Method::GET, "/admin/dead-letters").await;
    assert_eq!(
        ids(&left),
        BTreeSet::from([
            a_failing[0].content_id.clone(),
            b_expired[0].content_id.clone()
        ])
    );

    // A purge must be confirmed; then it deletes exactly the selected letters.
    let (status, _) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/dead-letters/purge?tenant={TENANT_B}"),
    )
    .await;
    assert_eq!(status, 400);
    let out = relay_command(&["dead-letters", "purge"])
        .envs(env.vars.clone())
        .output();
    assert_eq!(out.status.code(), Some(2), "no terminal, no --yes: refused");
    let (status, purged) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/dead-letters/purge?tenant={TENANT_B}&confirm=yes"),
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["moved"], 1);
    let (_, left) = admin(&env, reqwest::Method::GET, "/admin/dead-letters").await;
    assert_eq!(
        ids(&left),
        BTreeSet::from([a_failing[0].content_id.clone()])
    );
    assert_eq!(
        env.depth(&env.work_queue).await,
        0,
        "nothing else moved to work"
    );
    env.cleanup().await;
}
