//! Content workers: consume the work queue, fetch each blob with the tenant's token, stream its
//! records to the exchange with publisher confirms, then mark the blob relayed and ack.
//!
//! Nothing is acked before its records are confirmed. Failures are classified by Microsoft's
//! error code: retryable ones go to a `{work}.retry.{tier}` queue with a per-message TTL (exponential backoff
//! with jitter, `Retry-After` honoured) and come back to the work queue when it expires;
//! permanent ones and exhausted retries go to `{work}.dead` with the reason in a header.

use crate::app::Relay;
use crate::broker::{
    await_confirm, header, header_str, json_properties, publish_one, BrokerError, OutMessage,
};
use crate::domain::{parse_ms_time, WorkItem};
use crate::management::{ApiError, Disposition};
use crate::records::{ArraySplitter, AuditRecord, RecordsError};
use crate::store::Claim;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Records published per confirm round (and per Redis de-duplication round trip).
const BATCH: usize = 500;
/// A relayed blob's marker outlives the blob by a day (Microsoft serves content for 7 days).
const MARKER_GRACE: Duration = Duration::from_secs(86_400);
const ATTEMPT_HEADER: &str = "o365-attempt";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("content body: {0}")]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Busy(String),
}

impl RelayError {
    fn code(&self) -> String {
        match self {
            RelayError::Api(e) => e.code().to_string(),
            RelayError::Records(RecordsError::Truncated) => "truncated".into(),
            RelayError::Records(_) => "malformed_content".into(),
            RelayError::Broker(BrokerError::Unroutable(_)) => "unroutable".into(),
            RelayError::Broker(_) => "broker".into(),
            RelayError::Busy(_) => "busy".into(),
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            RelayError::Api(e) => e.disposition(),
            RelayError::Records(RecordsError::TooLarge(_)) => Disposition::GiveUp,
            RelayError::Records(_) => Disposition::Retry(None),
            RelayError::Broker(_) | RelayError::Busy(_) => Disposition::Retry(None),
        }
    }
}

/// What relaying one blob achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlobStats {
    pub records: u64,
    pub published: u64,
    pub duplicates: u64,
}

/// Backoff for attempt `n` (1-based): `base·2^(n-1)` capped at `max`, with "equal jitter"
/// (half fixed, half random) so retries of many blobs spread out; never less than `Retry-After`.
pub fn backoff(
    base: Duration,
    max: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(max);
    let half = exp / 2;
    let jitter = Duration::from_millis(rand::random_range(0..=half.as_millis().max(1) as u64));
    (half + jitter).max(retry_after.unwrap_or_default())
}

/// Runs consumers until `shutdown`; rebuilds the channel after any broker failure.
pub async fn run(relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match consume(&relay, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Work queue consumer stopped; restarting.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(relay: &Arc<Relay>, shutdown: &CancellationToken) -> Result<(), BrokerError> {
    let concurrency = relay.settings.worker_concurrency;
    let ch = relay.broker.channel().await?;
    ch.basic_qos(
        concurrency.min(u16::MAX as usize) as u16,
        BasicQosOptions::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            relay.broker.names().work.as_str().into(),
            format!("o365-relay-{}", uuid::Uuid::new_v4().simple()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %relay.broker.names().work, concurrency, "Consuming the work queue.");
    let mut tasks = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let relay = relay.clone();
                    tasks.spawn(async move { handle_delivery(&relay, delivery).await });
                }
                Some(Err(e)) => break Err(BrokerError::Amqp(e.to_string())),
                None => break Err(BrokerError::Unavailable("consumer closed".into())),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    // Let blobs in flight finish (their records confirmed and acked) within the shutdown
    // budget; whatever is still unacked is requeued by RabbitMQ when the channel closes.
    let budget = relay.settings.shutdown_timeout;
    let drained =
        tokio::time::timeout(budget, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("Blobs still in flight at shutdown are left to RabbitMQ to redeliver.");
        tasks.abort_all();
    }
    let _ = ch.close(200, "bye".into()).await;
    result
}

fn attempt_of(d: &Delivery) -> u32 {
    header_str(&d.properties, ATTEMPT_HEADER)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn handle_delivery(relay: &Relay, delivery: Delivery) {
    let item: WorkItem = match serde_json::from_slice(&delivery.data) {
        Ok(i) => i,
        Err(e) => {
            dead_letter(
                relay,
                &delivery,
                None,
                "malformed_work_item",
                &format!("unreadable work item: {e}"),
            )
            .await;
            return;
        }
    };
    let span = tracing::info_span!("blob", tenant_id = %item.tenant_id, content_type = %item.content_type, content_id = %item.content_id);
    process(relay, delivery, item).instrument(span).await
}

async fn process(relay: &Relay, delivery: Delivery, item: WorkItem) {
    if !relay.tenants.is_served(&item.tenant_id).await {
        dead_letter(
            relay,
            &delivery,
            Some(&item),
            "tenant_not_served",
            "tenant is no longer served",
        )
        .await;
        return;
    }
    if let Ok(true) = relay
        .store
        .is_relayed(&item.tenant_id, &item.content_id)
        .await
    {
        tracing::debug!("Blob already relayed; skipping.");
        relay.metrics.blobs.with_label_values(&["duplicate"]).inc();
        ack(&delivery).await;
        return;
    }
    let started = Instant::now();
    match relay_blob(relay, &item).await {
        Ok(stats) => {
            let ttl = item
                .expires_in()
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(Duration::from_secs(7 * 86_400))
                + MARKER_GRACE;
            let _ = relay
                .store
                .mark_relayed(&item.tenant_id, &item.content_id, ttl)
                .await;
            ack(&delivery).await;
            relay.metrics.blobs.with_label_values(&["relayed"]).inc();
            relay
                .metrics
                .fetch_duration
                .with_label_values(&[item.content_type.as_str()])
                .observe(started.elapsed().as_secs_f64());
            if let Some(created) = item.content_created.as_deref().and_then(parse_ms_time) {
                relay.metrics.relay_lag.observe(
                    (chrono::Utc::now() - created).num_milliseconds().max(0) as f64 / 1000.0,
                );
            }
            tracing::info!(
                records = stats.records,
                published = stats.published,
                duplicates = stats.duplicates,
                "Blob relayed."
            );
        }
        Err(e) => {
            let attempt = attempt_of(&delivery) + 1;
            let reason = e.to_string();
            match e.disposition() {
                Disposition::GiveUp => {
                    dead_letter(relay, &delivery, Some(&item), &e.code(), &reason).await
                }
                _ if attempt >= relay.settings.max_attempts => {
                    let why = format!("gave up after {attempt} attempts: {reason}");
                    dead_letter(relay, &delivery, Some(&item), &e.code(), &why).await
                }
                Disposition::StartSubscription => {
                    relay
                        .subscriptions
                        .ensure_started(&item.tenant_id, item.content_type)
                        .await;
                    retry_later(relay, &delivery, attempt, None, &e).await
                }
                Disposition::Retry(after) => {
                    retry_later(relay, &delivery, attempt, after, &e).await
                }
            }
        }
    }
}

/// Fetches the blob and publishes its records, streaming: at most one batch of records is held.
pub async fn relay_blob(relay: &Relay, item: &WorkItem) -> Result<BlobStats, RelayError> {
    let resp = relay
        .management
        .fetch_content(&item.tenant_id, &item.content_uri)
        .await?;
    let mut body = resp.bytes_stream();
    let mut splitter = ArraySplitter::new();
    let mut raw = Vec::new();
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH);
    let mut seen_here: HashSet<String> = HashSet::new();
    let mut stats = BlobStats::default();
    let mut index = 0;
    let owner = uuid::Uuid::new_v4().simple().to_string();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::Transport(format!("reading content: {}", e.without_url())))?;
        splitter.feed(&chunk, &mut raw)?;
        for r in raw.drain(..) {
            batch.push(AuditRecord::parse(r, index)?);
            index += 1;
            if batch.len() >= BATCH {
                publish_records(relay, item, &mut batch, &mut seen_here, &mut stats, &owner)
                    .await?;
            }
        }
    }
    splitter.finish()?;
    publish_records(relay, item, &mut batch, &mut seen_here, &mut stats, &owner).await?;
    Ok(stats)
}

/// How long a record claim survives an owner that died mid-publish: the redelivered blob waits
/// this long for the dead owner's claims. A live owner finishes a batch well within it (its
/// confirms time out sooner); were it slower, the claim would lapse and the record could be
/// published twice — never lost.
const CLAIM_TTL: Duration = Duration::from_secs(20);

/// Publishes a batch, each record once: duplicates within the blob are skipped here; across
/// blobs and workers a record is claimed in Redis before it is published and marked done
/// after its confirm, so two workers never both publish it. A record another worker is
/// publishing right now is waited for. Without Redis everything is published (consumers
/// de-duplicate on `message_id`).
async fn publish_records(
    relay: &Relay,
    item: &WorkItem,
    batch: &mut Vec<AuditRecord>,
    seen_here: &mut HashSet<String>,
    stats: &mut BlobStats,
    owner: &str,
) -> Result<(), RelayError> {
    if batch.is_empty() {
        return Ok(());
    }
    stats.records += batch.len() as u64;
    let mut duplicates = 0u64;
    let mut todo: Vec<&AuditRecord> = Vec::with_capacity(batch.len());
    for r in batch.iter() {
        if seen_here.insert(r.id.clone()) {
            todo.push(r);
        } else {
            duplicates += 1;
        }
    }
    let ttl = relay.settings.record_dedup_ttl;
    let dedup = !ttl.is_zero();
    let give_up_at = Instant::now() + CLAIM_TTL + Duration::from_secs(10);
    while !todo.is_empty() {
        let (mine, pending): (Vec<&AuditRecord>, Vec<&AuditRecord>) = if dedup {
            let ids: Vec<&str> = todo.iter().map(|r| r.id.as_str()).collect();
            match relay
                .store
                .claim_records(&item.tenant_id, &ids, owner, CLAIM_TTL)
                .await
            {
                Ok(claims) => {
                    let (mut mine, mut pending) = (Vec::new(), Vec::new());
                    for (r, c) in todo.iter().zip(claims) {
                        match c {
                            Claim::Mine => mine.push(*r),
                            Claim::Done => duplicates += 1,
                            Claim::Pending => pending.push(*r),
                        }
                    }
                    (mine, pending)
                }
                Err(_) => (std::mem::take(&mut todo), Vec::new()),
            }
        } else {
            (std::mem::take(&mut todo), Vec::new())
        };
        let ids: Vec<&str> = mine.iter().map(|r| r.id.as_str()).collect();
        if let Err(e) = publish_confirmed(relay, item, &mine).await {
            if dedup {
                let _ = relay
                    .store
                    .release_claims(&item.tenant_id, &ids, owner)
                    .await;
            }
            return Err(e);
        }
        stats.published += mine.len() as u64;
        relay
            .metrics
            .records_published
            .with_label_values(&[item.content_type.as_str()])
            .inc_by(mine.len() as u64);
        if dedup {
            let _ = relay.store.finish_records(&item.tenant_id, &ids, ttl).await;
        }
        todo = pending;
        if !todo.is_empty() {
            if Instant::now() > give_up_at {
                return Err(RelayError::Busy(format!(
                    "{} records stayed claimed by another worker",
                    todo.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stats.duplicates += duplicates;
    relay.metrics.records_duplicate.inc_by(duplicates);
    batch.clear();
    Ok(())
}

/// Publishes records to the exchange and waits for every confirm.
async fn publish_confirmed(
    relay: &Relay,
    item: &WorkItem,
    records: &[&AuditRecord],
) -> Result<(), RelayError> {
    if records.is_empty() {
        return Ok(());
    }
    let exchange = relay.broker.names().exchange.as_str();
    let routing_key = format!("{}.{}", item.content_type, item.tenant_id);
    let publisher = relay.broker.publisher().await?;
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let mut headers = crate::webhook::blob_headers(item);
        header(&mut headers, "o365-content-id", item.content_id.as_str());
        header(&mut headers, "o365-record-type", &record.record_type);
        header(&mut headers, "o365-workload", &record.workload);
        header(&mut headers, "o365-operation", &record.operation);
        header(&mut headers, "o365-creation-time", &record.creation_time);
        let msg = OutMessage {
            exchange,
            routing_key: &routing_key,
            body: &record.raw,
            properties: json_properties(&record.id).with_headers(headers),
        };
        match publish_one(&publisher.channel, &msg).await {
            Ok(c) => pending.push(c),
            Err(e) => {
                relay.broker.invalidate(publisher.generation).await;
                return Err(e.into());
            }
        }
    }
    for c in pending {
        if let Err(e) = await_confirm(c, &routing_key).await {
            if !matches!(e, BrokerError::Unroutable(_) | BrokerError::Nacked(_)) {
                relay.broker.invalidate(publisher.generation).await;
            }
            return Err(e.into());
        }
    }
    Ok(())
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "Ack failed; RabbitMQ will redeliver the blob (it is de-duplicated).");
    }
}

/// Hands the message back to RabbitMQ for immediate redelivery (used only when we cannot
/// even park it in the retry or dead queue).
async fn requeue(d: &Delivery) {
    let _ = d
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

fn forwarded_properties(
    d: &Delivery,
    extra: &[(&str, String)],
    attempt: u32,
) -> lapin::BasicProperties {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    for (k, v) in extra {
        header(&mut headers, k, v);
    }
    let id = d
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    json_properties(&id).with_headers(headers)
}

async fn retry_later(
    relay: &Relay,
    d: &Delivery,
    attempt: u32,
    retry_after: Option<Duration>,
    e: &RelayError,
) {
    let s = &relay.settings;
    let delay = backoff(s.retry_base, s.retry_max, attempt, retry_after);
    let props = forwarded_properties(
        d,
        &[
            ("o365-last-error", e.to_string()),
            ("o365-error-code", e.code()),
        ],
        attempt,
    )
    .with_expiration(delay.as_millis().max(1).to_string().into());
    let retry = relay.broker.names().retry_queue_for(delay).to_string();
    let msg = OutMessage {
        exchange: "",
        routing_key: &retry,
        body: &d.data,
        properties: props,
    };
    match relay.broker.publish_all(vec![msg]).await {
        Ok(()) => {
            relay.metrics.blobs.with_label_values(&["retried"]).inc();
            tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %e, "Blob failed; retrying later.");
            ack(d).await;
        }
        Err(pe) => {
            tracing::error!(error = %pe, "Cannot park the blob for retry; requeueing it.");
            requeue(d).await;
        }
    }
}

async fn dead_letter(
    relay: &Relay,
    d: &Delivery,
    item: Option<&WorkItem>,
    code: &str,
    reason: &str,
) {
    let attempt = attempt_of(d);
    let props = forwarded_properties(
        d,
        &[
            ("o365-dead-reason", reason.to_string()),
            ("o365-error-code", code.to_string()),
            ("o365-dead-at", chrono::Utc::now().to_rfc3339()),
        ],
        attempt,
    );
    let dead = relay.broker.names().dead.clone();
    let msg = OutMessage {
        exchange: "",
        routing_key: &dead,
        body: &d.data,
        properties: props,
    };
    match relay.broker.publish_all(vec![msg]).await {
        Ok(()) => {
            relay.metrics.blobs.with_label_values(&["dead"]).inc();
            relay
                .metrics
                .dead_letters
                .with_label_values(&[code_label(code)])
                .inc();
            tracing::error!(
                content_id = item.map(|i| i.content_id.as_str()).unwrap_or(""),
                code,
                reason,
                "Blob sent to the dead-letter queue."
            );
            ack(d).await;
        }
        Err(pe) => {
            tracing::error!(error = %pe, "Cannot dead-letter the blob; requeueing it.");
            requeue(d).await;
        }
    }
}

/// Bounded label values for the dead-letter metric.
fn code_label(code: &str) -> &'static str {
    match code {
        "AF20050" => "AF20050",
        "AF20051" => "AF20051",
        "AF20052" => "AF20052",
        "AF10001" => "AF10001",
        "AF20010" | "AF20011" | "AF20012" | "AF20013" => "tenant",
        "AF429" => "AF429",
        "tenant_not_served" => "tenant_not_served",
        "malformed_work_item" => "malformed_work_item",
        "truncated" | "malformed_content" => "malformed_content",
        "token" => "token",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(600);
        for attempt in 1..=12 {
            let d = backoff(base, max, attempt, None);
            let exp = (base * 2u32.pow(attempt - 1)).min(max);
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {attempt}: {d:?} not in [{:?}, {exp:?}]",
                exp / 2
            );
        }
        assert!(backoff(base, max, 1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
    }
}
