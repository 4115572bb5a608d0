//! Approval mode (`O365_CONSENT_MODE=approval`), docs/ONBOARDING.md "Approval".

use crate::helpers::*;
use o365_relay::domain::TenantId;
use o365_relay::tenancy::tenants::{AddedBy, NewTenant, TenantState};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::Value;

fn approval_mode() -> Options {
    Options {
        extra_env: vec![
            ("O365_CONSENT_MODE".into(), "approval".into()),
            ("O365_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ],
        ..Options::default()
    }
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

async fn approve(env: &TestEnv, tenant: &str) -> (u16, Value) {
    let r = env
        .http
        .request(
            Method::POST,
            format!("{}/admin/tenants/{tenant}/approve", env.admin_url),
        )
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

/// What the consent callback does in approval mode for a tenant that consented.
async fn consent_registers(env: &TestEnv, tenant: &str) -> Result<(), String> {
    env.relay
        .tenants
        .add(
            &tid(tenant),
            AddedBy::Consent,
            Some(CONSENT_UPN.into()),
            NewTenant::Pending,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consenting_tenant_whose_pending_state_cannot_be_written_is_not_served() {
    let env = TestEnv::start(approval_mode()).await;
    // Redis refuses the state write (the states hash is, for the moment, not a hash): the
    // fault a connection lost between two writes would be.
    let states = env.redis_key("tenant-states");
    let mut r = redis().await;
    let _: () = r.set(&states, "not a hash").await.unwrap();
    assert!(consent_registers(&env, TENANT_A).await.is_err());
    // Redis answers again: the tenant must not be served — not registered at all, or pending.
    let _: () = r.del(&states).await.unwrap();
    let state = env.relay.tenants.state_now(&tid(TENANT_A)).await;
    assert!(
        !matches!(
            state,
            Some(TenantState::Healthy | TenantState::Parked { .. })
        ),
        "a half-written registration reads as {state:?}"
    );
    assert!(!env.relay.tenants.is_served(&tid(TENANT_A)).await);
    assert_eq!(env.notify_for(TENANT_A).await.status(), 400);
    assert_eq!(start_calls(&env.sim, TENANT_A), 0);

    // Its admin consenting again registers it, pending in the same write; approval serves it.
    consent_registers(&env, TENANT_A).await.unwrap();
    assert!(matches!(
        env.relay.tenants.state_now(&tid(TENANT_A)).await,
        Some(TenantState::Pending { .. })
    ));
    let (status, body) = approve(&env, TENANT_A).await;
    assert_eq!(status, 200, "{body}");
    assert!(env.relay.tenants.is_served(&tid(TENANT_A)).await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approving_a_tenant_that_is_already_healthy_is_a_conflict_on_the_api_and_the_command_line()
{
    let env = TestEnv::start(approval_mode()).await;
    env.relay
        .tenants
        .add(&tid(TENANT_A), AddedBy::Admin, None, NewTenant::Healthy)
        .await
        .unwrap();

    let (status, body) = approve(&env, TENANT_A).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("healthy") && error.contains("not pending approval"),
        "{body}"
    );

    let o = relay_command(&["tenants", "approve", TENANT_A])
        .envs(env.vars.iter().cloned())
        .env("RUST_LOG", "warn")
        .output();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "tenant {TENANT_A} is healthy, not pending approval"
        )),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("approved"));
    // Nothing changed: still healthy, served.
    assert_eq!(
        env.relay.tenants.state_now(&tid(TENANT_A)).await,
        Some(TenantState::Healthy)
    );
    // The static tenant (healthy from O365_TENANTS) likewise.
    assert_eq!(approve(&env, TENANT_STATIC).await.0, 409);
    env.cleanup().await;
}
