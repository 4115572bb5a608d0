//! The operator's status: every tenant at a glance, and the deployment around them. One source
//! ([`StatusReport::collect`]) for three views: `GET /admin/status` (JSON), the HTML page on the
//! admin listener ([`html`]), and `o365-relay status` (a table).
//!
//! Everything comes from what the replicas share — Redis (tenant states, activity counters
//! written on the data path, tokens, quotas, heartbeats, leases) and RabbitMQ (queue depths) —
//! so any replica (or the CLI) shows the same picture, and Microsoft is never called to draw
//! it: a page load for a thousand tenants costs a few pipelined Redis round trips.
//!
//! Each tenant gets a **verdict** answering "are we still getting its audit log?": `ok`,
//! `attention` (something an operator should look at, e.g. dead letters or a disabled
//! subscription) or `down` (parked, pending approval, offboarded), with the one-line why.

pub mod html;

use crate::broker::BrokerError;
use crate::domain::{ContentType, TenantId};
use crate::pipeline::backpressure::Backpressure;
use crate::pipeline::work_queue::WorkQueue;
use crate::store::activity::{Counts, TenantActivity};
use crate::store::replicas::ReplicaInfo;
use crate::store::{Store, StoreError};
use crate::tenancy::tenants::{AddedBy, TenantState, Tenants};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A replica whose last heartbeat is older than this is not shown as alive.
pub const REPLICA_ALIVE_FOR: Duration = Duration::from_secs(30);

/// Everything the status views show.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub generated_at: DateTime<Utc>,
    pub deployment: Deployment,
    /// Tenants by verdict (down, attention, ok), then id.
    pub tenants: Vec<TenantStatus>,
    /// Tenants removed by an operator, with when.
    pub offboarded: Vec<Offboarded>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deployment {
    /// The client certificate's expiry (absent with a client secret).
    pub certificate_expires_at: Option<DateTime<Utc>>,
    pub queues: Queues,
    pub replicas: Vec<ReplicaInfo>,
    /// A consumer queue refuses records: the relay waits ([`crate::pipeline::backpressure`]); absent
    /// when every routing key flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<Downstream>,
    /// The replica id holding each lease, if any.
    pub reconciler_lease: Option<String>,
    pub keeper_lease: Option<String>,
    pub quota_per_minute: u32,
    pub content_types: Vec<ContentType>,
    /// What could not be read (the rest of the page is still shown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// "Paused: a consumer queue is full", over the replicas that say so.
#[derive(Clone, Debug, Serialize)]
pub struct Downstream {
    pub exchange: String,
    /// When the oldest pause began.
    pub since: DateTime<Utc>,
    /// Routing keys refused (the most any replica has: each replica probes its own).
    pub routing_keys: usize,
    /// One of them.
    pub example_key: String,
    /// Blobs waiting, over all replicas.
    pub waiting_blobs: usize,
    /// Replicas paused.
    pub replicas: usize,
}

impl Downstream {
    /// Over the replicas' heartbeats, or `None` when none is paused.
    pub fn over(replicas: &[ReplicaInfo]) -> Option<Downstream> {
        let paused: Vec<_> = replicas
            .iter()
            .filter_map(|r| r.downstream.as_ref())
            .collect();
        let oldest = paused.iter().min_by_key(|p| p.since)?;
        Some(Downstream {
            exchange: oldest.exchange.clone(),
            since: oldest.since,
            routing_keys: paused.iter().map(|p| p.routing_keys).max().unwrap_or(0),
            example_key: oldest.example_key.clone(),
            waiting_blobs: paused.iter().map(|p| p.waiting_blobs).sum(),
            replicas: paused.len(),
        })
    }

    /// The status line: which exchange, since when, how many blobs wait.
    pub fn line(&self, now: DateTime<Utc>) -> String {
        format!(
            "paused: a consumer queue is full — exchange '{}' refuses records since {} ({}; {} routing key{}, e.g. {}; {} blob{} waiting on {} replica{}); nothing is lost, records follow once it has room",
            self.exchange,
            self.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ago(self.since, now),
            self.routing_keys,
            if self.routing_keys == 1 { "" } else { "s" },
            self.example_key,
            self.waiting_blobs,
            if self.waiting_blobs == 1 { "" } else { "s" },
            self.replicas,
            if self.replicas == 1 { "" } else { "s" },
        )
    }
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// Messages ready in the work queue, its retry tiers (all together) and the dead-letter queue.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Queues {
    pub work: Option<u32>,
    pub retry: Option<u32>,
    pub dead: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Down,
    Attention,
    Ok,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Down => "down",
            Verdict::Attention => "attention",
            Verdict::Ok => "ok",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    pub tenant_id: TenantId,
    pub verdict: Verdict,
    /// Why the verdict is not `ok` (empty when it is).
    pub why: String,
    pub state: TenantState,
    pub added_by: AddedBy,
    /// When the tenant was added (consented), by whom when known.
    pub added_at: String,
    pub consented_by: Option<String>,
    pub content_types: Vec<ContentTypeStatus>,
    pub last_hour: Counts,
    pub last_day: Counts,
    pub last_dead: Option<DeadLetterSeen>,
    /// When the cached app-only token expires (none cached: none asked for lately).
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Management API requests counted against the tenant's quota in the last minute.
    pub quota_used: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContentTypeStatus {
    pub content_type: ContentType,
    /// The keeper's last look at the subscription: `enabled`, `disabled`, `missing`, ….
    pub subscription: Option<String>,
    pub webhook: Option<String>,
    pub checked_at: Option<String>,
    pub last_notification: Option<String>,
    pub last_relayed: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterSeen {
    pub at: Option<String>,
    pub code: Option<String>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Offboarded {
    pub tenant_id: TenantId,
    pub since: Option<DateTime<Utc>>,
}

/// What the status needs.
pub struct StatusReport {
    pub store: Arc<Store>,
    pub tenants: Arc<Tenants>,
    pub work_queue: Arc<WorkQueue>,
    pub content_types: Vec<ContentType>,
    pub quota_per_minute: u32,
    pub certificate_expires_at: Option<DateTime<Utc>>,
}

impl StatusReport {
    /// The whole status. A dependency that cannot be read is named in `problems` and its
    /// figures are left out; only a tenant list that cannot be read at all is an error.
    pub async fn collect(&self) -> Result<Status, StoreError> {
        let mut problems = Vec::new();
        let records = self.tenants.list().await?;
        let ids: Vec<TenantId> = records.iter().map(|r| r.tenant_id.clone()).collect();
        let activity = self.store.activity().read(&ids).await.unwrap_or_else(|e| {
            problems.push(format!("activity counters: {e}"));
            vec![TenantActivity::default(); ids.len()]
        });
        let tokens = self
            .store
            .tokens()
            .get_many(&ids)
            .await
            .unwrap_or_else(|_| vec![None; ids.len()]);
        let quota = self
            .store
            .quota()
            .used_many(&ids)
            .await
            .unwrap_or_else(|_| vec![0; ids.len()]);
        let mut tenants: Vec<TenantStatus> = records
            .into_iter()
            .zip(activity)
            .zip(tokens.into_iter().zip(quota))
            .map(|((record, activity), (token, quota_used))| {
                let content_types = self
                    .content_types
                    .iter()
                    .map(|&ct| content_type_status(ct, &activity))
                    .collect();
                let last_dead = activity.last.get("dead_at").map(|at| DeadLetterSeen {
                    at: Some(at.clone()),
                    code: activity.last.get("dead_code").cloned(),
                    reason: activity.last.get("dead_reason").cloned(),
                });
                let mut t = TenantStatus {
                    tenant_id: record.tenant_id,
                    verdict: Verdict::Ok,
                    why: String::new(),
                    state: record.state,
                    added_by: record.added_by,
                    added_at: record.added_at,
                    consented_by: record.consented_by,
                    content_types,
                    last_hour: activity.last_hour,
                    last_day: activity.last_day,
                    last_dead,
                    token_expires_at: token.as_deref().and_then(token_expiry),
                    quota_used,
                };
                (t.verdict, t.why) = verdict(&t);
                t
            })
            .collect();
        tenants.sort_by(|a, b| (a.verdict, &a.tenant_id).cmp(&(b.verdict, &b.tenant_id)));
        let offboarded = match self.tenants.offboarded().await {
            Ok(list) => list
                .into_iter()
                .map(|(tenant_id, state)| Offboarded {
                    tenant_id,
                    since: match state {
                        TenantState::Offboarded { since } => Some(since),
                        _ => None,
                    },
                })
                .collect(),
            Err(e) => {
                problems.push(format!("offboarded tenants: {e}"));
                Vec::new()
            }
        };
        let replicas = self
            .store
            .replicas()
            .alive(REPLICA_ALIVE_FOR)
            .await
            .unwrap_or_else(|e| {
                problems.push(format!("replica heartbeats: {e}"));
                Vec::new()
            });
        let reconciler_lease = self
            .store
            .replicas()
            .lease_holder("reconciler")
            .await
            .ok()
            .flatten();
        let keeper_lease = self
            .store
            .replicas()
            .lease_holder("keeper")
            .await
            .ok()
            .flatten();
        let queues = self.queues(&mut problems).await;
        Ok(Status {
            generated_at: Utc::now(),
            deployment: Deployment {
                certificate_expires_at: self.certificate_expires_at,
                queues,
                downstream: Downstream::over(&replicas),
                replicas,
                reconciler_lease,
                keeper_lease,
                quota_per_minute: self.quota_per_minute,
                content_types: self.content_types.clone(),
                problems,
            },
            tenants,
            offboarded,
        })
    }

    async fn queues(&self, problems: &mut Vec<String>) -> Queues {
        let mut note = |what: &str, e: BrokerError| problems.push(format!("{what}: {e}"));
        let work = match self.work_queue.depth().await {
            Ok(n) => Some(n),
            Err(e) => {
                note("work queue depth", e);
                None
            }
        };
        let retry = match self.work_queue.retry_depth().await {
            Ok(n) => Some(n),
            Err(e) => {
                note("retry queue depths", e);
                None
            }
        };
        let dead = match self.work_queue.dead_depth().await {
            Ok(n) => Some(n),
            Err(e) => {
                note("dead-letter queue depth", e);
                None
            }
        };
        Queues { work, retry, dead }
    }
}

/// How often a replica says it is alive.
const BEAT_EVERY: Duration = Duration::from_secs(5);

/// This process as the status page names it: `HOSTNAME` (the pod name on Kubernetes).
pub fn this_replica() -> ReplicaInfo {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    ReplicaInfo {
        id: format!("{host}-{}", uuid::Uuid::new_v4().simple()),
        host,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        beat_at_ms: 0,
        downstream: None,
    }
}

/// Beats every few seconds until `stop`, then leaves; each beat carries what a full consumer
/// queue paused on this replica.
pub async fn heartbeat(
    store: Arc<Store>,
    mut me: ReplicaInfo,
    backpressure: Arc<Backpressure>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        me.downstream = backpressure.summary();
        let _ = store.replicas().beat(&me).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(BEAT_EVERY) => {}
        }
    }
    let _ = store.replicas().leave(&me.id).await;
}

fn content_type_status(ct: ContentType, activity: &TenantActivity) -> ContentTypeStatus {
    let last = |k: String| activity.last.get(&k).cloned();
    let seen: Option<serde_json::Value> =
        last(format!("subscription:{ct}")).and_then(|j| serde_json::from_str(&j).ok());
    let field = |k: &str| {
        seen.as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    ContentTypeStatus {
        content_type: ct,
        subscription: field("status"),
        webhook: field("webhook"),
        checked_at: field("checked_at"),
        last_notification: last(format!("notified:{ct}")),
        last_relayed: last(format!("relayed:{ct}")),
    }
}

/// The cached token's expiry, read without touching the token itself.
fn token_expiry(json: &str) -> Option<DateTime<Utc>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    DateTime::from_timestamp(v.get("expires_at")?.as_i64()?, 0)
}

/// The verdict and its one-line why.
fn verdict(t: &TenantStatus) -> (Verdict, String) {
    match &t.state {
        TenantState::Parked {
            code,
            reason,
            since,
        } => {
            return (
                Verdict::Down,
                format!(
                    "parked since {} ({code}): {reason}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
        }
        TenantState::Pending { .. } => {
            return (Verdict::Down, "awaiting an operator's approval".into())
        }
        TenantState::Offboarded { .. } => return (Verdict::Down, "offboarded".into()),
        TenantState::Healthy => {}
    }
    let mut why = Vec::new();
    let broken: Vec<&str> = t
        .content_types
        .iter()
        .filter(|c| {
            c.subscription.as_deref().is_some_and(|s| s != "enabled")
                || c.webhook.as_deref().is_some_and(|w| w != "enabled")
        })
        .map(|c| c.content_type.as_str())
        .collect();
    if !broken.is_empty() {
        why.push(format!(
            "subscription or webhook not enabled: {}",
            broken.join(", ")
        ));
    }
    if t.last_day.dead > 0 {
        why.push(format!(
            "{} blobs dead-lettered in the last day",
            t.last_day.dead
        ));
    }
    if t.last_day.notified > 0 && t.last_day.blobs == 0 {
        why.push("notified but nothing relayed in the last day".into());
    }
    if why.is_empty() {
        (Verdict::Ok, String::new())
    } else {
        (Verdict::Attention, why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(state: TenantState) -> TenantStatus {
        TenantStatus {
            tenant_id: TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").unwrap(),
            verdict: Verdict::Ok,
            why: String::new(),
            state,
            added_by: AddedBy::Consent,
            added_at: String::new(),
            consented_by: None,
            content_types: vec![ContentTypeStatus {
                content_type: ContentType::Exchange,
                subscription: Some("enabled".into()),
                webhook: Some("enabled".into()),
                checked_at: None,
                last_notification: None,
                last_relayed: None,
            }],
            last_hour: Counts::default(),
            last_day: Counts::default(),
            last_dead: None,
            token_expires_at: None,
            quota_used: 0,
        }
    }

    #[test]
    fn the_verdict_names_what_is_wrong() {
        assert_eq!(verdict(&tenant(TenantState::Healthy)).0, Verdict::Ok);
        let parked = tenant(TenantState::Parked {
            code: "token".into(),
            reason: "consent withdrawn".into(),
            since: Utc::now(),
        });
        let (v, why) = verdict(&parked);
        assert_eq!(v, Verdict::Down);
        assert!(why.contains("consent withdrawn"), "{why}");
        let mut t = tenant(TenantState::Healthy);
        t.content_types[0].webhook = Some("disabled".into());
        t.last_day.dead = 2;
        let (v, why) = verdict(&t);
        assert_eq!(v, Verdict::Attention);
        assert!(
            why.contains("Audit.Exchange") && why.contains("2 blobs dead-lettered"),
            "{why}"
        );
    }

    #[test]
    fn a_token_expiry_is_read_without_the_token() {
        let at = token_expiry(r#"{"token":"secret","expires_at":1800000000,"obtained_at":1}"#);
        assert_eq!(at.map(|t| t.timestamp()), Some(1_800_000_000));
        assert_eq!(token_expiry("not json"), None);
    }
}
