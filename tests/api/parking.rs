//! Parked tenants (issue 12): a tenant whose consent is withdrawn is parked instead of having
//! its blobs dead-lettered; its blobs wait without holding workers or asking Entra for tokens;
//! when it works again (probe or consent) every record of the parked period is relayed once;
//! one that never comes back ends in the dead queue only after its content expired.

use crate::helpers::*;
use lapin::types::AMQPValue;
use o365_relay::domain::{ContentType, TenantId};
use o365_relay::tenancy::onboarding::AddRequest;
use o365_relay::tenancy::tenants::{AddedBy, NewTenant, TenantState};
use o365_sim::{Faults, SimBlob};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest look-back the relay accepts; the parked period below is longer.
const LOOKBACK: Duration = Duration::from_secs(60);

fn tid(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

async fn state(env: &TestEnv, t: &str) -> Option<TenantState> {
    env.relay.tenants.state_now(&tid(t)).await
}

async fn is_parked(env: &TestEnv, t: &str) -> bool {
    matches!(state(env, t).await, Some(TenantState::Parked { .. }))
}

fn parked_queue(env: &TestEnv) -> String {
    format!("{}.parked", env.work_queue)
}

fn dead_queue(env: &TestEnv) -> String {
    format!("{}.dead", env.work_queue)
}

/// Messages in `queue`, 0 when it does not exist (the parked queue is declared on first use).
async fn depth_or_zero(env: &TestEnv, queue: &str) -> u32 {
    env.depth_or_zero(queue).await
}

/// Every distinct record id of `blobs` (Microsoft repeats some records across blobs).
fn record_ids(blobs: &[SimBlob]) -> HashSet<String> {
    blobs
        .iter()
        .flat_map(|b| b.record_ids.iter().cloned())
        .collect()
}

/// Reads records from the sink until every id of `want` arrived (or `wait` passed), then
/// lingers to catch duplicates; returns how often each message id arrived.
async fn relayed(env: &TestEnv, want: &HashSet<String>, wait: Duration) -> HashMap<String, usize> {
    let got = env
        .drain(&env.sink, want.len(), wait, Duration::from_secs(3))
        .await;
    let mut seen = HashMap::new();
    for d in &got {
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

fn assert_each_once(seen: &HashMap<String, usize>, want: &HashSet<String>) {
    let missing: Vec<&String> = want.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records never relayed",
        missing.len(),
        want.len()
    );
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "relayed more than once: {twice:?}");
    let foreign: Vec<&String> = seen.keys().filter(|id| !want.contains(*id)).collect();
    assert!(foreign.is_empty(), "unexpected records: {foreign:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_whose_consent_is_withdrawn_is_parked_and_every_record_of_the_parked_period_is_relayed_once_consent_returns(
) {
    let env = TestEnv::start(Options {
        // Short tokens: a withdrawn consent shows within seconds, as a 60–90 minute token's
        // refresh would show it within the hour.
        token_lifetime: Duration::from_secs(10),
        extra_env: vec![
            ("O365_PARK_PROBE_INTERVAL".into(), "5s".into()),
            ("O365_ENABLE_RECONCILER".into(), "true".into()),
            ("O365_RECONCILE_INTERVAL".into(), "2s".into()),
            ("O365_RECONCILE_LOOKBACK".into(), "1m".into()),
        ],
        ..Default::default()
    })
    .await;
    let a = tid(TENANT_A);
    let starts = env.relay.subscriptions.start_all(&a, None, true).await;
    assert!(starts.iter().all(|o| o.ok), "{starts:?}");
    let mut published: Vec<SimBlob> = Vec::new();

    // Healthy: relayed, and reconciliation has a checkpoint for the tenant.
    published.extend(env.sim.publish(TENANT_A, "Audit.General", 1, Some(3)).await);
    let first = record_ids(&published);
    let mut all_seen = relayed(&env, &first, Duration::from_secs(20)).await;
    assert_each_once(&all_seen, &first);
    let checkpoints = env.relay.store.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let store = checkpoints.clone();
            let a = a.clone();
            async move {
                matches!(
                    store.checkpoints().get(&a, ContentType::General).await,
                    Ok(Some(_))
                )
            }
        })
        .await,
        "the reconciler checkpointed tenant A"
    );

    // The tenant's admin withdraws consent; content keeps arriving at Microsoft and is notified.
    env.sim.withdraw_consent(TENANT_A);
    let mut parked = false;
    for _ in 0..60 {
        published.extend(
            env.sim
                .publish(TENANT_A, "Audit.Exchange", 1, Some(4))
                .await,
        );
        if is_parked(&env, TENANT_A).await {
            parked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(parked, "tenant A was parked");
    let Some(TenantState::Parked { code, reason, .. }) = state(&env, TENANT_A).await else {
        panic!("parked");
    };
    assert_eq!(code, "token");
    assert!(reason.contains("AADSTS7000229"), "{reason}");
    // Parked: more notified content, and content Microsoft never notifies (only reconciliation
    // can find it — after the look-back has passed over it).
    let notified = env
        .sim
        .publish(TENANT_A, "Audit.SharePoint", 5, Some(4))
        .await;
    published.extend(notified.iter().cloned());
    env.sim.set_faults(Faults {
        drop_notification: 1.0,
        ..Faults::default()
    });
    let silent = env.sim.publish(TENANT_A, "Audit.General", 4, Some(3)).await;
    env.sim.set_faults(Faults::default());
    published.extend(silent.iter().cloned());
    // Tenant B is not affected.
    let b_blobs = env
        .sim
        .publish(TENANT_B, "Audit.Exchange", 1, Some(2))
        .await;
    let b_ids = record_ids(&b_blobs);
    // (What the drain takes besides B's records — A's relayed just after the withdrawal, with
    // the token it still had — counts too.)
    for (id, n) in relayed(&env, &b_ids, Duration::from_secs(20)).await {
        *all_seen.entry(id).or_insert(0) += n;
    }
    for id in &b_ids {
        assert!(all_seen.contains_key(id), "tenant B keeps flowing");
    }

    // The notified blobs wait in the parked queue; nothing is dead-lettered.
    let parked_queue = parked_queue(&env);
    let mut waiting = 0;
    for _ in 0..200 {
        waiting = depth_or_zero(&env, &parked_queue).await;
        if waiting as usize >= notified.len() && env.depth(&env.work_queue.clone()).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        waiting as usize >= notified.len(),
        "{waiting} blobs parked, expected at least {}",
        notified.len()
    );
    assert_eq!(depth_or_zero(&env, &dead_queue(&env)).await, 0);

    // Stay parked past the look-back: the silent blobs fall out of the look-back window. Only
    // the probe asks Entra for the tenant's token meanwhile.
    let refused_before = env.sim.refused_token_requests(TENANT_A);
    let waited = tokio::time::Instant::now();
    let silent_created =
        chrono::DateTime::parse_from_rfc3339(&silent[silent.len() - 1].content_created)
            .unwrap()
            .with_timezone(&chrono::Utc);
    let past_lookback =
        silent_created + chrono::Duration::from_std(LOOKBACK + Duration::from_secs(10)).unwrap();
    while chrono::Utc::now() < past_lookback {
        assert!(is_parked(&env, TENANT_A).await, "stays parked");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let refused_while_parked = env.sim.refused_token_requests(TENANT_A) - refused_before;
    let probes = waited.elapsed().as_secs() / PROBE_INTERVAL.as_secs() + 2;
    eprintln!(
        "parked for {} s: {refused_while_parked} token requests to Entra for the tenant (probe every {} s)",
        waited.elapsed().as_secs(),
        PROBE_INTERVAL.as_secs()
    );
    assert!(
        refused_while_parked <= probes,
        "{refused_while_parked} token requests while parked; the probe alone makes about {probes}"
    );
    assert!(refused_while_parked >= 1, "the probe kept checking");
    assert_eq!(depth_or_zero(&env, &dead_queue(&env)).await, 0);
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("o365_tenants{state=\"parked\"} 1"),
        "{metrics}"
    );

    // Consent restored: the probe un-parks the tenant, its blobs flow, and the parked period —
    // longer than the look-back — is reconciled from the checkpoint.
    let restored_at = chrono::Utc::now();
    env.sim.grant_consent(TENANT_A);
    for b in &silent {
        let created = chrono::DateTime::parse_from_rfc3339(&b.content_created).unwrap();
        assert!(created < restored_at - chrono::Duration::from_std(LOOKBACK).unwrap());
    }
    let mut everything = record_ids(&published);
    everything.extend(b_ids.iter().cloned());
    let want: HashSet<String> = everything
        .iter()
        .filter(|id| !all_seen.contains_key(*id))
        .cloned()
        .collect();
    for (id, n) in relayed(&env, &want, Duration::from_secs(60)).await {
        *all_seen.entry(id).or_insert(0) += n;
    }
    // Every record of the tenant's content, before, during and after the parked period: once.
    assert_each_once(&all_seen, &everything);
    assert_eq!(state(&env, TENANT_A).await, Some(TenantState::Healthy));
    assert_eq!(depth_or_zero(&env, &dead_queue(&env)).await, 0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            depth_or_zero(&env, &parked_queue).await == 0
        })
        .await,
        "the parked queue is empty"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("o365_tenants{state=\"healthy\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("o365_parked_jobs_total{event=\"parked\"}"));
    assert!(metrics.contains("o365_tenant_probes_total{result=\"healthy\"} 1"));
    env.cleanup().await;
}

/// The time RabbitMQ dead-lettered a message (its first `x-death` entry), in unix seconds.
fn death_time(d: &lapin::message::Delivery) -> Option<i64> {
    let headers = d.properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("time")? {
        AMQPValue::Timestamp(t) => Some(*t as i64),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_that_never_recovers_ends_in_the_dead_queue_only_once_its_content_expired() {
    let env = TestEnv::start(Options {
        content_lifetime: Duration::from_secs(25),
        extra_env: vec![("O365_PARK_PROBE_INTERVAL".into(), "5s".into())],
        ..Default::default()
    })
    .await;
    env.sim.withdraw_consent(TENANT_A);
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 3, Some(2))
        .await;
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let expires = blobs
        .iter()
        .map(|b| {
            chrono::DateTime::parse_from_rfc3339(&b.content_expiration)
                .unwrap()
                .with_timezone(&chrono::Utc)
        })
        .min()
        .unwrap();
    let parked_queue = parked_queue(&env);
    let dead_queue = dead_queue(&env);
    assert!(
        eventually(Duration::from_secs(15), || async {
            depth_or_zero(&env, &parked_queue).await == 3
        })
        .await,
        "the blobs wait in the parked queue"
    );
    assert!(is_parked(&env, TENANT_A).await);
    let refused_at_park = env.sim.refused_token_requests(TENANT_A);
    let parked_at = tokio::time::Instant::now();
    // Nothing is dead before the content expires…
    while chrono::Utc::now() < expires {
        assert_eq!(
            depth_or_zero(&env, &dead_queue).await,
            0,
            "dead-lettered before the content expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // …and all of it after.
    assert!(
        eventually(Duration::from_secs(30), || async {
            depth_or_zero(&env, &dead_queue).await == 3
        })
        .await,
        "the expired blobs reach the dead queue"
    );
    let dead = env
        .drain(
            &dead_queue,
            3,
            Duration::from_secs(5),
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(dead.len(), 3);
    let ids: HashSet<String> = blobs.iter().map(|b| b.content_id.clone()).collect();
    for d in &dead {
        assert_eq!(header(d, "o365-error-code").as_deref(), Some("expired"));
        let reason = header(d, "o365-dead-reason").unwrap_or_default();
        assert!(
            reason.starts_with("content expired at Microsoft while the tenant was parked: "),
            "{reason}"
        );
        assert!(reason.contains("AADSTS7000229"), "{reason}");
        assert_eq!(header(d, "o365-tenant-id").as_deref(), Some(TENANT_A));
        let content_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(ids.contains(&content_id), "{content_id}");
        let died = death_time(d).expect("dead-lettered by RabbitMQ on expiry");
        let blob = blobs.iter().find(|b| b.content_id == content_id).unwrap();
        let exp = chrono::DateTime::parse_from_rfc3339(&blob.content_expiration)
            .unwrap()
            .timestamp();
        assert!(died >= exp, "dead at {died}, content expired at {exp}");
    }
    assert!(is_parked(&env, TENANT_A).await, "still parked");
    assert_eq!(depth_or_zero(&env, &parked_queue).await, 0);
    let refused = env.sim.refused_token_requests(TENANT_A) - refused_at_park;
    let probes = parked_at.elapsed().as_secs() / PROBE_INTERVAL.as_secs() + 2;
    assert!(
        refused <= probes,
        "{refused} token requests while parked; the probe alone makes about {probes}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_consent_unparks_the_tenant_at_once_and_its_waiting_blobs_flow() {
    // A probe interval of an hour: only the consent can un-park the tenant in this test.
    let env = TestEnv::start(Options {
        extra_env: vec![("O365_PARK_PROBE_INTERVAL".into(), "1h".into())],
        ..Default::default()
    })
    .await;
    env.sim.withdraw_consent(TENANT_A);
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.SharePoint", 2, Some(3))
        .await;
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let parked_queue = parked_queue(&env);
    assert!(
        eventually(Duration::from_secs(15), || async {
            depth_or_zero(&env, &parked_queue).await == 2
        })
        .await,
        "the blobs wait in the parked queue"
    );
    // The admin consents again: what the consent callback does once Entra issued the code.
    env.sim.grant_consent(TENANT_A);
    let added = env
        .relay
        .onboarding
        .add(
            &tid(TENANT_A),
            AddRequest {
                added_by: AddedBy::Consent,
                consented_by: Some("admin@contoso.onmicrosoft.com".into()),
                start_subscriptions: false,
                state: NewTenant::Healthy,
            },
        )
        .await
        .unwrap();
    assert_eq!(added.tenant.state, TenantState::Healthy);
    let want = record_ids(&blobs);
    let seen = relayed(&env, &want, Duration::from_secs(30)).await;
    assert_each_once(&seen, &want);
    assert_eq!(depth_or_zero(&env, &dead_queue(&env)).await, 0);
    assert_eq!(depth_or_zero(&env, &parked_queue).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_dlp_role_dead_letters_only_dlp_blobs_and_a_missing_read_role_parks_the_tenant() {
    let env = TestEnv::start(Options::default()).await;
    // The tenant's admin granted the app ActivityFeed.Read but not ActivityFeed.ReadDlp.
    env.sim.revoke_role(TENANT_A, "ActivityFeed.ReadDlp");
    let dlp = env.sim.publish(TENANT_A, "DLP.All", 1, Some(2)).await;
    let exchange = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await;
    let both: Vec<SimBlob> = dlp.iter().chain(exchange.iter()).cloned().collect();
    assert_eq!(env.notify(&env.notification(&both)).await.status(), 200);
    let want = record_ids(&exchange);
    let seen = relayed(&env, &want, Duration::from_secs(20)).await;
    assert_each_once(&seen, &want);
    let dead_queue = dead_queue(&env);
    assert!(
        eventually(Duration::from_secs(15), || async {
            depth_or_zero(&env, &dead_queue).await == 1
        })
        .await,
        "the DLP blob is dead-lettered"
    );
    let dead = env
        .drain(
            &dead_queue,
            1,
            Duration::from_secs(5),
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("AF10001")
    );
    assert_eq!(
        state(&env, TENANT_A).await,
        Some(TenantState::Healthy),
        "the tenant's other content keeps flowing"
    );

    // Then ActivityFeed.Read goes too (seen once the current token is replaced): parked.
    env.sim.revoke_role(TENANT_A, "ActivityFeed.Read");
    env.relay.tokens.forget(&tid(TENANT_A)).await;
    let more = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await;
    assert_eq!(env.notify(&env.notification(&more)).await.status(), 200);
    let parked_queue = parked_queue(&env);
    assert!(
        eventually(Duration::from_secs(15), || async {
            depth_or_zero(&env, &parked_queue).await == 1
        })
        .await,
        "the blob waits in the parked queue"
    );
    let Some(TenantState::Parked { code, .. }) = state(&env, TENANT_A).await else {
        panic!("parked");
    };
    assert_eq!(code, "AF10001");
    assert_eq!(depth_or_zero(&env, &dead_queue).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_keeps_the_jobs_of_tenants_still_parked_and_releases_the_others() {
    let env = TestEnv::start(Options::default()).await;
    let (a, b) = (tid(TENANT_A), tid(TENANT_B));
    for t in [&a, &b] {
        assert!(env.relay.tenants.park(t, "token", "test").await.unwrap());
    }
    let blobs_a = env.sim.publish(TENANT_A, "Audit.General", 2, Some(2)).await;
    let blobs_b = env.sim.publish(TENANT_B, "Audit.General", 1, Some(2)).await;
    let both: Vec<SimBlob> = blobs_a.iter().chain(blobs_b.iter()).cloned().collect();
    assert_eq!(env.notify(&env.notification(&both)).await.status(), 200);
    let parked_queue = parked_queue(&env);
    assert!(
        eventually(Duration::from_secs(15), || async {
            depth_or_zero(&env, &parked_queue).await == 3
        })
        .await,
        "all three wait"
    );
    // Only B works again: its job goes back to the work queue, A's stay (with their TTL).
    env.relay.tenants.unpark(&b).await.unwrap();
    let still_parked: HashSet<TenantId> = [a.clone()].into_iter().collect();
    let stats = env
        .relay
        .work_queue
        .sweep_parked(&still_parked)
        .await
        .unwrap();
    assert_eq!((stats.released, stats.kept, stats.expired), (1, 2, 0));
    let want_b = record_ids(&blobs_b);
    let seen = relayed(&env, &want_b, Duration::from_secs(20)).await;
    assert_each_once(&seen, &want_b);
    assert_eq!(depth_or_zero(&env, &parked_queue).await, 2);
    // Then A: the rest flows; nothing was counted as an attempt or dead-lettered.
    env.relay.tenants.unpark(&a).await.unwrap();
    let stats = env
        .relay
        .work_queue
        .sweep_parked(&HashSet::new())
        .await
        .unwrap();
    assert_eq!((stats.released, stats.kept), (2, 0));
    let want_a = record_ids(&blobs_a);
    let seen = relayed(&env, &want_a, Duration::from_secs(20)).await;
    assert_each_once(&seen, &want_a);
    assert_eq!(depth_or_zero(&env, &parked_queue).await, 0);
    assert_eq!(depth_or_zero(&env, &dead_queue(&env)).await, 0);
    env.cleanup().await;
}
