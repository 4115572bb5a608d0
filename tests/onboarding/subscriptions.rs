//! Subscription lifecycle: AF20024, Microsoft's 15-minute rule shared by replicas, AF20021's
//! hint, and the keeper (one replica at a time; another takes over when the holder stops).

use crate::helpers::*;
use o365_relay::domain::{ContentType, TenantId};
use o365_relay::tenancy::subscriptions::StartError;
use redis::AsyncCommands;
use std::time::Duration;

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn ct(s: &str) -> ContentType {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn af20024_on_a_forced_second_start_counts_as_success() {
    let env = TestEnv::start(Options::default()).await;
    let subs = &env.relay.subscriptions;
    subs.start(&tid(TENANT_B), ct("Audit.SharePoint"), true)
        .await
        .expect("first start");
    let r = subs
        .start(&tid(TENANT_B), ct("Audit.SharePoint"), true)
        .await;
    assert!(r.is_ok(), "AF20024 is success: {r:?}");
    assert_eq!(
        env.sim.start_calls(TENANT_B, "Audit.SharePoint"),
        2,
        "the second start really reached Microsoft"
    );
    // The sim answers an unchanged start with AF20024 (checked directly, so this test cannot
    // pass against a simulator that silently accepts).
    let token = env.relay.tokens.get(&tid(TENANT_B)).await.unwrap();
    let r = env
        .http
        .post(format!(
            "{}/api/v1.0/{TENANT_B}/activity/feed/subscriptions/start?contentType=Audit.SharePoint&PublisherIdentifier={TENANT_B}",
            env.sim.url()
        ))
        .bearer_auth(&token.token)
        .json(&serde_json::json!({"webhook": {"address": format!("{}/webhook", env.public_url), "authId": env.auth_id, "expiration": ""}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("AF20024"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_start_within_fifteen_minutes_is_refused_without_calling_microsoft() {
    let env = TestEnv::start(Options::default()).await;
    let (t, c) = (tid(TENANT_B), ct("Audit.General"));
    env.relay.subscriptions.start(&t, c, false).await.unwrap();
    assert_eq!(env.sim.start_calls(TENANT_B, "Audit.General"), 1);

    let r = env.relay.subscriptions.start(&t, c, false).await;
    assert!(matches!(r, Err(StartError::TooSoon(..))), "{r:?}");
    // Another replica (same Redis prefix) respects the same rule.
    let other = env.second_relay();
    let r = other.subscriptions.start(&t, c, false).await;
    assert!(matches!(r, Err(StartError::TooSoon(..))), "{r:?}");
    assert_eq!(
        env.sim.start_calls(TENANT_B, "Audit.General"),
        1,
        "refused starts never reach Microsoft"
    );
    // The guard lives 15 minutes in Redis; other content types are not affected.
    let mut redis = redis().await;
    let ttl: i64 = redis
        .pttl(env.redis_key(&format!("sub-start:{TENANT_B}:Audit.General")))
        .await
        .unwrap();
    assert!((14 * 60_000..=15 * 60_000).contains(&ttl), "PTTL {ttl}");
    env.relay
        .subscriptions
        .start(&t, ct("DLP.All"), false)
        .await
        .expect("another content type may start");
    // Once the 15 minutes are over (guard gone), a start goes through again.
    let _: i64 = redis
        .del(env.redis_key(&format!("sub-start:{TENANT_B}:Audit.General")))
        .await
        .unwrap();
    env.relay.subscriptions.start(&t, c, false).await.unwrap();
    assert_eq!(env.sim.start_calls(TENANT_B, "Audit.General"), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_webhook_validation_is_reported_with_a_hint() {
    // A public URL nobody listens on: Microsoft's validation request fails (AF20021).
    let dead = bind();
    let dead_url = url_of(&dead);
    drop(dead);
    let env = TestEnv::start(Options {
        extra_env: vec![("O365_PUBLIC_URL".into(), dead_url.clone())],
        ..Options::default()
    })
    .await;
    let r = env
        .relay
        .subscriptions
        .start(&tid(TENANT_B), ct("Audit.Exchange"), true)
        .await;
    match r {
        Err(e @ StartError::ValidationFailed(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("AF20021"), "{msg}");
            assert!(msg.contains(&format!("{dead_url}/webhook")), "{msg}");
            assert!(msg.contains("reachable"), "{msg}");
        }
        other => panic!("expected ValidationFailed, got {other:?}"),
    }
    assert!(env.sim.subscriptions(TENANT_B).is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_keeper_lease_holder_stops_another_replica_re_enables_a_disabled_webhook() {
    // Both replicas sit behind one public URL (the ingress); here it is replica B's listener,
    // so the webhook keeps answering Microsoft after replica A stops.
    let b_public = bind();
    let public = url_of(&b_public);
    let mut env = TestEnv::start(Options {
        extra_env: vec![
            ("O365_PUBLIC_URL".into(), public.clone()),
            ("O365_ENABLE_KEEPER".into(), "true".into()),
            ("O365_KEEPER_INTERVAL".into(), "1s".into()),
        ],
        ..Options::default()
    })
    .await;
    let lease_key = env.redis_key("lease:keeper");
    let mut redis = redis().await;
    // A is alone: it takes the lease.
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut redis = redis.clone();
            let key = lease_key.clone();
            async move { redis.exists::<_, bool>(&key).await.unwrap() }
        })
        .await,
        "replica A took the keeper lease"
    );
    let holder_a: String = redis.get(&lease_key).await.unwrap();
    let ttl: i64 = redis.pttl(&lease_key).await.unwrap();
    assert!(
        (1..=3_000).contains(&ttl),
        "lease TTL is 3 × 1 s, PTTL {ttl}"
    );
    env.add_replica(&[], b_public).await;

    // A's keeper finds the static tenant without subscriptions and starts all five.
    assert!(
        eventually(Duration::from_secs(30), || async {
            let subs = env.sim.subscriptions(TENANT_STATIC);
            subs.len() == 5
                && subs.iter().all(|s| {
                    s.webhook.as_ref().is_some_and(|w| {
                        w.status == "enabled" && w.address == format!("{public}/webhook")
                    })
                })
        })
        .await,
        "keeper started the static tenant's subscriptions: {:?}",
        env.sim.subscriptions(TENANT_STATIC)
    );
    assert_eq!(
        redis.get::<_, Option<String>>(&lease_key).await.unwrap(),
        Some(holder_a.clone()),
        "A still holds the lease while it runs"
    );

    // The lease holder stops.
    env.main.shutdown().await;
    // Microsoft disables the webhook after failed deliveries; the 15 minutes since the last
    // start have passed (the guard key is gone).
    let calls = env.sim.start_calls(TENANT_STATIC, "Audit.Exchange");
    let _: i64 = redis
        .del(env.redis_key(&format!("sub-start:{TENANT_STATIC}:Audit.Exchange")))
        .await
        .unwrap();
    env.sim.disable_webhook(TENANT_STATIC, "Audit.Exchange");
    assert_eq!(
        env.sim
            .subscriptions(TENANT_STATIC)
            .into_iter()
            .find(|s| s.content_type == "Audit.Exchange")
            .unwrap()
            .webhook
            .unwrap()
            .status,
        "disabled"
    );

    assert!(
        eventually(Duration::from_secs(20), || async {
            env.sim
                .subscriptions(TENANT_STATIC)
                .into_iter()
                .find(|s| s.content_type == "Audit.Exchange")
                .and_then(|s| s.webhook)
                .is_some_and(|w| w.status == "enabled")
        })
        .await,
        "replica B re-enabled the webhook"
    );
    assert_eq!(
        env.sim.start_calls(TENANT_STATIC, "Audit.Exchange"),
        calls + 1,
        "exactly one /start re-enabled it"
    );
    let holder_b: Option<String> = redis.get(&lease_key).await.unwrap();
    assert!(
        holder_b.is_some() && holder_b.as_deref() != Some(holder_a.as_str()),
        "B holds the lease now: {holder_b:?} (A was {holder_a})"
    );
    // Other content types were healthy and left alone.
    assert_eq!(env.sim.start_calls(TENANT_STATIC, "Audit.SharePoint"), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_left_by_a_crashed_holder_lapses_and_the_keeper_takes_over() {
    // A replica died holding the lease (no release), 8 s before its lease would lapse.
    let prefix = format!("test:{}:", unique());
    let lease_key = format!("{prefix}lease:keeper");
    let mut redis = redis().await;
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("crashed-replica")
        .arg("PX")
        .arg(8_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let crashed_at = std::time::Instant::now();
    let env = TestEnv::start(Options {
        extra_env: vec![
            ("O365_ENABLE_KEEPER".into(), "true".into()),
            ("O365_KEEPER_INTERVAL".into(), "1s".into()),
        ],
        prefix: Some(prefix),
        ..Options::default()
    })
    .await;
    // While the dead holder's lease lives, nobody keeps: watched for as long as it lives
    // (the keeper's interval is 1 s, so several of its turns fall inside).
    let mut watched = 0;
    while redis
        .get::<_, Option<String>>(&lease_key)
        .await
        .unwrap()
        .as_deref()
        == Some("crashed-replica")
    {
        assert!(
            env.sim.subscriptions(TENANT_STATIC).is_empty(),
            "no keeper pass while another holder's lease lives"
        );
        watched += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        watched >= 10,
        "the relay started while the dead holder's lease had at least a second to live \
         (watched {watched} times); a slower start would leave nothing to check"
    );
    // Afterwards our replica takes the lease and starts the static tenant's subscriptions.
    assert!(
        eventually(Duration::from_secs(30), || async {
            env.sim.subscriptions(TENANT_STATIC).len() == 5
        })
        .await,
        "the keeper took over the lapsed lease and started the subscriptions"
    );
    assert!(
        crashed_at.elapsed() >= Duration::from_millis(7_900),
        "a live lease was respected"
    );
    let holder: Option<String> = redis.get(&lease_key).await.unwrap();
    assert!(
        holder.is_some_and(|h| h != "crashed-replica"),
        "our replica holds the lease"
    );
    env.cleanup().await;
}
