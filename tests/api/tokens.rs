//! Token cache: one request per tenant across tasks and replicas, refresh ahead of expiry,
//! degraded operation without Redis.

use crate::helpers::*;
use o365_relay::domain::TenantId;
use o365_relay::microsoft::tokens::TokenError;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_and_many_tasks_share_one_token_request_per_tenant() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let replicas: Vec<_> = (0..3).map(|_| relay_with(&env.vars, &[])).collect();
    let mut tasks = Vec::new();
    for r in &replicas {
        for t in [TENANT_A, TENANT_B] {
            for _ in 0..20 {
                let r = r.clone();
                let tid = TenantId::parse(t).unwrap();
                tasks.push(tokio::spawn(async move {
                    r.tokens.get(&tid).await.map(|t| t.token)
                }));
            }
        }
    }
    let mut tokens_a = std::collections::HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let tok = t.await.unwrap().expect("token");
        if (i / 20) % 2 == 0 {
            tokens_a.insert(tok);
        }
    }
    assert_eq!(env.sim.token_requests(TENANT_A), 1);
    assert_eq!(env.sim.token_requests(TENANT_B), 1);
    assert_eq!(tokens_a.len(), 1, "every replica uses the same token");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_refreshed_before_they_expire() {
    // A 4 s lifetime is refreshed at half-life (a real 60–90 min token: 5 minutes before).
    let env = TestEnv::start(Options {
        workers: false,
        token_lifetime: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let tid = TenantId::parse(TENANT_A).unwrap();
    let first = env.relay.tokens.get(&tid).await.unwrap();
    let again = env.relay.tokens.get(&tid).await.unwrap();
    assert_eq!(first.token, again.token, "a fresh token is reused");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = chrono::Utc::now().timestamp();
    assert!(first.expires_at > now, "the old token is still valid…");
    let second = env.relay.tokens.get(&tid).await.unwrap();
    assert_ne!(
        first.token, second.token,
        "…yet it was replaced ahead of expiry"
    );
    assert_eq!(env.sim.token_requests(TENANT_A), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_secret_works_as_the_credential() {
    let env = TestEnv::start(Options {
        use_secret: true,
        ..Default::default()
    })
    .await;
    let blobs = env.sim.publish(TENANT_A, "Audit.General", 1, Some(4)).await;
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let unique: std::collections::HashSet<&String> = blobs[0].record_ids.iter().collect();
    assert_eq!(env.records(unique.len()).await.len(), unique.len());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_credential_is_reported_and_never_cached() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let bad = relay_with(
        &env.vars,
        &[("O365_CLIENT_ID", "00000000-1111-2222-3333-444444444444")],
    );
    let tid = TenantId::parse(TENANT_A).unwrap();
    let err = bad.tokens.get(&tid).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid_client") || err.to_string().contains("AADSTS"),
        "{err}"
    );
    // The refusal came from Entra: the request reached the token endpoint and was refused.
    assert_eq!(env.sim.refused_token_requests(TENANT_A), 1);
    assert_eq!(env.sim.token_requests(TENANT_A), 0, "no token was issued");
    // Not cached: the next call asks Entra again (and is refused again) instead of answering
    // from memory or Redis.
    let again = bad.tokens.get(&tid).await.unwrap_err();
    assert!(
        matches!(again, TokenError::Rejected { .. }),
        "refused again: {again}"
    );
    assert_eq!(
        env.sim.refused_token_requests(TENANT_A),
        2,
        "the second get asked Entra again"
    );
    // Nothing was written to the shared token cache, where other replicas would find it.
    let cached = bad.store.tokens().get(&tid).await.expect("Redis answers");
    assert_eq!(
        cached, None,
        "a refusal left an entry in the Redis token cache"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_the_relay_keeps_relaying() {
    let env = TestEnv::start(Options {
        redis_url: "redis://127.0.0.1:1".into(),
        ..Default::default()
    })
    .await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 2, Some(5))
        .await;
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let ids: std::collections::HashSet<&String> =
        blobs.iter().flat_map(|b| b.record_ids.iter()).collect();
    let got = env.records(ids.len()).await;
    let got_ids: std::collections::HashSet<String> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        got_ids.len(),
        ids.len(),
        "every record relayed without Redis"
    );
    let ready = env
        .http
        .get(format!("{}/readyz", env.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "readiness tells the operator Redis is down"
    );
    env.cleanup().await;
}
