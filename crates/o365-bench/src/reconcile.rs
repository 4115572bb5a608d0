//! Section 5, reconciliation cost: `Reconciler::pass` over 7 days × 5 content types on the
//! relay's parts in this process, one tenant, blobs all in the newest window; 90 % marked
//! relayed (10 % missing), then all of them (nothing missing).

use crate::harness::{start_sim, Ctx, TENANT_A};
use crate::report::Row;
use anyhow::bail;
use futures_util::StreamExt;
use o365_relay::domain::{ContentId, ContentType, TenantId};
use o365_sim::{SimBlob, SimConfig, CONTENT_TYPES};
use std::time::{Duration, Instant};

pub async fn run(ctx: &Ctx, n_blobs: usize) -> anyhow::Result<Vec<Row>> {
    println!("5. reconciliation: 7 days × 5 content types, one tenant, {n_blobs} blobs available");
    let sim = start_sim(&[TENANT_A], 1).await?;
    let section = ctx.section("reconcile", &sim);
    let result = async {
        // In-process relay (no listeners, no loops): the reconciler is called directly.
        let relay = ctx.relay_parts(
            &section,
            &[
                ("O365_TENANTS", TENANT_A.into()),
                ("O365_RECONCILE_LOOKBACK", "7d".into()),
            ],
        )?;
        relay.broker.ensure_connected().await?;
        let tenant = TenantId::parse(TENANT_A).map_err(|e| anyhow::anyhow!(e))?;
        // Listing needs enabled subscriptions; started without a webhook, so publishing
        // content notifies nobody.
        for ct in ContentType::ALL {
            relay
                .management
                .start_subscription(&tenant, ct, None)
                .await?;
        }
        let mut blobs = Vec::new();
        for (j, ct) in CONTENT_TYPES.iter().enumerate() {
            let k = n_blobs / 5 + usize::from(j < n_blobs % 5);
            blobs.extend(sim.publish(TENANT_A, ct, k, None).await);
        }
        // Mark 90 % relayed (10 % missing), as the workers would have.
        let missing_every = 10;
        let mark = |b: &SimBlob| {
            let relay = relay.clone();
            let tenant = tenant.clone();
            let id = ContentId::parse(&b.content_id);
            async move {
                let id = id.map_err(|e| anyhow::anyhow!(e))?;
                relay
                    .store
                    .dedup()
                    .mark_relayed(&tenant, &id, Duration::from_secs(3600))
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        };
        let marks: Vec<_> = blobs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % missing_every != 0)
            .map(|(_, b)| mark(b))
            .collect();
        for chunk in futures_util::stream::iter(marks).buffer_unordered(64).collect::<Vec<_>>().await {
            chunk?;
        }
        // The reconciler's windows end at `now` in whole seconds: let the newest blobs fall in.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The token is fetched before timing (one request, reported in section 3).
        relay.tokens.get(&tenant).await?;
        let page = SimConfig::default().page_size;
        let mut rows = Vec::new();
        for case in ["10 % missing", "nothing missing"] {
            if case == "nothing missing" {
                let rest: Vec<_> = blobs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % missing_every == 0)
                    .map(|(_, b)| mark(b))
                    .collect();
                for r in futures_util::stream::iter(rest).buffer_unordered(64).collect::<Vec<_>>().await {
                    r?;
                }
            }
            let calls0 = sim.management_calls(TENANT_A);
            let lists0 = sim.list_calls();
            let t0 = Instant::now();
            let stats = relay.reconciler().pass().await;
            let wall = t0.elapsed();
            let calls = sim.management_calls(TENANT_A) - calls0;
            let lists = sim.list_calls() - lists0;
            println!(
                "   {case}: {:.2} s, {calls} Management API calls ({lists} subscriptions/content pages of ≤ {page}), listed {}, missing {}, enqueued {}, errors {}",
                wall.as_secs_f64(),
                stats.listed,
                stats.missing,
                stats.enqueued,
                stats.errors
            );
            if stats.errors > 0 {
                bail!("reconciliation reported {} errors", stats.errors);
            }
            rows.push(Row::new(
                "5 reconcile",
                format!("7 d × 5 types, {n_blobs} blobs, {case}"),
                format!("{:.2} s, {calls} calls, {} enqueued", wall.as_secs_f64(), stats.enqueued),
            ));
        }
        relay.broker.close().await;
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}
